"""Parameter groups from marks and the DCLS learning techniques (clamping, sharing, repulsion, sigma schedule)."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import largekernel.nn as L
from largekernel.nn import Dcls3_1d, DclsConv1d, DclsConv2d
from largekernel.optim import (
    SigmaSchedule,
    dcls_repulsive_loss,
    install_dcls_clamp,
    mark,
    param_groups,
    share_positions,
)


class _Block(nn.Module):
    def __init__(self, interpolation="bilinear"):
        super().__init__()
        self.dw = DclsConv2d(4, 4, 6, 7, padding=3, groups=4, interpolation=interpolation)
        self.norm = nn.LayerNorm(4)
        self.pw = nn.Linear(4, 4)

    def forward(self, x):
        x = self.dw(x).permute(0, 2, 3, 1)
        return self.pw(self.norm(x)).permute(0, 3, 1, 2)


class _Net(nn.Module):
    """DCLS layers nested at different depths, one of them Gaussian."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Sequential(_Block(), _Block("gaussian"))
        self.head = nn.ModuleDict({"seq": DclsConv1d(4, 2, 3, 5, padding=2)})
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 1, 1))

    def no_weight_decay(self):
        return ["pos_embed"]

    def forward(self, x):
        x = self.stage(self.stem(x) + self.pos_embed)
        return self.head["seq"](x.mean(-1))


def _group(groups, kind, wd=None):
    found = [g for g in groups if g["kind"] == kind and (wd is None or g.get("weight_decay") == wd)]
    assert len(found) == 1, (kind, wd, [(g["kind"], g.get("weight_decay")) for g in groups])
    return found[0]


def test_param_groups_contents_for_nested_dcls():
    model = _Net()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, position_lr_scale=5.0)
    names = {g["kind"]: set() for g in groups}
    for g in groups:
        names[g["kind"]].update(g["names"])
    positions = _group(groups, "position")
    assert set(positions["names"]) == {"stage.0.dw.P", "stage.1.dw.P", "head.seq.P"}
    assert positions["lr"] == pytest.approx(5e-3) and positions["weight_decay"] == 0.0
    sigmas = _group(groups, "sigma")
    assert sigmas["names"] == ["stage.1.dw.SIG"] and sigmas["lr"] == pytest.approx(5e-3)
    assert sigmas["weight_decay"] == 0.0
    decayed = _group(groups, "default", 0.05)
    assert set(decayed["names"]) == {"stem.weight", "stage.0.dw.weight", "stage.1.dw.weight", "stage.0.pw.weight",
                                     "stage.1.pw.weight", "head.seq.weight"}
    plain = _group(groups, "default", 0.0)
    assert "pos_embed" in plain["names"] and "stage.0.dw.bias" in plain["names"]
    assert "stage.0.norm.weight" in plain["names"]
    # every trainable parameter exactly once
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())


def test_param_groups_respects_explicit_marks():
    layer = nn.Linear(3, 3)
    mark(layer.weight, kind="ssm", lr_scale=0.1, weight_decay=0.01)
    groups = param_groups(layer, lr=1.0, weight_decay=0.5)
    ssm = _group(groups, "ssm")
    assert ssm["lr"] == pytest.approx(0.1) and ssm["weight_decay"] == 0.01


def test_param_groups_work_with_optimizer_step():
    model = _Net()
    opt = torch.optim.SGD(param_groups(model, lr=1e-2, weight_decay=0.05))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    before = model.stage[0].dw.P.detach().clone()
    opt.step()
    assert not torch.equal(before, model.stage[0].dw.P)


def test_clamp_hook_runs_after_every_step_and_can_be_removed():
    model = _Net()
    layers = [model.stage[0].dw, model.stage[1].dw, model.head["seq"]]
    opt = torch.optim.SGD([layer.P for layer in layers], lr=1e3)  # a huge step throws positions out of the box
    handle = install_dcls_clamp(opt, model)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
        for layer in layers:
            for row, size in zip(layer.P, reversed(layer.dilated_kernel_size)):
                assert row.abs().max() <= size // 2
        assert max(layer.P.abs().max() for layer in layers[:2]) == 3  # some reached the limit: clamping happened
    handle.remove()
    opt.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert max(layer.P.abs().max() for layer in layers) > 3


