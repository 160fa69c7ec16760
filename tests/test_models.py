"""Every registered model: forward, backward, the timm-style interface, parameter counts, convert, bake, compile.

Inputs are small (8x8 to 16x16 images, length-40 sequences). To keep this file
within its time budget on a 2-core CPU:

- ``_FULL`` (one small variant per architecture family: the tiny DWNets, ConvNeXt-atto
  and its DCLS version, ResNet-20/18, the tiny FlexNet/CKResNet/CKCNN/FlexTCN, ViT/FiT-tiny,
  and RepLKNet-31B, UniRepLKNet-T, SLaK-T at tiny widths and depths with their own kernel sizes)
  gets everything: interface, backward, convert round trip, bake, torch.compile;
- ``_BIG`` (ConvNeXt-T/S/B and their DCLS versions, ConvNeXt-nano, ResNet-50, ViT/FiT-S)
  is constructed and its parameters counted against published numbers or a formula,
  with no forward pass;
- every other registered model (the remaining sizes of the same families, built from
  the same blocks as ``_FULL``) is constructed and run forward once on a batch of one.
"""

import collections
import contextlib
import copy
import math

import pytest
import torch
from torch import nn

import largekernel
import largekernel.nn as L
from largekernel.models import create_model, list_models

_ALL = list_models()
_FULL = ["dwnet1d_tiny", "dwnet2d_tiny", "convnext_atto", "convnext_atto_dcls", "resnet20", "resnet18",
         "ckcnn_tiny", "ckresnet_tiny", "flexnet_tiny", "flextcn_tiny", "vit_tiny", "fit_tiny", "replknet_31b",
         "unireplknet_t", "slak_tiny"]
_BIG = ["convnext_nano", "convnext_tiny", "convnext_small", "convnext_base", "convnext_tiny_dcls",
        "convnext_small_dcls", "convnext_base_dcls", "resnet50", "vit_small", "fit_small"]
_REST = [n for n in _ALL if n not in _FULL and n not in _BIG]


def _setup(name: str) -> tuple[dict, tuple[int, ...]]:
    """Constructor kwargs and an input shape small enough for a quick CPU test."""
    if name.startswith(("dwnet1d", "ckcnn", "flextcn")):
        return {"in_chans": 1}, (2, 1, 40)
    if name.startswith(("dwnet2d", "flexnet", "ckresnet")):
        return {"in_chans": 1}, (2, 1, 8, 8)
    if name.startswith("convnext"):
        return {"patch_size": 1}, (2, 3, 8, 8)
    if name.startswith("resnet"):
        return {}, (2, 3, 8, 8)
    if name.startswith(("vit", "fit")):
        return {"img_size": 16}, (2, 3, 16, 16)
    # Large-kernel CNNs at tiny widths and depths; each variant keeps its kernel sizes (RepLKNet 31..13,
    # SLaK 51..13) except UniRepLKNet, whose per-block table follows its depths.
    if name.startswith("replknet"):
        return {"dims": (8, 16, 16, 16), "depths": (1, 1, 1, 1)}, (2, 3, 16, 16)
    if name.startswith("unireplknet"):
        return {"dims": (8, 16, 16, 16), "depths": (1, 1, 2, 1), "kernel_sizes": (3, 3, (13, 3), 3)}, (2, 3, 16, 16)
    if name.startswith("slak"):
        return {"dims": (8, 16, 16, 16), "depths": (1, 1, 1, 1)}, (2, 3, 32, 32)
    raise KeyError(f"no test input for model {name!r}: add its family to _setup in tests/test_models.py")


def _model(name: str, device: str = "cpu", **kwargs) -> tuple[nn.Module, torch.Tensor]:
    setup, shape = _setup(name)
    model = create_model(name, num_classes=5, **{**setup, **kwargs})
    return model.to(device), torch.randn(shape).to(device)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_is_tested():
    assert set(_FULL) <= set(_ALL) and set(_BIG) <= set(_ALL)
    for name in _ALL:
        if name not in _BIG:
            _setup(name)  # raises for a family this file does not know yet


def _check_interface(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert y.shape == (x.shape[0], 5) and torch.isfinite(y).all()
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), y)
        pooled = model.forward_head(features, pre_logits=True)
        model.reset_classifier(3)
        assert model(x).shape == (x.shape[0], 3)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
    assert isinstance(set(model.no_weight_decay()), set)


@pytest.mark.parametrize("name", _FULL)
def test_timm_interface(name, device):
    _check_interface(*_model(name, device))


