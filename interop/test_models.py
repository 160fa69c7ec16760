"""convert / bake / param_groups with timm's optimizer factory / one training step, on 12 real models."""

import copy

import pytest
import timm
import torch
import torchvision
from timm.optim import create_optimizer_v2
from timm.utils import reparameterize_model
from torch import nn

import largekernel
from largekernel.surgery import load_dense
from largekernel.optim import param_groups

_TIMM = ["convnext_atto", "convnext_tiny", "convnextv2_atto", "inception_next_tiny", "repvit_m0_9", "mobileone_s0",
         "efficientnet_b0", "resnet18", "resnet50"]
_TORCHVISION = ["resnet18", "convnext_tiny", "mobilenet_v3_small"]
MODELS = [f"timm/{n}" for n in _TIMM] + [f"torchvision/{n}" for n in _TORCHVISION]
# ResNets have no depthwise convolution (the default target): their first stage's 3x3 convolutions instead.
_WHICH = {"timm/resnet18": "layer1.*", "timm/resnet50": "layer1.*", "torchvision/resnet18": "layer1.*"}
_INPUT = (2, 3, 32, 32)


def _create(spec: str) -> nn.Module:
    source, name = spec.split("/")
    if source == "timm":
        model = timm.create_model(name, pretrained=False, num_classes=10)
        if name in ("repvit_m0_9", "mobileone_s0"):  # train-time branches fused first (see test below)
            model = reparameterize_model(model.eval())
        return model
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


@pytest.mark.parametrize("to", ["dcls", "flexconv", "ckconv"])
@pytest.mark.parametrize("spec", MODELS)
def test_convert_iso_params_then_bake(spec, to):
    model = _create(spec).eval()
    x = torch.randn(_INPUT)
    params = sum(p.numel() for p in model.parameters())
    _, report = largekernel.convert(model, to, _WHICH.get(spec), iso_params=True, report=True)
    assert report.replaced and not report.skipped, str(report)
    assert report.params_before == params
    replaced_before = sum(r.params_before for r in report.replaced)
    replaced_after = sum(r.params_after for r in report.replaced)
    assert abs(replaced_after - replaced_before) <= 0.02 * replaced_before, str(report)
    with torch.no_grad():
        converted = model(x)
    baked = largekernel.bake(model)
    assert not any(hasattr(m, "construct_kernel") for m in baked.modules())
    with torch.no_grad():
        torch.testing.assert_close(baked(x), converted, rtol=1e-4, atol=1e-4 * converted.abs().max().item())


