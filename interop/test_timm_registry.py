"""largekernel's models in timm's registry: create_model, pretrained_cfg, features_only, against timm's own."""

import pytest
import timm
import torch
from timm.data import resolve_data_config

import largekernel.models
from largekernel.nn import DclsConv2d


def test_timm_creates_our_models_by_name():
    assert {"convnext_atto_dcls", "convnext_tiny_dcls"} <= set(timm.list_models("*_dcls"))
    model = timm.create_model("convnext_atto_dcls", num_classes=7)
    assert isinstance(model, largekernel.models.convnext.ConvNeXt)
    assert any(isinstance(m, DclsConv2d) for m in model.modules())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    # Layer choice goes through as for largekernel.models.create_model.
    fft = timm.create_model("lk_convnext_atto", conv="fft")
    assert all(m.backend == "fft" for m in fft.modules() if hasattr(m, "backend") and m.kernel_size == (7, 7))
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("convnext_atto_dcls", pretrained=True)


def test_names_timm_already_uses_stay_timms():
    assert type(timm.create_model("resnet18")).__module__.startswith("timm.")
    ours = timm.create_model(largekernel.models.timm_name("resnet18"))
    assert largekernel.models.timm_name("resnet18") == "lk_resnet18"
    assert type(ours).__module__ == "largekernel.models.resnet"
    assert largekernel.models.timm_name("resnet20") == "resnet20"  # a name timm does not have


@pytest.mark.parametrize("name", largekernel.models.list_models())
def test_pretrained_cfg_matches_timms_keys_and_our_registry(name):
    registered = largekernel.models.timm_name(name)
    cfg = timm.models.get_pretrained_cfg(registered).to_dict()
    ours = largekernel.models.pretrained_cfg(name)
    for key in ("input_size", "mean", "std", "num_classes", "classifier", "first_conv"):
        assert cfg[key] == ours[key], key
    assert not timm.models.get_pretrained_cfg(registered).has_weights


def test_timm_data_config_reads_our_cfg():
    model = timm.create_model("resnet20")
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32) and config["mean"] == (0.4914, 0.4822, 0.4465)


@pytest.mark.parametrize("ours,theirs", [("convnext_atto_dcls", "convnext_atto"), ("resnet18", "resnet18"),
                                         ("resnet50", "resnet50")])
def test_features_only_follows_timms_convention(ours, theirs):
    reference = timm.create_model(theirs, features_only=True, out_indices=(1, 2, 3))
    features = timm.create_model(largekernel.models.timm_name(ours), features_only=True, out_indices=(1, 2, 3))
    assert type(features).__name__ == "FeatureListNet"
    assert features.feature_info.channels() == reference.feature_info.channels()
    assert features.feature_info.reduction() == reference.feature_info.reduction()
    x = torch.randn(2, 3, 64, 64)
    assert [f.shape for f in features(x)] == [f.shape for f in reference(x)]
    # largekernel's own features_only (no timm needed) gives the same maps from the same weights.
    own = largekernel.models.create_model(ours, features_only=True, out_indices=(1, 2, 3))
    assert own.channels() == features.feature_info.channels() and own.reduction() == reference.feature_info.reduction()
    own.load_state_dict(_unflattened(features), strict=True)
    for a, b in zip(own.eval()(x), features.eval()(x)):
        torch.testing.assert_close(a, b)


def _unflattened(features):
    """timm's FeatureListNet flattens top-level Sequentials ("stem.0" -> "stem_0"); ours keeps the names."""
    state = {}
    for key, value in features.state_dict().items():
        head, _, rest = key.partition(".")
        prefix = head.replace("_", ".", 1) if head.startswith(("stem_", "stages_")) else head
        state[f"{prefix}.{rest}"] = value
    return state


@pytest.mark.parametrize("feature_cls", ["list", "dict", "hook", "fx"])
def test_feature_cls_as_timm_takes_it(feature_cls):
    """``feature_cls`` picks timm's feature wrapper as for timm's own models (it was passed on to the model's
    constructor, a TypeError): the same wrapper type as timm's ConvNeXt gets, the same maps as our own
    ``features_only`` from the same weights (``fx``: the layers recorded as one call each)."""
    reference = timm.create_model("convnext_atto", features_only=True, out_indices=(1, 3), feature_cls=feature_cls)
    features = timm.create_model("convnext_atto_dcls", features_only=True, out_indices=(1, 3),
                                 feature_cls=feature_cls).eval()
    assert type(features) is type(reference)
    own = largekernel.models.create_model("convnext_atto_dcls", features_only=True, out_indices=(1, 3)).eval()
    state = ({k.removeprefix("graph_module."): v for k, v in features.state_dict().items()} if feature_cls == "fx"
             else _unflattened(features))
    own.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = features(x)
        want = own(x)
    for a, b in zip(got.values() if isinstance(got, dict) else got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unknown_feature_cls_is_a_clear_error():
    with pytest.raises(ValueError, match=r"feature_cls must be one of \['dict', 'fx', 'hook', 'list'\].*'getter'"):
        timm.create_model("convnext_atto_dcls", features_only=True, feature_cls="getter")