@pytest.mark.parametrize("name", ["dwnet1d_tiny", "vit_tiny", "flexnet_tiny"])  # each reset_classifier
def test_reset_classifier_keeps_the_models_device_and_dtype(name, device):
    model, x = _model(name)
    model.to(device, torch.float64).reset_classifier(3)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(device, torch.float64)}
    assert model(x.to(device, torch.float64)).shape == (x.shape[0], 3)


@pytest.mark.parametrize("name", _REST)
def test_other_sizes_run_forward(name):
    model, x = _model(name)
    _check_interface(model, x[:1])


@pytest.mark.parametrize("name", _FULL)
def test_backward_reaches_every_parameter(name, device):
    kwargs = {"drop_path_rate": 0.1} if name.startswith(("dwnet", "convnext")) else {}
    model, x = _model(name, device, **kwargs)
    model.train()
    x.requires_grad_(True)
    model(x).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert torch.isfinite(x.grad).all()


# Independent references: torchvision's documented parameter counts.
_KNOWN = {"convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
          "resnet18": 11_689_512, "resnet50": 25_557_032}
_DCLS = {"convnext_atto_dcls": ("convnext_atto", 34), "convnext_tiny_dcls": ("convnext_tiny", 34),
         "convnext_small_dcls": ("convnext_small", 40), "convnext_base_dcls": ("convnext_base", 40)}


def _dcls_expected(model: nn.Module, dense_count: int, count: int) -> int:
    depths = [len(stage.blocks) for stage in model.stages]
    dims = [stage.blocks[0].conv_dw.in_channels for stage in model.stages]
    # 7x7 depthwise weights out, `count` weights in per layer, 2 x count positions per channel once per stage.
    return dense_count + sum(d * c * (count - 49) for d, c in zip(depths, dims)) + sum(2 * c * count for c in dims)


@pytest.mark.parametrize("name", _BIG + ["resnet18", "convnext_atto_dcls"])
def test_parameter_count(name):
    model = create_model(name)
    n = _count(model)
    assert n == len(torch.nn.utils.parameters_to_vector(model.parameters()))
    if name in _KNOWN:
        assert n == _KNOWN[name]
    if name in _DCLS:
        base, count = _DCLS[name]
        dense = _KNOWN.get(base) or _count(create_model(base))
        assert n == _dcls_expected(model, dense, count)
        block0, block1 = model.stages[0].blocks[:2]
        assert block0.conv_dw.P is block1.conv_dw.P and block0.conv_dw.weight is not block1.conv_dw.weight
        assert block0.conv_dw.dilated_kernel_size == (17, 17) and block0.conv_dw.kernel_count == count
    for method in ("forward_features", "forward_head", "reset_classifier", "no_weight_decay"):
        assert callable(getattr(model, method))


@pytest.mark.parametrize("depth", [20, 44, 56])
def test_cifar_resnet_count(depth):
    n = (depth - 2) // 6
    expected = 3 * 9 * 16 + 2 * 16 + 64 * 10 + 10  # stem conv + BN, head
    prev = 16
    for width in (16, 32, 64):
        for _ in range(n):
            expected += prev * width * 9 + width * width * 9 + 4 * width  # two 3x3 convs and BNs
            if prev != width:
                expected += prev * width + 2 * width  # 1x1 projection shortcut + BN
            prev = width
    assert _count(create_model(f"resnet{depth}")) == expected
    if depth == 20:  # He et al.'s 0.27M (269,722 with parameter-free shortcuts) plus the two projections
        assert expected == 269_722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("name", _FULL)
def test_convert_round_trip_keeps_output(name):
    model, x = _model(name)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        # After the first call: continuous kernels record their sampling resolution then.
        state = copy.deepcopy(model.state_dict())
        # A model without torch's spatial convolutions (continuous-kernel models) has nothing to convert, and says so
        spatial = any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and max(m.kernel_size) > 1
                      for m in model.modules())
        with contextlib.nullcontext() if spatial else pytest.warns(UserWarning, match="no spatial convolution"):
            _, report = largekernel.convert(model, "fft", "*", report=True)
        assert report.replaced or not name.startswith(("dwnet", "convnext", "resnet"))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
        with contextlib.nullcontext() if spatial else pytest.warns(UserWarning, match="no spatial convolution"):
            largekernel.convert(model, "conv", "*", backend="direct")
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in after.items() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("name", _FULL)
def test_bake_keeps_output(name):
    model, x = _model(name)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        largekernel.bake(model, input_size=tuple(x.shape))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert not any(callable(getattr(m, "construct_kernel", None)) for m in model.modules())