@pytest.mark.parametrize("spec", MODELS)
def test_one_training_step_with_timm_optimizer_factory(spec):
    to = ("dcls", "flexconv", "ckconv")[MODELS.index(spec) % 3]  # each family trains on four of the models
    model = _create(spec).train()
    _, report = largekernel.convert(model, to, _WHICH.get(spec), iso_params=True, report=True)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, param_group_fn=param_groups)
    groups = {g["kind"]: g for g in opt.param_groups}
    if to == "dcls":
        assert groups["position"]["lr_scale"] == 5.0 and groups["position"]["weight_decay"] == 0.0
    if to == "flexconv":
        assert groups["mask"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)
    modules = dict(model.named_modules())
    layers = [modules[r.name] for r in report.replaced]
    before = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
    loss = nn.functional.cross_entropy(model(torch.randn(_INPUT)), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for layer, old in zip(layers, before):
        assert all(p.grad is not None for p in layer.parameters())
        assert any(not torch.equal(a, p) for a, p in zip(old, layer.parameters()))


@pytest.mark.parametrize("spec", MODELS)
def test_fft_and_dense_round_trip_keep_the_output(spec):
    model = _create(spec).eval()
    x = torch.randn(_INPUT)
    with torch.no_grad():
        expected = model(x)
    _, report = largekernel.convert(model, "fft", _WHICH.get(spec), report=True)
    assert report.replaced and all(m.backend == "fft" for m in model.modules() if hasattr(m, "backend"))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("spec,to", [("timm/convnext_atto", "dcls"), ("timm/efficientnet_b0", "flexconv"),
                                     ("torchvision/resnet18", "fft")])
def test_converted_model_exports_with_dynamic_sizes(spec, to, tmp_path):
    """A converted model as deployed: ``torch.export`` unbaked and baked, and ONNX (ONNX Runtime) of the baked
    model, each one program for every batch size and every image size up to the example's (for which the FFT
    grids are planned), against the model run eagerly on other batches and image shapes."""
    import onnxruntime

    model = _create(spec).eval()
    largekernel.convert(model, to, _WHICH.get(spec))
    x = torch.randn(2, 3, 96, 96)
    inputs = (torch.randn(3, 3, 64, 80), torch.randn(1, 3, 96, 72))
    with torch.no_grad():
        expected = [model(v) for v in inputs]
    sizes = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=64, max=96),
              3: torch.export.Dim("width", min=64, max=96)},)
    baked = largekernel.bake(copy.deepcopy(model))
    for module in (model, baked):
        program = torch.export.export(module, (x,), dynamic_shapes=sizes)
        for v, e in zip(inputs, expected):
            torch.testing.assert_close(program.module()(v), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    path = tmp_path / "model.onnx"
    torch.onnx.export(baked, (x,), dynamo=True, dynamic_shapes=sizes).save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for v, e in zip(inputs, expected):
        (out,) = session.run(None, {session.get_inputs()[0].name: v.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_resnet_default_conversion_says_it_replaced_nothing():
    for model in (timm.create_model("resnet18", num_classes=10), torchvision.models.resnet18(num_classes=10)):
        with pytest.warns(UserWarning, match="replaced nothing"):
            _, report = largekernel.convert(model, "dcls", report=True)
        assert not report.replaced and report.not_selected > 0


@pytest.mark.parametrize("name", ["repvit_m0_9", "mobileone_s0"])
def test_convert_before_or_after_reparameterize_model(name):
    x = torch.randn(_INPUT)
    model = timm.create_model(name, num_classes=10).eval()
    with pytest.warns(UserWarning, match="reparameterize_model"):
        _, report = largekernel.convert(model, "dcls", report=True)
    assert not report.replaced and report.skipped
    assert all("reparameterize_model" in s.reason for s in report.skipped)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(model)  # still works: nothing it fuses was touched
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)
    _, report = largekernel.convert(fused, "dcls", report=True)  # after: the fused convolutions convert
    assert report.replaced and not report.skipped
    assert reparameterize_model(fused)(x).shape == (2, 10)


def test_tf_same_padding_is_kept():
    # tf_efficientnet_b0's stride-2 depthwise convolutions are timm Conv2dSame (TF "SAME" from the input size).
    model = timm.create_model("tf_efficientnet_b0", num_classes=10).eval()
    x = torch.randn(2, 3, 63, 66)  # odd and even sizes: the padding differs per side
    with torch.no_grad():
        expected = model(x)
    same = [n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame" and m.groups > 1]
    assert same  # the stride-2 depthwise ones (the stem is dense: not a default target)
    exact = largekernel.convert(copy.deepcopy(model), "fft")
    with torch.no_grad():
        torch.testing.assert_close(exact(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    model, report = largekernel.convert(model, "dcls", report=True)
    assert {r.name for r in report.replaced} >= set(same) and not report.skipped
    with torch.no_grad():
        converted = model(x)
        assert converted.shape == expected.shape
        torch.testing.assert_close(largekernel.bake(model)(x), converted, rtol=1e-4, atol=1e-4)


def test_dilation_is_kept_at_output_stride_16():
    model = timm.create_model("convnext_tiny", num_classes=10, output_stride=16).eval()
    dilated = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1}
    assert dilated
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected_features = model.forward_features(x)
    _, report = largekernel.convert(model, "dcls", report=True)
    modules = dict(model.named_modules())
    assert all(modules[n].dilation == (2, 2) for n in dilated)
    with torch.no_grad():
        assert model.forward_features(x).shape == expected_features.shape


def test_pretrained_weights_load_into_the_converted_model():
    # A dense timm checkpoint (here: a freshly initialised one) into its DCLS version: exact with enough elements.
    dense = timm.create_model("convnext_atto", num_classes=10).eval()
    state = dense.state_dict()
    x = torch.randn(1, 3, 32, 32)
    converted = largekernel.convert(copy.deepcopy(dense), "dcls", kernel_count=49)
    report = load_dense(converted, state)
    assert len(report.fitted) == 12 and max(report.fitted.values()) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(converted(x), dense(x), rtol=1e-4, atol=1e-4)
    # Fewer elements than taps: the best sparse kernels, each layer's error stated.
    sparse = largekernel.convert(copy.deepcopy(dense), "dcls", kernel_count=20)
    report = load_dense(sparse, state)
    assert all(0 < err < 1 for err in report.fitted.values())


@pytest.mark.parametrize("spec", ["torchvision/resnet18", "torchvision/convnext_tiny", "timm/convnext_atto"])
def test_torchvision_feature_extractor_on_the_fft_model_gives_the_dense_features(spec):
    """torchvision's ``create_feature_extractor`` (torch.fx symbolic tracing) on the model converted to the FFT
    path (every spatial convolution): the feature maps the dense model gives it, torch's convolutions."""
    from torchvision.models.feature_extraction import create_feature_extractor

    dense = _create(spec).eval()
    converted = largekernel.convert(copy.deepcopy(dense), "fft", "*")
    nodes = ({"layer2": "early", "layer4": "late"} if "resnet" in spec else
             {"features.3": "early", "features.7": "late"} if spec.startswith("torchvision") else
             {"stages.1": "early", "stages.3": "late"})
    x = torch.randn(_INPUT)
    with torch.no_grad():
        want = create_feature_extractor(dense, nodes)(x)
        got = create_feature_extractor(converted, nodes)(x)
    for key in nodes.values():
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4 * want[key].abs().max().item())


@pytest.mark.parametrize("to", ["dcls", "flexconv", "niff", "replk"])
def test_timm_fx_feature_extraction_on_converted_models(to):
    """timm's FX feature extraction (``FeatureGraphNet``, what ``features_only=True`` builds for models without
    feature hooks) on a converted ConvNeXt: each stage's output as the eager model computes it."""
    from timm.models import FeatureGraphNet

    model = largekernel.convert(timm.create_model("convnext_atto", pretrained=False), to).eval()
    extractor = FeatureGraphNet(model, out_indices=(1, 2, 3))
    stages = {}
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda module, args, out, i=i: stages.__setitem__(i, out))
    x = torch.randn(_INPUT)
    with torch.no_grad():
        model(x)
        features = extractor(x)
    assert len(features) == 3
    for got, i in zip(features, (1, 2, 3)):
        torch.testing.assert_close(got, stages[i], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_tiny", "fit_tiny"])
def test_torchvision_feature_extractor_on_our_vit_at_two_input_sizes(name):
    """torchvision's ``create_feature_extractor`` on the library's ViT / FiT: the blocks' outputs the eager model
    gives (forward hooks), at the size the position embeddings are made for and at another one (the traced graph
    resamples them when it runs)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from largekernel.models import create_model

    model = create_model(name, num_classes=10, img_size=16, depth=2).eval()
    extractor = create_feature_extractor(model, {"blocks.0": "first", "norm": "last"})
    seen = {}
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.__setitem__("first", out))
    model.norm.register_forward_hook(lambda module, args, out: seen.__setitem__("last", out))
    for size in [(16, 16), (24, 32)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            model(x)
            features = extractor(x)
        for key in ("first", "last"):
            torch.testing.assert_close(features[key], seen[key], rtol=0, atol=0)


# Convolution layouts beyond the 12 models: MixedConv2d (mixnet: channel groups with different kernel sizes; TF
# "SAME" padding in tf_mixnet), GhostNet's cheap depthwise operations, EdgeNeXt, FastViT's re-parameterisable
# blocks, Inception's 1x7 / 7x1 kernels (every spatial convolution selected), ConvMixer's 9x9 depthwise, NFNet's
# weight-standardised convolutions (skipped, saying why: they override forward).
# And torchvision's ShuffleNetV2 (strided depthwise after channel splits), RegNetY (grouped 3x3 convolutions) and
# EfficientNetV2 (fused MBConv).
_MORE = {"timm/mixnet_s": (None, 64), "timm/tf_mixnet_s": (None, 64), "timm/ghostnet_100": (None, 64),
         "timm/edgenext_xx_small": (None, 64), "timm/fastvit_t8": (None, 64), "timm/inception_v3": ("*", 96),
         "timm/convmixer_768_32": (None, 64), "timm/nfnet_f0": ("*", 64),
         "torchvision/shufflenet_v2_x0_5": (None, 64), "torchvision/regnet_y_400mf": ("*", 64),
         "torchvision/efficientnet_v2_s": (None, 64)}


@pytest.mark.parametrize("spec", list(_MORE))
def test_more_models_round_trip_train_and_bake(spec):
    """On each: the FFT conversion gives the original's output; the DCLS conversion replaces its selected layers
    (NFNet: none, each skipped with its reason), trains a step with finite gradients on every parameter, and bakes
    to the same output."""
    which, size = _MORE[spec]
    source, name = spec.split("/")
    model = (timm.create_model(name, pretrained=False, num_classes=10) if source == "timm" else
             getattr(torchvision.models, name)(weights=None, num_classes=10)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        fft = largekernel.convert(copy.deepcopy(model), "fft", which)
        torch.testing.assert_close(fft(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    converted, report = largekernel.convert(copy.deepcopy(model), "dcls", which, report=True)
    if name == "nfnet_f0":
        assert not report.replaced and report.skipped
        assert all("overrides forward" in s.reason for s in report.skipped), str(report)
        return
    assert report.replaced, str(report)
    converted.train()
    converted(x).square().mean().backward()
    for param_name, p in converted.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), param_name
    converted.eval()
    with torch.no_grad():
        y = converted(x)
        baked = largekernel.bake(copy.deepcopy(converted))
        torch.testing.assert_close(baked(x), y, rtol=1e-4, atol=1e-4 * y.abs().max().item())


def _randomise_batch_norms(model: nn.Module) -> None:
    """Running statistics and affine parameters away from their initial values (which a merge could ignore)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-1, 1)


@pytest.mark.parametrize("family", ["replk", "slak", "dilated_reparam"])
def test_frozen_batch_norms_merge_into_the_kernel(family):
    """``timm.layers.freeze_batch_norm_2d`` (what ``timm.utils.freeze`` does to BatchNorms; torchvision's
    detection backbones do the same) puts torchvision's ``FrozenBatchNorm2d`` in every BatchNorm's place. The
    re-parameterised layers merge it as a BatchNorm on its running statistics (``bake()`` refused, and they ran
    branch by branch): each layer's output and gradients, in training and eval, equal its branches called one by
    one (each convolution, then torchvision's FrozenBatchNorm2d), and ``bake()`` keeps the model's output."""
    from timm.layers import freeze_batch_norm_2d

    model = timm.create_model("convnext_atto")
    largekernel.convert(model, family)
    _randomise_batch_norms(model)
    model = freeze_batch_norm_2d(model).double()
    layers = [m for m in model.modules() if hasattr(m, "branches")]
    assert layers and all(type(bn) is torchvision.ops.misc.FrozenBatchNorm2d for m in layers for _, bn in m.branches())
    layer = layers[0]
    x = torch.randn(2, layer.in_channels, 9, 11, dtype=torch.float64)
    params = [conv.weight for conv, _ in layer.branches()]
    for mode in (True, False):
        layer.train(mode)
        got = layer(x)
        want = sum(bn(conv(x)) for conv, bn in layer.branches()) + layer.bias.view(-1, 1, 1)
        torch.testing.assert_close(got, want)
        probe = torch.randn_like(got)
        for a, b in zip(torch.autograd.grad(got, params, probe), torch.autograd.grad(want, params, probe)):
            torch.testing.assert_close(a, b)
    model.eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        for native in (False, True):
            torch.testing.assert_close(largekernel.bake(model, native=native)(images), expected)


@pytest.mark.parametrize("family", ["replk", "slak", "dilated_reparam"])
def test_timms_reparameterize_model_merges_the_branches(family):
    """``timm.utils.reparameterize_model`` replaces each child that has ``fuse()`` by its result, as it fuses
    timm's own re-parameterisable blocks: on a converted model it leaves no branch, one convolution per layer,
    and the output of the layers run branch by branch (a forward hook on each branch's convolution makes a layer
    call its branches, in eval too; float64, BatchNorm statistics randomised)."""
    model = timm.create_model("convnext_atto")
    largekernel.convert(model, family)
    _randomise_batch_norms(model)
    model = model.double().eval()
    fused = reparameterize_model(model)
    assert not any(hasattr(m, "branches") for m in fused.modules())
    assert sum(type(m) is largekernel.nn.Conv2d for m in fused.modules()) == sum(hasattr(m, "branches") for m in model.modules())
    calls = []
    for layer in (m for m in model.modules() if hasattr(m, "branches")):
        for conv, _ in layer.branches():
            conv.register_forward_hook(lambda module, args, y: calls.append(module))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))
    assert len(calls) == sum(len(m.branches()) for m in model.modules() if hasattr(m, "branches"))