def test_clamp_hook_is_generic_over_clamp_parameters():
    class Bounded(nn.Module):  # any family: a module with clamp_parameters() gets clamped
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(3))

        def clamp_parameters(self):
            with torch.no_grad():
                self.scale.clamp_(-1, 1)

    model = nn.Sequential(nn.Linear(3, 3), Bounded())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    install_dcls_clamp(opt, model)
    model[1].scale.grad = torch.tensor([-5.0, 0.5, 5.0])
    opt.step()
    torch.testing.assert_close(model[1].scale.detach(), torch.tensor([1.0, -0.5, -1.0]))


def test_clamp_hook_needs_a_clampable_module():
    with pytest.raises(ValueError, match="clamp_parameters"):
        install_dcls_clamp(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), nn.Linear(2, 2))


def test_shared_positions_receive_sum_of_gradients():
    torch.manual_seed(3)
    layers = [DclsConv2d(3, 3, 5, 7, padding=3, groups=3, interpolation="gaussian") for _ in range(3)]
    x = torch.randn(2, 3, 10, 10)
    # reference: independent layers with equal positions, gradients summed by hand
    with torch.no_grad():
        for layer in layers[1:]:
            layer.P.copy_(layers[0].P)
            layer.SIG.copy_(layers[0].SIG)
    y = x
    for layer in layers:
        y = layer(y)
    y.square().sum().backward()
    expected_P = sum(layer.P.grad for layer in layers)
    expected_SIG = sum(layer.SIG.grad for layer in layers)
    weight_grads = [layer.weight.grad.clone() for layer in layers]
    for layer in layers:
        layer.zero_grad()

    shared = share_positions(layers)
    assert all(layer.P is shared for layer in layers) and all(layer.SIG is layers[0].SIG for layer in layers)
    assert len({id(layer.weight) for layer in layers}) == 3  # weights stay per layer
    y = x
    for layer in layers:
        y = layer(y)
    y.square().sum().backward()
    torch.testing.assert_close(shared.grad, expected_P)
    torch.testing.assert_close(layers[0].SIG.grad, expected_SIG)
    for layer, g in zip(layers, weight_grads):
        torch.testing.assert_close(layer.weight.grad, g)
    model = nn.Sequential(*layers)
    assert sum(p is shared for p in model.parameters()) == 1
    assert sum(1 for g in param_groups(model, 1.0, 0.1) for p in g["params"] if p is shared) == 1


def test_share_positions_bad_input():
    with pytest.raises(ValueError, match="P has shape"):
        share_positions([DclsConv2d(3, 3, 5, 7), DclsConv2d(3, 3, 4, 7)])
    with pytest.raises(TypeError, match="no position Parameter"):
        share_positions([DclsConv2d(3, 3, 5, 7), nn.Conv2d(3, 3, 7)])
    with pytest.raises(ValueError, match="at least two"):
        share_positions([DclsConv2d(3, 3, 5, 7)])


def _overlap(P):
    """Total bilinear-footprint overlap of element pairs: sum_{k<l} prod_d max(0, 1 - |p_kd - p_ld|)."""
    m, count = P.shape[0], P.shape[-1]
    pos = P.detach().reshape(m, -1, count)
    total = 0.0
    for k in range(count):
        for j in range(k + 1, count):
            total += torch.clamp(1 - (pos[:, :, k] - pos[:, :, j]).abs(), min=0).prod(0).sum().item()
    return total