@pytest.mark.parametrize("name", _FULL)
def test_built_on_the_meta_device_then_loaded(name):
    """Deferred initialisation of a whole model (Hugging Face's ``init_empty_weights``, FSDP): built under
    ``torch.device("meta")`` without memory, then given a checkpoint's tensors (``assign=True``), it computes what
    the model built on the CPU computes, bit for bit."""
    torch.manual_seed(0)
    original, x = _model(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=5, **_setup(name)[0])
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    model.load_state_dict(copy.deepcopy(original.state_dict()), assign=True)
    original.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", _FULL)
def test_fx_symbolic_trace_matches_eager(name):
    """``torch.fx.symbolic_trace`` of every model (the route of torchvision's ``create_feature_extractor``): the
    models skip their input checks on a ``Proxy`` and the layers are recorded as one call each; the graph computes
    eager's output exactly."""
    model, x = _model(name)
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    layers = [m for m in model.modules() if isinstance(m, L.KernelConvNd)]
    called = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    assert {path for path, m in model.named_modules() if m in layers} <= called
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_tiny", "fit_tiny"])
def test_fx_traced_vit_follows_the_input_size(name):
    """A traced ViT / FiT resamples its position embeddings for the size it is given when the graph runs (timm's
    traces at one size; tests/test_vit.py checks the resampling against ``F.interpolate``): at sizes other than
    its ``img_size`` the traced graph equals eager; a bad input is still refused when the graph runs."""
    model, _ = _model(name)
    model.eval()
    traced = torch.fx.symbolic_trace(model)
    for size in [(24, 32), (8, 4)]:  # img_size 16, patch 4: grids of 6x8 and 2x1 tokens against the embeddings' 4x4
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiples of patch_size=4"):
        traced(torch.randn(2, 3, 18, 16))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        traced(torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("name", _FULL)
def test_compile_matches_eager(name):
    model, x = _model(name)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        torch.compiler.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", ["conv", "fft", "dilated", "dcls", "flexconv", "ckconv", "niff", "sgconv", "s4d"])
def test_dwnet1d_every_family_trains_and_compiles(conv):
    model = create_model("dwnet1d_tiny", conv=conv, kernel_size=15)
    x = torch.randn(3, 1, 40, requires_grad=True)
    y = model(x)
    assert y.shape == (3, 10)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    model.eval()
    torch.compiler.reset()  # the same forward code objects recompile per model; stay under dynamo's limit
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", ["fft", "dcls", "flexconv", "niff"])
def test_models_take_conv_choice(conv):
    for name, shape in (("convnext_atto", (1, 1, 8, 8)), ("dwnet2d_tiny", (1, 1, 8, 8))):
        kwargs = {"patch_size": 1} if name.startswith("convnext") else {}
        model = create_model(name, conv=conv, kernel_size=5, in_chans=1, num_classes=4, **kwargs)
        assert model(torch.randn(shape)).shape == (1, 4)
    resnet = create_model("resnet20", conv="dcls", kernel_size=5, conv_kwargs={"kernel_count": 4})
    assert sum(type(m).__name__ == "DclsConv2d" for m in resnet.modules()) == 18


def test_input_sizes_and_bad_arguments():
    model = create_model("convnext_atto", patch_size=2, num_classes=3)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"H, W >= 16, got shape \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="share_positions=True needs conv='dcls'"):
        create_model("convnext_atto", share_positions=True)
    with pytest.raises(ValueError, match="stem must be 'imagenet' or 'small', got 'tiny'"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="expects a 3-D input"):
        create_model("dwnet1d_tiny")(torch.randn(1, 1, 8, 8))
    assert create_model("resnet20", in_chans=1)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert math.isclose(create_model("dwnet1d_tiny", drop_path_rate=0.2).blocks[-1].drop_path.drop_prob, 0.2)


@pytest.mark.parametrize("name", ["replknet_31b", "unireplknet_t", "slak_tiny"])
def test_feature_info_describes_each_stage_output(name):
    model, x = _model(name)
    outputs = {}
    for info in model.feature_info:
        model.get_submodule(info["module"]).register_forward_hook(
            lambda module, args, y, key=info["module"]: outputs.__setitem__(key, y))
    model.eval()
    with torch.no_grad():
        model(x)
    assert [info["module"] for info in model.feature_info] == [f"stages.{i}" for i in range(4)]
    for info in model.feature_info:
        y = outputs[info["module"]]
        assert y.shape[1] == info["num_chs"]
        assert y.shape[2:] == tuple(math.ceil(s / info["reduction"]) for s in x.shape[2:])


@pytest.mark.parametrize("name", ["convnext_atto", "slak_tiny", "unireplknet_t"])
@pytest.mark.parametrize("conv", ["ckconv", "flexconv", "niff"])
def test_timm_init_leaves_kernel_nets_their_own(name, conv):
    """The timm-style init of ConvNeXt, SLaK and UniRepLKNet (trunc-normal, std 0.02, on linear layers) spares the
    kernel nets' linear layers: pooled over the model's layers, each weight's spread is what the layer's own
    ``reset_parameters`` draws (it was redrawn at std 0.02: a SIREN's first layer at 1/15 of its scale)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, conv=conv)
    drawn, own = collections.defaultdict(list), collections.defaultdict(list)
    for layer in model.modules():
        if isinstance(layer, L.KernelConvNd) and any(isinstance(m, nn.Linear) for m in layer.modules()):
            fresh = copy.deepcopy(layer)
            fresh.reset_parameters()
            for (n, p), q in zip(layer.named_parameters(), fresh.parameters()):
                if p.dim() == 2 and n.endswith("weight"):
                    drawn[n].append(p.detach().flatten())
                    own[n].append(q.detach().flatten())
    assert drawn
    for n in drawn:
        ratio = torch.cat(drawn[n]).std() / torch.cat(own[n]).std()
        assert 0.8 < ratio < 1.25, (n, ratio.item())


@pytest.mark.parametrize("conv, model, shape", [("flexconv", "dwnet1d_tiny", (2, 1, 40)),
                                                ("ckconv", "dwnet1d_tiny", (2, 1, 40)),
                                                ("niff", "dwnet2d_tiny", (2, 1, 8, 8))])
def test_dynamic_quantization_of_linear_layers_leaves_kernel_nets(conv, model, shape):
    """``torch.ao.quantization.quantize_dynamic(model, {nn.Linear})`` (int8 CPU inference) quantizes the model's
    own linear layers (here its head) and leaves the kernel nets, which compute kernels: the same output as
    quantizing the head alone by name (the kernel nets' layers were swapped for quantized ones and the layers
    failed: no weight tensor to read)."""
    import warnings

    torch.manual_seed(0)
    net = create_model(model, conv=conv, num_classes=10, **({"in_chans": 1} if model == "dwnet2d_tiny" else {}))
    net.eval()
    x = torch.randn(shape)
    quantize = torch.ao.quantization.quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        by_type = quantize(copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8)
        by_name = quantize(copy.deepcopy(net), {"head": torch.ao.quantization.default_dynamic_qconfig},
                           dtype=torch.qint8)
    with torch.no_grad():
        torch.testing.assert_close(by_type(x), by_name(x), rtol=0, atol=0)
        assert not torch.equal(by_name(x), net(x))  # the head is quantized


# ----------------------------------------------------------------------------- timm's backbone methods

_BACKBONES = ["convnext_atto", "resnet20", "resnet18", "replknet_31b", "unireplknet_t", "slak_tiny"]


def _feature_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``forward_features(x)`` and the outputs of the modules ``feature_info`` names, caught by forward hooks."""
    outputs = {}
    hooks = [model.get_submodule(info["module"]).register_forward_hook(
        lambda module, args, y, key=info["module"]: outputs.__setitem__(key, y.clone())) for info in model.feature_info]
    with torch.no_grad():
        final = model.forward_features(x)
    for hook in hooks:
        hook.remove()
    return final, [outputs[info["module"]] for info in model.feature_info]


@pytest.mark.parametrize("name", _BACKBONES)
def test_forward_intermediates_are_the_maps_feature_info_names(name):
    """timm's ``forward_intermediates``: the outputs of the modules ``feature_info`` names in a plain forward, in
    forward order, for each way timm names them (None: all; n: the last n; positions, negative from the end),
    with ``forward_features``' result (or, with ``stop_early``, the last map reached); bad arguments refused."""
    model, x = _model(name)
    model.eval()
    final, maps = _feature_maps(model, x)
    n = len(maps)
    for indices, expected in [(None, range(n)), (2, [n - 2, n - 1]), ([0, -1], [0, n - 1]), ([-1, 0], [0, n - 1]),
                              ((1,), [1])]:
        with torch.no_grad():
            got_final, got = model.forward_intermediates(x, indices=indices)
            only = model.forward_intermediates(x, indices=indices, intermediates_only=True)
        torch.testing.assert_close(got_final, final)
        assert len(got) == len(only) == len(expected)
        for a, b, i in zip(got, only, expected):
            torch.testing.assert_close(a, maps[i])
            torch.testing.assert_close(b, maps[i])
    with torch.no_grad():
        early, (first,) = model.forward_intermediates(x, indices=[1], stop_early=True)
    torch.testing.assert_close(early, maps[1])
    for bad in (0, n + 1, [n], [-n - 1], [], [1.0]):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["convnext_atto", "resnet18", "slak_tiny"])
