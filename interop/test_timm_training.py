"""Training a converted model with timm's tools: optimizer factory + scheduler (lr_scale applied once), EMA."""

import pytest
import timm
import torch
from safetensors.torch import load_model, save_model
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV2, ModelEmaV3

import largekernel
from largekernel.optim import param_groups


def _ratios(optimizer):
    default = next(g["lr"] for g in optimizer.param_groups if g["kind"] == "default")
    return {g["kind"]: g["lr"] / default for g in optimizer.param_groups}


@pytest.mark.parametrize("layout", ["param_group_fn", "absolute groups"])
def test_positions_train_at_five_times_the_lr_under_timms_scheduler(layout):
    model = largekernel.convert(timm.create_model("convnext_atto", num_classes=10), "dcls")
    if layout == "param_group_fn":
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, param_group_fn=param_groups)
    else:  # groups built with an lr (torch's layout), passed as parameters
        opt = create_optimizer_v2(param_groups(model, lr=1e-3, weight_decay=0.05), "adamw", lr=1e-3)
    scheduler = CosineLRScheduler(opt, t_initial=10, warmup_t=2, warmup_lr_init=1e-5)
    # timm's warmup starts every group at the same absolute warmup_lr_init: with absolute groups the ratio
    # holds from the end of warmup on; with lr_scale (timm's layout) at every step.
    first = 0 if layout == "param_group_fn" else 2
    for epoch in range(first, 6):
        scheduler.step(epoch)
        ratios = _ratios(opt)
        assert ratios["position"] == pytest.approx(5.0) and ratios["default"] == 1.0
    peak = max(g["lr"] for g in opt.param_groups if g["kind"] == "default")
    assert peak <= 1e-3


@pytest.mark.parametrize("model_name", ["convnext_atto", "lk_convnext_atto"])
def test_layer_decay_combines_with_the_marks(model_name):
    """``param_groups(model, layer_decay=)`` as timm's ``param_group_fn``: timm ignores ``layer_decay`` once a
    ``param_group_fn`` is given, so the groups carry it: every parameter's lr scale is the one timm's
    ``param_groups_layer_decay`` gives it times its mark's (DCLS positions 5, the rest 1), under timm's scheduler;
    weight decay as the marks say (positions none), whatever the layer."""
    from functools import partial

    from timm.optim import param_groups_layer_decay

    model = largekernel.convert(timm.create_model(model_name, num_classes=10), "dcls")
    timms = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.7) for p in g["params"]}
    assert len(set(timms.values())) > 4
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05,
                              param_group_fn=partial(param_groups, layer_decay=0.7))
    scheduler = CosineLRScheduler(opt, t_initial=10)
    scheduler.step(0)
    seen = 0
    for group in opt.param_groups:
        mark = 5.0 if group["kind"] == "position" else 1.0
        for p in group["params"]:
            assert group["lr"] == pytest.approx(1e-3 * timms[id(p)] * mark)
            assert group["weight_decay"] == (0.0 if group["kind"] == "position" or p.dim() < 2 else 0.05)
            seen += 1
    assert seen == len(timms) and any(g["kind"] == "position" for g in opt.param_groups)
    with pytest.raises(ValueError, match="layer_decay must be a positive number"):
        param_groups(model, layer_decay=0)


@pytest.mark.parametrize("to", ["conv", "fft", "dcls", "flexconv", "ckconv", "niff", "sgconv"])
def test_ema_and_safetensors_on_every_family(to, tmp_path):
    model = timm.create_model("convnext_atto", num_classes=10)
    largekernel.convert(model, to, **({"kernel_size": 9} if to == "conv" else {}))
    x = torch.randn(2, 3, 32, 32)
    model(x)  # lazy layers size themselves
    ema2, ema3 = ModelEmaV2(model, decay=0.5), ModelEmaV3(model, decay=0.5)
    first = next(p for p in model.parameters() if p.requires_grad)
    start = first.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    opt.step()
    ema2.update(model)
    ema3.update(model)
    assert not torch.equal(first, start)
    # EMA with decay 0.5: halfway between the start and the stepped weights.
    for ema in (ema2, ema3):
        averaged = next(p for p in ema.module.parameters() if p.requires_grad)
        torch.testing.assert_close(averaged, 0.5 * (start + first.detach()))
        assert ema.module.eval()(x).shape == (2, 10)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    fresh = largekernel.convert(timm.create_model("convnext_atto", num_classes=10), to,
                                **({"kernel_size": 9} if to == "conv" else {}))
    load_model(fresh, str(path))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
