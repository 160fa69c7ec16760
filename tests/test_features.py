"""Backbone feature maps (features_only / out_indices) in timm's convention."""

import pytest
import torch

from largekernel.models import FeatureListNet, create_model


@pytest.mark.parametrize("name,kwargs,size,channels,reductions", [
    ("convnext_atto", {}, 64, [40, 80, 160, 320], [4, 8, 16, 32]),
    ("convnext_atto", {"patch_size": 2}, 32, [40, 80, 160, 320], [2, 4, 8, 16]),
    ("resnet18", {}, 64, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),  # timm's resnet18: act1, layer1..4
    ("resnet50", {}, 64, [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    ("resnet20", {}, 32, [16, 16, 32, 64], [1, 1, 2, 4]),
])
def test_feature_maps_have_the_declared_channels_and_strides(name, kwargs, size, channels, reductions):
    torch.manual_seed(0)
    classifier = create_model(name, **kwargs).eval()
    features = create_model(name, features_only=True, **kwargs).eval()
    assert isinstance(features, FeatureListNet)
    assert features.channels() == channels and features.reduction() == reductions
    # The same weights: a classifier's state dict loads, leaving out only the head.
    missing, unexpected = features.load_state_dict(classifier.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("head", "norm")) for k in unexpected)
    x = torch.randn(2, 3, size, size)
    maps = features(x)
    assert [tuple(m.shape) for m in maps] == [(2, c, size // r, size // r) for c, r in zip(channels, reductions)]
    torch.testing.assert_close(maps[-1], classifier.forward_features(x))


def test_out_indices_select_and_prune():
    torch.manual_seed(0)
    full = create_model("convnext_atto", features_only=True).eval()
    torch.manual_seed(0)
    early = create_model("convnext_atto", features_only=True, out_indices=(0, -3)).eval()
    assert early.out_indices == (0, 1) and early.channels() == [40, 80]
    assert not any(name.startswith("stages.2") for name, _ in early.named_parameters())  # later stages dropped
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(early(x), full(x)[:2]):
        torch.testing.assert_close(a, b)
    assert "num_classes" not in early.pretrained_cfg and early.pretrained_cfg["input_size"] == (3, 224, 224)


def test_bad_feature_requests():
    with pytest.raises(ValueError, match=r"out_indices must be a sequence of ints in \[-4, 4\).*got \(4,\)"):
        create_model("convnext_atto", features_only=True, out_indices=(4,))
    with pytest.raises(ValueError, match="needs features_only=True"):
        create_model("convnext_atto", out_indices=(1,))
    with pytest.raises(ValueError, match="VisionTransformer declares no feature_info"):
        create_model("vit_tiny", features_only=True)
