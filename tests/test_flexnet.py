"""FlexNet / CKResNet / CKCNN / FlexTCN: registry contract, forward/backward, causality, cross-resolution."""

import pytest
import torch
from torch import nn

from largekernel.models import create_model, list_models
from largekernel.models.flexnet import FlexBlock, FlexNet
from largekernel.nn.flexconv import CKConv2d, FlexConv1d, FlexConv2d, continuous_layers, set_resolution
from largekernel.optim import param_groups

NAMES = ["flexnet_tiny", "flexnet_small", "ckresnet_tiny", "ckresnet_small", "ckcnn_tiny", "ckcnn_small",
         "flextcn_tiny", "flextcn_small"]
SEQUENCE = {"ckcnn_tiny", "ckcnn_small", "flextcn_tiny", "flextcn_small"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _input(name, batch=2):
    return torch.randn(batch, 1, 40) if name in SEQUENCE else torch.randn(batch, 3, 8, 8)


def test_all_variants_are_registered():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_contract(name):
    kwargs = {"num_classes": 5} if name in SEQUENCE else {"num_classes": 5, "in_chans": 3}
    model = create_model(name, **kwargs)
    x = _input(name)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, *x.shape[2:])  # no pooling, no striding
    logits = model(x)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert isinstance(model.no_weight_decay(), set)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    # Every continuous layer sized its kernel from the input.
    layers = list(continuous_layers(model))
    assert layers and all(l.kernel_size == ((40,) if name in SEQUENCE else (9, 9)) for l in layers)


def test_families_and_sizes():
    flex = create_model("flexnet_tiny")
    assert all(isinstance(l, FlexConv2d) for l in continuous_layers(flex))
    ck = create_model("ckresnet_tiny")
    assert all(isinstance(l, CKConv2d) for l in continuous_layers(ck))
    tcn = create_model("flextcn_tiny")
    assert all(isinstance(l, FlexConv1d) and l.causal for l in continuous_layers(tcn))
    assert len(list(continuous_layers(create_model("flexnet_small")))) == 1 + 2 * 4
    custom = create_model("flexnet_tiny", conv_kwargs={"kernel_net": "gabor", "mask_init": 0.2})
    layer = next(continuous_layers(custom))
    assert type(layer.kernel_net).__name__ == "GaborKernel" and layer.kernel_net.hidden_channels == 16
    assert layer.mask_width.tolist() == pytest.approx([0.2, 0.2])


@pytest.mark.parametrize("name", ["ckcnn_tiny", "flextcn_tiny"])
def test_sequence_models_are_causal(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    x = torch.randn(2, 1, 40)
    feats = model.forward_features(x)
    x2 = x.clone()
    x2[..., 25:] = torch.randn(2, 1, 15)
    torch.testing.assert_close(model.forward_features(x2)[..., :25], feats[..., :25], rtol=0, atol=1e-5)


def test_mask_parameters_get_their_own_optimizer_group():
    model = create_model("flexnet_tiny")
    model(_input("flexnet_tiny"))
    kinds = {g["kind"]: g for g in param_groups(model, lr=1e-3, weight_decay=1e-4)}
    assert "mask" in kinds and kinds["mask"]["weight_decay"] == 0.0
    n_mask = sum(1 for l in continuous_layers(model) for _ in (l.mask_width, l.mask_mean))
    assert len(kinds["mask"]["params"]) == n_mask


def test_cross_resolution_model_runs_at_twice_the_training_size():
    torch.manual_seed(0)
    model = create_model("flexnet_tiny", num_classes=3, in_chans=1).eval()
    model(torch.randn(2, 1, 16, 16))
    set_resolution(model, 32, 16)
    assert all(l.kernel_size == (33, 33) for l in continuous_layers(model))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    # A smooth image upsampled 2x gives nearly the same prediction once the kernels are resampled.
    img = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 64, 64), 4)  # (1, 1, 16, 16), smooth-ish
    set_resolution(model, 16, 16)
    small = model(img)
    up = torch.nn.functional.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
    set_resolution(model, 32, 16)
    big = model(up)
    assert torch.nn.functional.cosine_similarity(small, big).item() > 0.9


def test_block_shortcut_and_bad_arguments():
    block = FlexBlock(4, 8, dim=2, conv="ckconv", kernel_size=5)
    assert isinstance(block.shortcut, nn.Conv2d)
    assert block(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
    with pytest.raises(ValueError, match="conv must be one of"):
        FlexNet(conv="dcls")
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        FlexNet(width=0)
    with pytest.raises(ValueError, match="pool must be 'mean' or 'last'"):
        FlexNet(pool="max")
    with pytest.raises(ValueError, match=r"expects a 4-D input .* got shape \(2, 3, 8\)"):
        FlexNet()(torch.randn(2, 3, 8))