def test_prune_intermediate_layers_keeps_the_maps_up_to_the_last(name):
    """``prune_intermediate_layers`` drops what follows the last map named (fewer parameters) and, as timm's,
    the head and pooling: the pruned model returns that map, and its maps are the unpruned model's."""
    model, x = _model(name)
    model.eval()
    _, maps = _feature_maps(model, x)
    before = _count(model)
    assert model.prune_intermediate_layers([0, -3]) == [0, len(maps) - 3]
    assert len(model.feature_info) == len(maps) - 2 and _count(model) < before
    with torch.no_grad():
        got = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(model(x), maps[-3])
    torch.testing.assert_close(got[0], maps[0])
    torch.testing.assert_close(got[1], maps[-3])


@pytest.mark.parametrize("name", ["convnext_atto", "resnet20", "slak_tiny", "vit_tiny", "dwnet1d_tiny",
                                  "flexnet_tiny"])
def test_grad_checkpointing_recomputes_each_block_with_the_same_gradients(name):
    """``set_grad_checkpointing()``: each block runs once more in the backward (forward pre-hooks count the calls),
    and the gradients are those without it (float64; eval mode, so that a block's BatchNorms compute the same
    function when recomputed)."""
    model, x = _model(name)
    model = model.double().eval()
    x = x.double()
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.autograd.grad(model(x).square().sum(), params)
    blocks = list(model.blocks) if hasattr(model, "blocks") else [
        b for stage in model.stages for b in (stage.blocks if hasattr(stage, "blocks") else stage)]
    calls = collections.Counter()
    for block in blocks:
        # A pre-hook: torch's recomputation stops once it has what the backward needs, before a block's end.
        block.register_forward_pre_hook(lambda module, args: calls.update([id(module)]))
    model.set_grad_checkpointing()
    loss = model(x).square().sum()
    assert set(calls.values()) == {1} and len(calls) == len(blocks)
    checkpointed = torch.autograd.grad(loss, params)
    assert set(calls.values()) == {2}
    for a, b in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(a, b)
    model.set_grad_checkpointing(False)
    calls.clear()
    torch.autograd.grad(model(x).square().sum(), params)
    assert set(calls.values()) == {1}


