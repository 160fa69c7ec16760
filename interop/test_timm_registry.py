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


@pytest.mark.parametrize("name", largekernel.models.list_models())
def test_timm_creates_every_model(name):
    """Every registered model through ``timm.create_model``, the 1-D ones included (timm's builder asserted an
    image's three-entry input size for them), with its pretrained_cfg."""
    with torch.device("meta"):
        model = timm.create_model(largekernel.models.timm_name(name), num_classes=3)
    assert model.num_classes == 3 and model.pretrained_cfg["input_size"] == largekernel.models.pretrained_cfg(name)[
        "input_size"]


@pytest.mark.parametrize("ours,theirs", [("convnext_atto_dcls", "convnext_atto"), ("resnet18", "resnet18")])
def test_timm_global_pool_keyword(ours, theirs):
    """timm's ``num_classes=0, global_pool=""`` at construction: the unpooled feature map, shaped as timm's own
    model returns it (it was a TypeError); ``"avg"`` as before; ``""`` with a classifier refused clearly."""
    x = torch.randn(2, 3, 64, 64)
    unpooled = timm.create_model(largekernel.models.timm_name(ours), num_classes=0, global_pool="")
    reference = timm.create_model(theirs, num_classes=0, global_pool="")
    assert unpooled(x).shape == reference(x).shape
    assert timm.create_model(largekernel.models.timm_name(ours), global_pool="avg")(x).shape == (2, 1000)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        timm.create_model(largekernel.models.timm_name(ours), global_pool="")


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
    with pytest.raises(ValueError, match=r"feature_cls must be one of \['dict', 'fx', 'getter', 'hook', 'list'\].*'x'"):
        timm.create_model("convnext_atto_dcls", features_only=True, feature_cls="x")


# ------------------------------------------------------------------------------- timm's model methods

_TWINS = [("convnext_atto", "convnext_atto"), ("resnet18", "resnet18")]


def _twins(ours: str, theirs: str):
    """timm's model and ours of the same architecture, ours holding timm's (random) weights: the state dicts'
    entries taken in order, their shapes asserted equal (timm's ConvNeXt-atto runs its MLP as 1x1 convolutions,
    ours as linear layers: the same weights, without the two trailing 1s)."""
    reference = timm.create_model(theirs).eval()
    model = timm.create_model(largekernel.models.timm_name(ours)).eval()
    state, given = model.state_dict(), list(reference.state_dict().values())
    assert len(state) == len(given)
    for (name, mine), theirs_ in zip(state.items(), given):
        assert mine.shape == theirs_.shape[:mine.dim()] and set(theirs_.shape[mine.dim():]) <= {1}, name
    model.load_state_dict({name: t.reshape(mine.shape) for (name, mine), t in zip(state.items(), given)})
    return model, reference


@pytest.mark.parametrize("ours,theirs", _TWINS)
@pytest.mark.parametrize("kwargs", [{}, {"indices": 2}, {"indices": [0, -1]}, {"indices": [1], "stop_early": True},
                                    {"indices": 3, "intermediates_only": True}, {"norm": True}])
def test_forward_intermediates_as_timms(ours, theirs, kwargs):
    """timm's ``forward_intermediates`` on our hierarchical models: the same maps (and final features) as timm's
    own ConvNeXt-atto and ResNet-18 holding the same weights, for each way of naming the maps."""
    model, reference = _twins(ours, theirs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = reference.forward_intermediates(x, **kwargs), model.forward_intermediates(x, **kwargs)
    if not kwargs.get("intermediates_only"):
        torch.testing.assert_close(got[0], want[0])
        want, got = want[1], got[1]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ours,theirs", _TWINS)
def test_feature_getter_as_timms(ours, theirs):
    """``feature_cls="getter"`` (timm's FeatureGetterNet: the model pruned by ``prune_intermediate_layers``, its
    maps from ``forward_intermediates``): timm's wrapper type, channels and reductions, and the maps of timm's
    own model holding the same weights."""
    model, reference = _twins(ours, theirs)
    indices = (1, 3)
    want = timm.create_model(theirs, features_only=True, out_indices=indices, feature_cls="getter").eval()
    got = timm.create_model(largekernel.models.timm_name(ours), features_only=True, out_indices=indices,
                            feature_cls="getter").eval()
    assert type(got) is type(want)
    assert got.feature_info.channels() == want.feature_info.channels()
    assert got.feature_info.reduction() == want.feature_info.reduction()
    got.model.load_state_dict(model.state_dict(), strict=False)
    want.model.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(got(x), want(x), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ours,theirs", _TWINS)
@pytest.mark.parametrize("coarse", [False, True])
def test_layer_decay_groups_as_timms(ours, theirs, coarse):
    """timm's layer-wise learning-rate decay (``param_groups_layer_decay``, what ``create_optimizer_v2(...,
    layer_decay=)`` uses) reads ``group_matcher``: every parameter gets the learning-rate scale and weight decay
    that the same parameter of timm's own model gets (without ``group_matcher`` timm fell back to grouping by
    module depth)."""
    from timm.optim import param_groups_layer_decay

    model, reference = _twins(ours, theirs)
    if coarse:
        model.group_matcher = lambda coarse=False, f=model.group_matcher: f(coarse=True)
        reference.group_matcher = lambda coarse=False, f=reference.group_matcher: f(coarse=True)

    def scales(net):
        found = {}
        for group in param_groups_layer_decay(net, weight_decay=0.05, layer_decay=0.7):
            for p in group["params"]:
                found[p] = (group["lr_scale"], group["weight_decay"])
        return [found[p] for p in net.parameters()]

    assert scales(model) == scales(reference)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    assert len({g["lr_scale"] for g in optimizer.param_groups}) > 4


@pytest.mark.parametrize("ours,theirs", _TWINS)
def test_classifier_methods_as_timms(ours, theirs):
    """``get_classifier`` and ``reset_classifier(num_classes, global_pool)``: timm's ``(0, "")`` makes the
    model return its last feature map, as timm's model then does; ``(5, "avg")`` a 5-way head."""
    model, reference = _twins(ours, theirs)
    assert type(model.get_classifier()) is torch.nn.Linear
    assert model.get_classifier().out_features == reference.get_classifier().out_features
    assert model.head_hidden_size == reference.head_hidden_size
    x = torch.randn(2, 3, 64, 64)
    for net in (model, reference):
        net.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    model.reset_classifier(5, "avg")
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