def test_repulsive_loss_value_and_decreasing_overlap():
    layer = DclsConv2d(2, 2, 4, 9, groups=2)
    with torch.no_grad():
        layer.P.copy_(torch.tensor([[0.0, 0.3, 0.0, 5.0], [0.0, 0.0, 0.4, 5.0]]).view(2, 1, 1, 4).expand(2, 2, 1, 4))
    # pairs: (0,1) d=0.3, (0,2) d=0.4, (1,2) d=0.5; the element at (5,5) is far from all
    expected = (1 - 0.3) ** 2 + (1 - 0.4) ** 2 + (1 - 0.5) ** 2
    torch.testing.assert_close(dcls_repulsive_loss(layer), torch.tensor(expected), rtol=1e-5, atol=1e-6)

    model = nn.Sequential(layer, Dcls3_1d(2, 2, 6, (3, 1), 9))
    with torch.no_grad():
        model[1].P.mul_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    overlap0 = [_overlap(m.P) for m in model]
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = dcls_repulsive_loss(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(_overlap(m.P) < o for m, o in zip(model, overlap0))


def test_repulsive_loss_needs_dcls():
    with pytest.raises(ValueError, match="no DCLS layer"):
        dcls_repulsive_loss(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="influence"):
        dcls_repulsive_loss(DclsConv1d(2, 2, 3, 5), influence=0)


@pytest.mark.parametrize("mode", ["linear", "cosine"])
def test_sigma_schedule(mode):
    model = _Net()
    layer = model.stage[1].dw
    schedule = SigmaSchedule(model, start=4.0, end=0.5, total_steps=10, mode=mode)
    assert not layer.SIG.requires_grad
    torch.testing.assert_close(layer.SIG.abs() + 0.27, torch.full_like(layer.SIG, 4.0))
    values = [schedule.step() for _ in range(12)]
    if mode == "linear":
        assert values[4] == pytest.approx(4.0 - 3.5 * 5 / 10)
    else:
        assert values[4] == pytest.approx(0.5 + 3.5 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0.5)
    torch.testing.assert_close(layer.SIG.abs() + 0.27, torch.full_like(layer.SIG, 0.5))

    # resume: a fresh schedule loaded from the state lands on the same width
    state = schedule.state_dict()
    fresh_model = _Net()
    resumed = SigmaSchedule(fresh_model, start=1.0, end=1.0, total_steps=1)
    resumed.load_state_dict(state)
    assert resumed.sigma == pytest.approx(schedule.sigma)
    torch.testing.assert_close(fresh_model.stage[1].dw.SIG, layer.SIG)


def test_sigma_schedule_bad_input():
    with pytest.raises(ValueError, match="no layer with a width"):
        SigmaSchedule(DclsConv1d(2, 2, 3, 5), 2.0, 0.5, 10)
    with pytest.raises(ValueError, match="mode"):
        SigmaSchedule(_Net(), 2.0, 0.5, 10, mode="step")
    with pytest.raises(ValueError, match="total_steps"):
        SigmaSchedule(_Net(), 2.0, 0.5, 0)


def test_param_groups_torch_layout_keeps_the_ratio_under_a_torch_scheduler():
    model = _Net()
    opt = torch.optim.SGD(param_groups(model, lr=0.1, weight_decay=0.05))
    assert not any("lr_scale" in g for g in opt.param_groups)  # absolute lrs: no scheduler may scale again
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    for _ in range(3):
        opt.step()
        scheduler.step()
    lrs = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert lrs["position"] == pytest.approx(5 * 0.1 * 0.5 ** 3) and lrs["default"] == pytest.approx(0.1 * 0.5 ** 3)


def test_param_groups_timm_layout_leaves_lr_and_decay_to_the_optimizer():
    model = _Net()
    groups = param_groups(model, position_lr_scale=5.0)
    assert all("lr" not in g for g in groups)
    assert _group(groups, "position")["lr_scale"] == 5.0 and _group(groups, "sigma")["lr_scale"] == 5.0
    assert _group(groups, "position")["weight_decay"] == 0.0
    plain = _group(groups, "default", 0.0)
    assert "stage.0.dw.bias" in plain["names"] and plain["lr_scale"] == 1.0
    decayed = [g for g in groups if "weight_decay" not in g]
    assert len(decayed) == 1 and "stem.weight" in decayed[0]["names"]
    # The optimizer's defaults fill in what the groups leave out.
    opt = torch.optim.AdamW(groups, lr=2e-3, weight_decay=0.3)
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert by_name["stem.weight"]["weight_decay"] == 0.3 and by_name["stem.weight"]["lr"] == 2e-3
    assert by_name["stage.0.dw.P"]["weight_decay"] == 0.0


class _EveryMark(nn.Module):
    """Every kind of mark the layers set (DCLS positions and sigmas, FlexConv's mask and MAGNet windows, SIREN's
    learned frequencies, S4D's SSM, SGConv's scales) and one of the user's own."""

    def __init__(self, learn_omega_0: bool = True):
        super().__init__()
        self.dcls = _Net()
        self.flex = nn.Sequential(L.FlexConv2d(4, 4, 9),
                                  L.CKConv2d(4, 4, 9, kernel_net_kwargs={"learn_omega_0": learn_omega_0}))
        self.seq = nn.Sequential(L.S4DConv1d(4, ssm_lr_scale=0.1), L.SGConv1d(4, kernel_size=32, kernel_lr_scale=2.0))
        self.temperature = mark(nn.Parameter(torch.ones(1)), kind="temperature", lr_scale=0.5)


def _described(model: nn.Module) -> list[tuple]:
    return sorted((g["kind"], g["lr"], g["weight_decay"], tuple(sorted(g["names"])))
                  for g in param_groups(model, lr=1e-3, weight_decay=0.05))


def _handled(flow: str) -> nn.Module:
    if flow == "meta device, then load_state_dict(assign=True)":
        with torch.device("meta"):
            model = _EveryMark()
        model.load_state_dict(_EveryMark().state_dict(), assign=True)
        return model
    model = _EveryMark()
    if flow == "copy.deepcopy":
        return copy.deepcopy(model)
    if flow == "torch.save / torch.load":
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)
    if flow == "load_state_dict(assign=True)":
        model.load_state_dict(_EveryMark().state_dict(), assign=True)
        return model
    if flow == "fully_shard (FSDP2)":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(_EveryMark(learn_omega_0=False))  # FSDP2 shards no 0-dim parameter (SIREN's omega_0)
    future = {"swap": torch.__future__.set_swap_module_params_on_conversion,
              "overwrite": torch.__future__.set_overwrite_module_params_on_conversion}[flow.split()[-1]]
    future(True)
    try:
        model.to(torch.float64) if flow.startswith(".to") else model.load_state_dict(_EveryMark().state_dict())
    finally:
        future(False)
    return model