def test_reset_classifier_takes_timms_global_pool():
    """``reset_classifier(0, "")``: no pooling, the model returns its last feature map with the head's LayerNorm
    at each position (torch's layer_norm over the channels, written out here); ``"avg"`` pools again; other
    names, or a classifier without pooling, refused. ``get_classifier`` and ``head_hidden_size`` as timm's."""
    model, x = _model("convnext_atto")
    model.eval()
    assert model.get_classifier() is model.head and model.head_hidden_size == model.num_features
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0, "")
        expected = torch.nn.functional.layer_norm(features.movedim(1, -1), (features.shape[1],), model.norm.weight,
                                                  model.norm.bias, eps=1e-6).movedim(-1, 1)
        torch.testing.assert_close(model(x), expected)
        model.reset_classifier(3, "avg")
        assert model(x).shape == (x.shape[0], 3)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        model.reset_classifier(3, "")
    with pytest.raises(ValueError, match="global_pool must be None, 'avg'"):
        model.reset_classifier(3, "max")
    assert _model("vit_tiny")[0].get_classifier().out_features == 5
    flexnet, _ = _model("flexnet_tiny")
    flexnet.reset_classifier(4, "avg")
    assert flexnet.get_classifier() is flexnet.head and flexnet.head.out_features == 4
    with pytest.raises(ValueError, match="global_pool must be None or 'avg'"):
        flexnet.reset_classifier(4, "")