@pytest.mark.parametrize("flow", ["copy.deepcopy", "torch.save / torch.load", "load_state_dict(assign=True)",
                                  "meta device, then load_state_dict(assign=True)", ".to(float64) under swap",
                                  ".to(float64) under overwrite", "load_state_dict under swap",
                                  "fully_shard (FSDP2)"])
def test_marks_survive_new_parameter_objects(flow):
    """torch hands a model new parameter objects, without the attributes of the old ones, in many ways; the groups
    stay the groups of the model as built (until 2026-12-06 every one of these flows but pickling put DCLS
    positions, masks, SSM and kernel-net parameters into the default groups, with weight decay and the base lr)."""
    torch.manual_seed(0)
    expected = _described(_EveryMark(learn_omega_0=not flow.startswith("fully_shard")))
    assert {kind for kind, *_ in expected} >= {"position", "sigma", "mask", "kernel_net", "ssm", "sgconv",
                                                 "temperature"}
    if flow.startswith("fully_shard"):
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        assert _described(_handled(flow)) == expected
    finally:
        if flow.startswith("fully_shard"):
            torch.distributed.destroy_process_group()


def test_layer_decay_without_timm_says_what_to_install(monkeypatch):
    """``param_groups(..., layer_decay=)`` groups layers as timm does (the interop tests check the scales against
    timm's): without timm, an ImportError naming the extra to install, not a bare ModuleNotFoundError deep inside."""
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # importing timm now fails, whether it is installed or not
    monkeypatch.setitem(sys.modules, "timm.optim", None)
    model = nn.Sequential(nn.Conv2d(2, 2, 3))
    with pytest.raises(ImportError, match=r"needs timm: pip install 'largekernel\[timm\]'"):
        param_groups(model, layer_decay=0.7)
    assert [g["lr_scale"] for g in param_groups(model)] == [1.0, 1.0]  # without layer_decay timm is not needed
