"""CKConv / FlexConv layers against torch's conv, the mask and cropping formulas, causality, cross-resolution,
anti-aliasing and the regularisers."""

import collections
import copy
import gc
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from largekernel.nn.flexconv import (CKConv1d, CKConv2d, CKConv3d, FlexConv1d, FlexConv2d, FlexConv3d,
                                     antialiasing_loss, continuous_layers, kernel_norm_loss, mask_extent_loss,
                                     set_resolution)
from largekernel.optim import param_groups

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


pytestmark = pytest.mark.usefixtures("one_thread")
LAYERS = {(1, "ck"): CKConv1d, (2, "ck"): CKConv2d, (3, "ck"): CKConv3d,
          (1, "flex"): FlexConv1d, (2, "flex"): FlexConv2d, (3, "flex"): FlexConv3d}


def _reference(layer, x, kernel):
    """torch's own conv with the layer's kernel and padding written out from the stated conventions."""
    nd = x.dim() - 2
    k = kernel.shape[2:]
    if layer.causal:
        pads = [(k[0] - 1, 0)]
    elif layer.padding == "same":
        pads = [((kk - 1) // 2, kk // 2) for kk in k]
    elif layer.padding == "valid":
        pads = [(0, 0)] * nd
    else:
        pads = [(p, p) for p in layer.padding]
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    x = F.pad(x, [p for lo_hi in reversed(pads) for p in lo_hi], mode=mode)
    groups = 1 if layer.separable else layer.groups
    return TORCH_CONV[nd](x, kernel, layer.bias, stride=layer.stride, groups=groups)


CASES = [
    # (nd, family, in, out, spatial, kwargs)
    (1, "ck", 3, 4, (20,), {}),
    (1, "ck", 4, 4, (20,), {"groups": 4, "kernel_net": "mlp"}),
    (1, "flex", 3, 5, (30,), {"causal": True}),
    (1, "flex", 4, 6, (25,), {"causal": True, "separable": True, "stride": 2}),
    (2, "ck", 2, 4, (9, 8), {"kernel_net": "magnet", "groups": 2}),
    (2, "flex", 4, 4, (12, 12), {"kernel_size": 9}),
    (2, "flex", 3, 6, (11, 10), {"kernel_size": (7, 6), "dynamic_cropping": False, "padding": "valid"}),
    (2, "flex", 4, 4, (10, 10), {"kernel_size": 8, "groups": 4, "stride": 2, "mask_init": 0.4}),
    (2, "ck", 3, 2, (8, 8), {"kernel_size": 5, "padding": 1, "kernel_net": "fourier", "bias": False}),
    (2, "flex", 3, 5, (10, 10), {"separable": True, "kernel_net": "gabor"}),
    (3, "flex", 2, 2, (6, 5, 4), {"mask_init": 0.5}),
    (3, "ck", 2, 3, (5, 5, 5), {"kernel_size": 3}),
    (2, "ck", 2, 2, (9, 9), {"kernel_size": 5, "padding_mode": "reflect"}),
    (2, "flex", 2, 2, (10, 10), {"kernel_size": 6, "padding_mode": "circular", "mask_init": 1.0}),
    (1, "ck", 2, 2, (16,), {"causal": True, "padding_mode": "replicate"}),
]


@pytest.mark.parametrize("backend", ["direct", "fft"])
@pytest.mark.parametrize("nd,family,cin,cout,spatial,kwargs", CASES)
def test_forward_matches_torch_conv_on_construct_kernel_and_bake(nd, family, cin, cout, spatial, kwargs, backend,
                                                                 device):
    layer = LAYERS[nd, family](cin, cout, backend=backend, **kwargs).to(device, torch.float64)
    x = torch.randn(2, cin, *spatial, dtype=torch.float64, device=device)
    y = layer(x)
    kernel = layer.construct_kernel()
    groups = 1 if layer.separable else layer.groups
    assert kernel.shape[:2] == (cout, cin // groups)
    assert tuple(kernel.shape[2:]) == layer.effective_kernel_size()
    torch.testing.assert_close(y, _reference(layer, x, kernel), rtol=1e-9, atol=1e-9)
    baked = layer.bake()
    torch.testing.assert_close(baked(x), _reference(layer, x, kernel), rtol=1e-5, atol=1e-5)
    # The baked module holds plain torch convolutions only.
    assert any(isinstance(m, nn.modules.conv._ConvNd) for m in baked.modules())


def test_defaults_just_work_and_size_the_kernel_from_the_input():
    layer = FlexConv2d(4, 4)
    assert layer.kernel_size is None
    y = layer(torch.randn(2, 4, 16, 16))
    assert y.shape == (2, 4, 16, 16)
    assert layer.kernel_size == (17, 17) and layer.base_kernel_size == (17, 17)
    seq = CKConv1d(1, 8, causal=True)
    assert seq(torch.randn(3, 1, 40)).shape == (3, 8, 40)
    assert seq.kernel_size == (40,)
    # The grid is fixed once set: a later input of another size does not resize the kernel.
    seq(torch.randn(3, 1, 50))
    assert seq.kernel_size == (40,)
    assert "kernel_size=(40,)" in repr(seq) and "causal=True" in repr(seq)


def test_state_dict_round_trip_restores_lazy_kernel_size():
    torch.manual_seed(0)
    layer = FlexConv2d(3, 3)
    x = torch.randn(1, 3, 10, 10)
    y = layer(x)
    fresh = FlexConv2d(3, 3)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.kernel_size == (11, 11)
    torch.testing.assert_close(fresh(x), y)


@pytest.mark.parametrize("cls", [CKConv1d, FlexConv1d])
@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_causal_layers_never_see_the_future(cls, backend, device):
    torch.manual_seed(0)
    layer = cls(3, 4, causal=True, backend=backend, device=device, **({"mask_init": 0.6} if cls is FlexConv1d else {}))
    x = torch.randn(2, 3, 64, device=device)
    y = layer(x)
    for t0 in (0, 17, 40, 63):
        x2 = x.clone()
        x2[..., t0:] += torch.randn_like(x2[..., t0:]) * 10
        y2 = layer(x2)
        torch.testing.assert_close(y2[..., :t0], y[..., :t0], rtol=0, atol=1e-5)
        assert (y2[..., t0:] - y[..., t0:]).abs().max() > 1e-3  # and the present does matter


def _kept_by_formula(k, mean, width, threshold, causal):
    """Indices of the K-point [-1, 1] grid that FlexConv's cropping keeps, written from the stated rule."""
    x = np.linspace(-1.0, 1.0, k)
    a = abs(width) * math.sqrt(-2 * math.log(threshold))
    if causal:
        keep = np.nonzero(x >= mean - a - 1e-9)[0]
        return keep if keep.size >= 2 else np.arange(k - 2, k)
    reach = max(abs(mean - a), abs(mean + a))
    keep = np.nonzero(np.abs(x) <= reach + 1e-9)[0]
    minimum = 3 if k % 2 else 2
    if keep.size < minimum:
        keep = np.arange((k - minimum) // 2, (k + minimum) // 2)
    return keep


@pytest.mark.parametrize("k", [33, 32, 9])
@pytest.mark.parametrize("mean,width,threshold", [(0.0, 0.075, 0.1), (0.2, 0.1, 0.1), (-0.3, 0.05, 0.5),
                                                  (0.0, 0.01, 0.1), (0.0, 2.0, 0.1), (0.5, -0.2, 0.3)])
def test_mask_crops_exactly_where_stated(k, mean, width, threshold):
    layer = FlexConv2d(2, 2, kernel_size=k, mask_threshold=threshold).double()
    full = FlexConv2d(2, 2, kernel_size=k, mask_threshold=threshold, dynamic_cropping=False).double()
    full.load_state_dict(layer.state_dict())
    with torch.no_grad():
        for m in (layer, full):
            m.mask_mean.copy_(torch.tensor([mean, -mean]))
            m.mask_width.copy_(torch.tensor([width, width / 2]))
    rows = _kept_by_formula(k, mean, width, threshold, causal=False)
    cols = _kept_by_formula(k, -mean, width / 2, threshold, causal=False)
    assert layer.effective_kernel_size() == (len(rows), len(cols))
    # The cropped kernel is the full (masked) kernel restricted to the kept samples.
    torch.testing.assert_close(layer.construct_kernel(), full.construct_kernel()[:, :, rows][:, :, :, cols])
    # Everything cropped away lies where the mask is below the threshold.
    x = np.linspace(-1, 1, k)
    mask_rows = np.exp(-0.5 * ((x - mean) / width) ** 2)
    dropped = np.setdiff1d(np.arange(k), rows)
    assert (mask_rows[dropped] < threshold + 1e-12).all()


@given(k=st.integers(1, 80), mean=st.floats(-1.5, 1.5), width=st.floats(1e-3, 3.0), negative=st.booleans(),
       threshold=st.floats(0.01, 0.99), causal=st.booleans())
def test_crop_formula_property(k, mean, width, negative, threshold, causal):
    layer = FlexConv1d(1, 1, kernel_size=k, causal=causal, mask_threshold=threshold,
                       kernel_net_kwargs={"hidden_channels": 2, "num_layers": 1})
    width = -width if negative else width  # the mask uses width^2: its sign is irrelevant
    with torch.no_grad():
        layer.mask_mean.fill_(mean)
        layer.mask_width.fill_(width)
    expected = k if k <= 2 else len(_kept_by_formula(k, mean, width, threshold, causal))
    assert layer.effective_kernel_size() == (expected,)
    x = torch.randn(1, 1, 7)
    assert layer(x).shape == (1, 1, 7)


@pytest.mark.parametrize("k,mean,width", [(40, 1.0, 0.075), (4096, 1.0, 0.25 / math.sqrt(2 * math.log(10))),
                                          (50, 0.3, 0.2), (10, 1.0, 0.001), (64, 1.0, 5.0)])
def test_causal_crop_keeps_the_recent_end(k, mean, width):
    layer = FlexConv1d(1, 1, kernel_size=k, causal=True)
    with torch.no_grad():
        layer.mask_mean.fill_(mean)
        layer.mask_width.fill_(width)
    keep = _kept_by_formula(k, mean, width, 0.1, causal=True)
    assert keep[-1] == k - 1
    assert layer.effective_kernel_size() == (len(keep),)
    if k == 4096:
        assert len(keep) == 4096 // 8  # a mask covering the last eighth of the grid


def test_mask_is_the_anisotropic_gaussian_times_the_kernel_net(device):
    layer = FlexConv2d(2, 3, kernel_size=(7, 5), dynamic_cropping=False).to(device, torch.float64)
    with torch.no_grad():
        layer.mask_mean.copy_(torch.tensor([0.2, -0.1]))
        layer.mask_width.copy_(torch.tensor([0.3, 0.6]))
    ys = torch.linspace(-1, 1, 7, dtype=torch.float64, device=device)
    xs = torch.linspace(-1, 1, 5, dtype=torch.float64, device=device)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1)
    mask = torch.exp(-0.5 * (((coords[..., 0] - 0.2) / 0.3) ** 2 + ((coords[..., 1] + 0.1) / 0.6) ** 2))
    expected = (layer.kernel_net(coords) * mask).view(3, 2, 7, 5)
    torch.testing.assert_close(layer.construct_kernel(), expected)


def test_default_mask_width_is_the_reference_value_widened_on_coarse_grids():
    assert FlexConv2d(2, 2, kernel_size=33).mask_width.tolist() == pytest.approx([0.075, 0.075])
    assert FlexConv2d(2, 2, kernel_size=(9, 65)).mask_width.tolist() == pytest.approx([2.4 / 8, 0.075])
    lazy = FlexConv2d(2, 2)
    lazy(torch.randn(1, 2, 8, 8))  # 9-point grid, known only now
    assert lazy.mask_width.tolist() == pytest.approx([0.3, 0.3])
    assert lazy.effective_kernel_size() == (5, 5)  # |x| <= 0.3 * sqrt(2 ln 10) = 0.64 on a 0.25 step
    assert FlexConv1d(1, 1, kernel_size=40, causal=True, mask_init=0.2).mask_width.tolist() == pytest.approx([0.2])


@pytest.mark.parametrize("make, nd", [(lambda: FlexConv2d(4, 4, groups=4), 2),
                                      (lambda: FlexConv1d(3, 2, causal=True), 1),
                                      (lambda: CKConv2d(2, 3), 2)], ids=["flexconv2d", "flexconv1d-causal", "ckconv2d"])
def test_a_lazy_layer_first_called_compiled_initialises_as_eager(make, nd):
    # The first input sets the grid and the initialisation scaled by the applied samples (after cropping),
    # inside the recorded graph here: the same parameters and output as a twin's first eager call.
    torch.manual_seed(0)
    compiled_layer = make()
    torch.manual_seed(0)
    eager_layer = make()
    x = torch.randn(2, compiled_layer.in_channels, *([13] * nd))
    torch.compiler.reset()
    got = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)(x)
    expected = eager_layer(x)
    assert compiled_layer.kernel_size == eager_layer.kernel_size
    for (name, p), q in zip(compiled_layer.named_parameters(), eager_layer.parameters(), strict=True):
        assert torch.equal(p, q), name
    torch.testing.assert_close(got, expected)


# Under torch.compile a cropping FlexConv whose kernel net gives 2**15 values or more on its whole grid (samples x
# kernel channels) runs eagerly as one operator (crop included): the compiled output and gradients are eager's bit
# for bit, and torch's conv with the cropped kernel (the written-out reference) agrees.
COMPILED = {
    "1d-causal": (lambda: FlexConv1d(16, 16, 129, causal=True, mask_init=0.05), (2, 16, 140), "inductor"),
    "2d-dense": (lambda: FlexConv2d(8, 16, 17, mask_init=0.15), (2, 8, 14, 14), "inductor"),
    "2d-padding-stride": (lambda: FlexConv2d(12, 12, 17, padding=2, stride=2, mask_init=0.2), (2, 12, 16, 15),
                          "aot_eager"),
    "2d-separable": (lambda: FlexConv2d(120, 8, 17, separable=True, mask_init=0.2), (2, 120, 12, 12), "aot_eager"),
    "3d-valid": (lambda: FlexConv3d(16, 16, (16, 3, 3), padding="valid", mask_init=0.3), (1, 16, 18, 5, 5),
                 "aot_eager"),
    "unbatched": (lambda: FlexConv2d(12, 12, 17, mask_init=0.2), (12, 12, 12), "aot_eager"),
}


@pytest.mark.parametrize("name,channels_last", [(n, False) for n in COMPILED] + [("2d-dense", True),
                                                                                   ("2d-separable", True)])
def test_a_compiled_cropping_layer_equals_eager_bit_for_bit(name, channels_last):
    make, shape, backend = COMPILED[name]
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grid = layer.kernel_size
    assert layer.effective_kernel_size() != grid  # the crop is in effect
    params = list(layer.parameters())
    torch.compiler.reset()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    for _ in range(2):  # the second call runs the compiled code as it is: nothing recorded
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *params])
    expected = layer(x)
    assert torch.equal(out, expected) and out.stride() == expected.stride()
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *params])
    assert all(torch.equal(got, want) for got, want in zip(grads, expected_grads, strict=True))
    assert grads[0].stride() == expected_grads[0].stride()  # the input's layout kept
    with torch.no_grad():
        kernel = layer.construct_kernel()  # cropped
        if layer.padding != "same":  # explicit padding is the whole grid's: the crop centred in zeros
            kernel = F.pad(kernel, [p for g, k in zip(reversed(grid), reversed(kernel.shape[2:]))
                                    for p in ((g - k) // 2,) * 2])
        batched = x if x.dim() == len(grid) + 2 else x.unsqueeze(0)
        reference = _reference(layer, batched, kernel).reshape(expected.shape)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


# A cropping layer under that size is traced with its whole grid (zero outside the crop); where the whole grid's
# convolution is large, one operator crops the kernel and convolves eagerly, so that the compiled step convolves
# with the crop as eager does (docs/deploy.md): no convolution of the whole grid in the graphs handed to the
# compiler (nor a spectral product: the FFT path's operator), output and gradients eager's and torch's conv's.
TRACED_CROPPING = {
    "2d-depthwise": (lambda: FlexConv2d(16, 16, 31, groups=16, mask_init=0.15), (4, 16, 32, 32), "inductor"),
    "1d-causal": (lambda: FlexConv1d(8, 8, 255, causal=True, groups=8, mask_init=0.05), (2, 8, 4096),
                  "aot_eager"),
    "2d-padding-stride": (lambda: FlexConv2d(12, 12, 31, padding=2, stride=2, groups=12, mask_init=0.2),
                          (4, 12, 32, 31), "aot_eager"),
    "2d-separable": (lambda: FlexConv2d(16, 24, 31, separable=True, mask_init=0.2), (2, 16, 32, 32),
                     "aot_eager"),
    "3d-dense": (lambda: FlexConv3d(4, 6, 9, mask_init=0.2), (2, 4, 16, 16, 16), "aot_eager"),
    "unbatched": (lambda: FlexConv2d(12, 12, 31, groups=12, mask_init=0.2), (12, 40, 40), "aot_eager"),
}


@pytest.mark.parametrize("name,channels_last", [(n, False) for n in TRACED_CROPPING] + [("2d-separable", True)])
def test_a_compiled_cropping_layer_traced_whole_convolves_with_the_crop(name, channels_last):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.compile_fx import compile_fx

    make, shape, backend = TRACED_CROPPING[name]
    torch.manual_seed(0)
    layer = make()
    grid = layer.kernel_size
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert all(c < g for c, g in zip(layer.effective_kernel_size(), grid))  # the crop is in effect
    whole = []  # (operator, kernel shape) of the convolutions of the whole grid the compiler is handed

    def inspect(graph_module):
        for node in graph_module.graph.nodes:
            target = str(node.target)
            if node.op == "call_function" and "spectral_product" in target:
                whole.append(target)
            if node.op == "call_function" and "convolution" in target:
                weight = node.args[1].meta["val"].shape
                if tuple(weight[2:]) == grid:
                    whole.append((target, tuple(weight)))

    def record(graph_module, example_inputs):
        inspect(graph_module)
        return make_boxed_func(graph_module.forward)

    def record_inductor(graph_module, example_inputs):
        inspect(graph_module)
        return compile_fx(graph_module, example_inputs)

    params = [x, *layer.parameters()]
    torch.compiler.reset()
    compiler = aot_autograd(fw_compiler=record, bw_compiler=record) if backend == "aot_eager" else record_inductor
    compiled = torch.compile(layer, backend=compiler, fullgraph=True)
    for _ in range(2):
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), params)
    assert not whole, whole
    expected = layer(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for got, want in zip((out, *grads), (expected, *expected_grads), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert out.stride() == expected.stride() and grads[0].stride() == expected_grads[0].stride()
    with torch.no_grad():
        kernel = layer.construct_kernel()  # cropped
        if layer.padding != "same":  # explicit padding is the whole grid's: the crop centred in zeros
            kernel = F.pad(kernel, [p for g, k in zip(reversed(grid), reversed(kernel.shape[2:]))
                                    for p in ((g - k) // 2,) * 2])
        batched = x if x.dim() == len(grid) + 2 else x.unsqueeze(0)
        reference = _reference(layer, batched, kernel).reshape(expected.shape)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_compiled_cropping_layer_retain_graph_and_two_layers_one_code():
    # A second backward through the same graph (retain_graph) runs the forward again: the same gradients. Two
    # layers through one compiled function each get their own result (the code is guarded per layer). Inference
    # (no_grad) gives eager's output too.
    torch.manual_seed(0)
    layer = FlexConv2d(12, 12, 17, mask_init=0.3)
    other = copy.deepcopy(layer)
    with torch.no_grad():
        other.mask_width.fill_(0.15)
        other.bias.fill_(1.0)
    x = torch.randn(2, 12, 12, 12, requires_grad=True)
    torch.compiler.reset()
    apply = torch.compile(lambda module, t: module(t), backend="aot_eager", fullgraph=True)
    loss = apply(layer, x).square().sum()
    first = torch.autograd.grad(loss, [x, *layer.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *layer.parameters()])
    expected = torch.autograd.grad(layer(x).square().sum(), [x, *layer.parameters()])
    for a, b, c in zip(first, second, expected, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    assert torch.equal(apply(other, x), other(x)) and not torch.equal(other(x), layer(x))
    assert torch.equal(apply(layer, x), layer(x))
    with torch.no_grad():  # inference: the operator runs the layer without recording anything
        assert torch.equal(apply(layer.eval(), x), layer(x))


def test_compiled_cropping_layer_under_the_users_saved_tensor_hooks():
    # The user's saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks; here a pair that saves copies, as
    # offloading hooks do) around a compiled step: the same output and gradients as eager under the same hooks,
    # and the hooks see every tensor eager saves (by shape and dtype), the operator's recorded graph's included;
    # and checkpointing the compiled layer.
    torch.manual_seed(0)
    layer = FlexConv2d(8, 16, 17, mask_init=0.15)
    x = torch.randn(2, 8, 14, 14, requires_grad=True)
    params = [x, *layer.parameters()]

    def step(fn):
        seen = collections.Counter()

        def pack(t):
            seen[(tuple(t.shape), t.dtype)] += 1
            return t.clone()

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(x)
            grads = torch.autograd.grad(out.square().sum(), params)
        return out, grads, seen

    torch.compiler.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    step(compiled)
    out, grads, seen = step(compiled)
    expected, expected_grads, eager_seen = step(layer)
    assert torch.equal(out, expected)
    assert all(torch.equal(got, want) for got, want in zip(grads, expected_grads, strict=True))
    assert sum(eager_seen.values()) > 10 and not eager_seen - seen, eager_seen - seen
    # torch.utils.checkpoint (non-reentrant) works by such hooks: it drops what is saved and recomputes it
    checkpointed = checkpoint(compiled, x, use_reentrant=False)
    grads = torch.autograd.grad(checkpointed.square().sum(), params)
    assert all(torch.equal(got, want) for got, want in zip(grads, expected_grads, strict=True))


def test_compiled_cropping_layer_where_saved_tensor_hooks_are_disabled():
    # torch.autograd.graph.disable_saved_tensors_hooks (set by torch.func.vmap, say) forbids setting hooks; eager
    # runs under it, and so must the compiled step: eager's output and gradients bit for bit.
    torch.manual_seed(0)
    layer = FlexConv2d(8, 16, 17, mask_init=0.15)
    x = torch.randn(2, 8, 14, 14, requires_grad=True)
    params = [x, *layer.parameters()]
    torch.compiler.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    compiled(x)
    with torch.autograd.graph.disable_saved_tensors_hooks("no saved-tensor hooks here"):
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), params)
        expected = layer(x)
        expected_grads = torch.autograd.grad(expected.square().sum(), params)
    assert torch.equal(out, expected)
    assert all(torch.equal(got, want) for got, want in zip(grads, expected_grads, strict=True))


def test_compiled_chain_of_cropping_layers_equals_eager():
    # Inside one inductor graph: each operator layer's input is an intermediate of the graph (memory inductor may
    # reuse once the operator has run), which the 2-D layers' recorded backward needs (their convolution saves
    # it). Gradients agree with eager's (not bit for bit: inductor fuses the pointwise steps around the layers).
    torch.manual_seed(0)
    first, second = FlexConv2d(8, 16, 17, mask_init=0.15), FlexConv2d(16, 8, 17, mask_init=0.2)

    def chain(t):
        return second(F.gelu(first(t * 1.5 + 0.1)) * 2).tanh()

    x = torch.randn(2, 8, 14, 14, requires_grad=True)
    params = [x, *first.parameters(), *second.parameters()]
    torch.compiler.reset()
    compiled = torch.compile(chain, fullgraph=True)
    for _ in range(2):
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), params)
    expected = chain(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory read from Linux's /proc")
def test_compiled_forwards_without_a_backward_free_what_they_recorded():
    # The operator keeps each call's eager autograd graph (which saves the padded input, 8 MB here) for the backward;
    # a forward whose backward never runs must free it with the output. Kept, 60 calls would hold 480 MB or more.
    torch.manual_seed(0)
    layer = FlexConv1d(16, 16, 129, mask_init=0.05)
    x = torch.randn(4, 16, 32768, requires_grad=True)
    torch.compiler.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        compiled(x)
    gc.collect()
    before = _resident_bytes()
    for _ in range(60):
        compiled(x).sum()
    gc.collect()
    assert _resident_bytes() - before < 160 * 2**20


def test_gradients_flow_to_mask_parameters_and_gradcheck():
    torch.manual_seed(0)
    layer = FlexConv2d(2, 2, kernel_size=7, mask_init=0.3, kernel_net_kwargs={"hidden_channels": 4}).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert layer.mask_width.grad.abs().min() > 0
    assert layer.mask_mean.grad.abs().min() > 0
    width = layer.mask_width.detach().clone().requires_grad_()
    x.requires_grad_()

    def fn(inp, w):
        return torch.func.functional_call(layer, {"mask_width": w}, (inp,))

    assert torch.autograd.gradcheck(fn, (x, width), fast_mode=True)


def test_causal_gradcheck():
    layer = FlexConv1d(2, 2, kernel_size=12, causal=True, mask_init=0.5,
                       kernel_net_kwargs={"hidden_channels": 4}).double()
    x = torch.randn(1, 2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


def test_collapsed_mask_stays_finite():
    layer = FlexConv2d(2, 2, kernel_size=9)
    with torch.no_grad():
        layer.mask_width.zero_()
    out = layer(torch.randn(1, 2, 9, 9))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(layer.mask_width.grad).all()
    assert torch.isfinite(antialiasing_loss(layer))


def test_effective_size_follows_the_learned_width():
    layer = FlexConv2d(2, 2, kernel_size=33)
    sizes = []
    for w in (0.05, 0.1, 0.2, 0.4, 0.8):
        with torch.no_grad():
            layer.mask_width.fill_(w)
        sizes.append(layer.effective_kernel_size()[0])
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] == 33


def test_mask_parameters_are_marked_for_the_optimizer():
    layer = FlexConv2d(2, 2, kernel_size=5, mask_lr_scale=3.0)
    groups = param_groups(layer, lr=1e-3, weight_decay=0.1)
    mask_group = [g for g in groups if g["kind"] == "mask"]
    assert len(mask_group) == 1 and set(mask_group[0]["names"]) == {"mask_width", "mask_mean"}
    assert mask_group[0]["lr"] == pytest.approx(3e-3) and mask_group[0]["weight_decay"] == 0.0
    fixed = FlexConv2d(2, 2, kernel_size=5, learn_mask_mean=False)
    assert "mask_mean" not in dict(fixed.named_parameters()) and "mask_mean" in dict(fixed.named_buffers())


def test_chang_initialisation_scales_the_output_layer():
    torch.manual_seed(3)
    plain = CKConv2d(3, 4, kernel_size=5, chang_init=False)
    torch.manual_seed(3)
    scaled = CKConv2d(3, 4, kernel_size=5)
    ratio = scaled.kernel_net.output.weight / plain.kernel_net.output.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(1 / (3 * 25))))


class _Smooth(nn.Module):
    """A known smooth continuous kernel psi(x) = exp(-x^2) cos(3 x), one channel."""

    out_features = 1

    def __init__(self):
        super().__init__()
        self.register_buffer("amplitude", torch.ones(()))  # follows .double() like a real kernel net

    def forward(self, coords):
        x = coords[..., 0]
        return (self.amplitude * torch.exp(-x ** 2) * torch.cos(3 * x))[None]


def test_cross_resolution_sampling_converges_to_the_continuous_convolution():
    # Continuous: (psi * f)(t) = int psi(u) f(t + u) du. A layer built on a K0-point grid (spacing h0 = 2/(K0-1))
    # and resampled on a finer grid approximates h0^-1 times that integral, whatever the resolution.
    def f(t):
        return torch.sin(2 * t) + 0.5 * torch.cos(5 * t + 1)

    u = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    t_star = 0.5
    integral = torch.trapezoid(_Smooth()(u[:, None])[0] * f(t_star + u), u).item()

    k0, train_len = 9, 32  # 32 input samples with the kernel grid's spacing 2 / (k0 - 1) = 0.25
    layer = CKConv1d(1, 1, kernel_size=k0, kernel_net=_Smooth(), bias=False).double()
    model = nn.Sequential(layer)
    errors = []
    for scale in (1, 2, 4, 8, 16):
        size = train_len * scale
        set_resolution(model, size, train_len)
        assert layer.kernel_size == ((k0 - 1) * scale + 1,)
        h = 0.25 / scale
        t = -4 + h * torch.arange(size, dtype=torch.float64)
        y = layer(f(t)[None, None])[0, 0]
        idx = int(round((t_star + 4) / h))
        errors.append(abs(y[idx].item() * 0.25 - integral))
    # A Riemann sum of a kernel that does not vanish at +-1 converges at first order: halving h halves the error.
    assert all(0.4 < b / a < 0.6 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 5e-3
    set_resolution(model, train_len, train_len)
    assert layer.kernel_size == (k0,) and layer.sampling_rate_norm() == 1.0


def test_flexconv_trained_at_16_runs_at_32_with_the_same_physical_extent():
    torch.manual_seed(0)
    layer = FlexConv2d(2, 2, mask_init=0.3)
    layer(torch.randn(1, 2, 16, 16))
    small = layer.effective_kernel_size()
    set_resolution(layer, 32, 16)
    assert layer.kernel_size == (33, 33)
    y = layer(torch.randn(1, 2, 32, 32))
    assert y.shape == (1, 2, 32, 32)
    big = layer.effective_kernel_size()
    assert all(abs((b - 1) - 2 * (s - 1)) <= 2 for s, b in zip(small, big))
    assert layer.sampling_rate_norm() == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"resolution \(24, 24\) does not fit a kernel of \(17, 17\).*22.3333"):
        set_resolution(layer, 24, 18)
    # All or nothing: a model whose second layer does not fit keeps every layer's grid.
    model = nn.Sequential(CKConv2d(2, 2, kernel_size=9), CKConv2d(2, 2, kernel_size=10))
    with pytest.raises(ValueError, match="does not fit"):
        set_resolution(model, 24, 16)  # 9 -> 13 fits, 10 -> 14.5 does not
    assert [l.kernel_size for l in model] == [(9, 9), (10, 10)]


def _band_limit(layer, factor):
    with torch.no_grad():
        for f in layer.kernel_net.filters:
            f.linear.weight.mul_(factor)
            f.gamma.mul_(factor)


@pytest.mark.parametrize("method", ["together", "summed"])
def test_antialiasing_regulariser(method):
    torch.manual_seed(0)
    layer = FlexConv2d(2, 2, kernel_size=33, mask_init=0.5)
    model = nn.Sequential(layer, nn.ReLU(), CKConv2d(2, 2, kernel_size=5))  # SIREN layer: no analytic bound
    nyquist = (33 - 1) / 4

    def formula(target):
        freqs = torch.stack([((f.linear.weight.abs() + 2.0 * f.gamma.abs()) / (2 * math.pi)).max()
                             for f in layer.kernel_net.filters])
        mask = 2.0 / (2 * math.pi * layer.mask_width.abs().min()) if target == "gabor+mask" else 0.0
        n = len(freqs)
        if method == "together":
            return F.relu(freqs + mask / n - nyquist / n).square().sum()
        return F.relu(freqs.sum() + mask - nyquist).square()

    _band_limit(layer, 0.01)  # far below Nyquist
    for target in ("gabor", "gabor+mask"):
        assert antialiasing_loss(model, target=target, method=method).item() == 0.0
    _band_limit(layer, 300.0)  # far above
    for target in ("gabor", "gabor+mask"):
        loss = antialiasing_loss(model, target=target, method=method)
        assert loss.item() > 0
        torch.testing.assert_close(loss, formula(target))
    loss = antialiasing_loss(model, target="gabor+mask", method=method)
    loss.backward()
    assert layer.kernel_net.filters[0].gamma.grad.abs().sum() > 0
    # A narrow mask alone pushes "gabor+mask" above Nyquist but not "gabor".
    _band_limit(layer, 1 / 300.0)
    with torch.no_grad():
        layer.mask_width.fill_(0.005)
    assert antialiasing_loss(model, target="gabor", method=method).item() == 0.0
    assert antialiasing_loss(model, target="gabor+mask", method=method).item() > 0


def test_layer_frequency_bound_covers_the_sampled_kernel_spectrum():
    # Sample a FlexConv's masked continuous kernel densely; its spectrum lies under the layer's analytic bound.
    torch.manual_seed(0)
    layer = FlexConv1d(1, 2, kernel_size=33, dynamic_cropping=False, mask_init=0.3,
                       kernel_net_kwargs={"hidden_channels": 8}).double()
    n = 2 ** 13 + 1
    layer.resample(n)
    kernel = layer.construct_kernel()[:, 0].detach()  # (2, n): the mask decays to ~0 at +-1
    power = torch.fft.rfft(kernel, dim=-1).abs().square()
    freq = torch.fft.rfftfreq(n, d=2 / (n - 1))
    bound = layer.frequency_bound("gabor+mask").item()
    freqs, mask = layer.frequency_terms("gabor+mask")
    torch.testing.assert_close(layer.frequency_bound("gabor+mask"), freqs.sum() + 2 / (2 * math.pi * 0.3))
    assert layer.frequency_bound("gabor").item() == pytest.approx(freqs.sum().item())
    assert bound < freq[-1]
    assert (power[:, freq > bound].sum() / power.sum()).item() < 1e-4
    assert layer.nyquist_frequency() == (n - 1) / 4
    with pytest.raises(TypeError, match="only MAGNet / Gabor / Fourier .* SIRENKernel"):
        CKConv1d(1, 1, kernel_size=5).frequency_bound()


def test_norm_and_extent_regularisers():
    model = nn.Sequential(FlexConv2d(2, 3, kernel_size=7), CKConv2d(3, 3, kernel_size=5, bias=False))
    a, b = model
    expected = (a.construct_kernel().abs().pow(2).sum().sqrt() + a.bias.abs().pow(2).sum().sqrt()
                + b.construct_kernel().abs().pow(2).sum().sqrt())
    torch.testing.assert_close(kernel_norm_loss(model, p=2), expected)
    torch.testing.assert_close(kernel_norm_loss(model, p=1),
                               a.construct_kernel().abs().sum() + a.bias.abs().sum() + b.construct_kernel().abs().sum())
    torch.testing.assert_close(mask_extent_loss(model), a.mask_width.norm())
    assert list(continuous_layers(model)) == [a, b]
    assert mask_extent_loss(nn.Linear(2, 2)).item() == 0.0


def test_bad_input_is_rejected_with_clear_messages():
    with pytest.raises(ValueError, match=r"mask_threshold must be in the open interval \(0, 1\), got 1.0"):
        FlexConv2d(2, 2, mask_threshold=1.0)
    with pytest.raises(ValueError, match="mask_threshold .* got 0"):
        FlexConv2d(2, 2, mask_threshold=0)
    with pytest.raises(ValueError, match=r"mask_init .* must be > 0 or None, got -0.1"):
        FlexConv2d(2, 2, mask_init=-0.1)
    with pytest.raises(ValueError, match="causal=True is defined for 1-D sequences only"):
        FlexConv2d(2, 2, causal=True)
    with pytest.raises(ValueError, match=r"groups must divide in_channels=3 and out_channels=4, got groups=2"):
        CKConv2d(3, 4, groups=2)
    with pytest.raises(ValueError, match="groups must be 1, got 2"):
        CKConv1d(2, 2, groups=2, separable=True)
    with pytest.raises(ValueError, match=r"padding must be one of \('same', 'valid'\), got 'full'"):
        CKConv1d(2, 2, padding="full")
    with pytest.raises(ValueError, match="padding must stay 'same'"):
        CKConv1d(2, 2, causal=True, padding=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        CKConv1d(2, 2, backend="cuda")
    with pytest.raises(ValueError, match=r"kernel_size must be positive, got \(3, 0\)"):
        CKConv2d(2, 2, kernel_size=(3, 0))
    with pytest.raises(ValueError, match="kernel_net must be one of"):
        CKConv2d(2, 2, kernel_net="wavelet")
    with pytest.raises(ValueError, match="must produce 4 values per position, its out_features is 1"):
        CKConv2d(2, 2, kernel_net=_Smooth())
    layer = FlexConv2d(2, 2)
    with pytest.raises(RuntimeError, match="kernel_size=None"):
        layer.construct_kernel()
    with pytest.raises(ValueError, match=r"expects 2 input channels, got input of shape \(1, 3, 8, 8\)"):
        layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects 2 input channels, got input of shape \(1, 2, 8\)"):
        layer(torch.randn(1, 2, 8))
    with pytest.raises(RuntimeError, match="no kernel size yet"):
        set_resolution(layer, 32, 16)
    layer(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="size must be positive, got 0"):
        set_resolution(layer, 0, 8)
    with pytest.raises(ValueError, match="kernel_size must be positive, got -3"):
        layer.resample(-3)
    with pytest.raises(ValueError, match="target must be 'gabor' or 'gabor\\+mask'"):
        antialiasing_loss(layer, target="sines")


# ----------------------------------------------------------------------------- inference kernel cache


def _fresh_kernel(layer):
    """The kernel sampled anew from the kernel net (with autograd on, the inference cache is bypassed): what a cached
    kernel must equal."""
    with torch.enable_grad():
        return layer.construct_kernel().detach()


def _counting(layer):
    """The kernel net's calls, counted by its ``forward`` (not a hook: a hook inside a layer turns the reuse off, so
    that it runs at every call)."""
    calls = []
    forward = layer.kernel_net.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    layer.kernel_net.forward = counted
    return calls


def test_kernel_is_sampled_once_without_autograd_and_again_after_any_change():
    torch.manual_seed(0)
    layer = FlexConv2d(3, 4, 9).eval()
    x = torch.randn(2, 3, 12, 12)
    calls = _counting(layer)
    with torch.no_grad():
        y1 = layer(x)
        y2 = layer(x)
    assert len(calls) == 1 and torch.equal(y1, y2)
    with torch.no_grad():
        torch.testing.assert_close(y1, _reference(layer, x, _fresh_kernel(layer)))
    # an in-place parameter update (an optimizer step) invalidates it
    with torch.no_grad():
        layer.mask_width.mul_(0.5)
        y3 = layer(x)
        torch.testing.assert_close(y3, _reference(layer, x, _fresh_kernel(layer)))
    assert not torch.equal(y3, y1)
    # so do a loaded state dict, a new resolution and a new mask threshold
    other = FlexConv2d(3, 4, 9)
    with torch.no_grad():
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other.eval()(x))
        layer.resample(17)
        assert layer(x).shape == (2, 4, 12, 12)
        torch.testing.assert_close(layer(x), _reference(layer, x, _fresh_kernel(layer)))
        layer.mask_threshold = 0.5
        torch.testing.assert_close(layer(x), _reference(layer, x, _fresh_kernel(layer)))
    # with autograd the kernel is sampled at every call and gradients reach the kernel net
    before = len(calls)
    layer.train()
    layer(x).sum().backward()
    layer(x).sum().backward()
    assert len(calls) == before + 2
    assert all(p.grad is not None for p in layer.kernel_net.parameters())


@pytest.mark.parametrize("groups", ["dense", "depthwise"])
def test_initial_output_scale_does_not_grow_with_the_input_channels(groups):
    # Chang et al.'s init divides the kernel by sqrt(fan_in): the output std must not follow sqrt(in_channels).
    stds = []
    for channels in (8, 512):
        torch.manual_seed(0)
        layer = FlexConv2d(channels, 8 if groups == "dense" else channels, kernel_size=7,
                           groups=1 if groups == "dense" else channels)
        with torch.no_grad():
            stds.append(layer(torch.randn(2, channels, 12, 12)).std().item())
    assert 0.5 < stds[1] / stds[0] < 2.0, stds


def test_state_dict_holds_only_tensors_and_loads_the_older_dict_form(tmp_path):
    from safetensors.torch import load_model, save_model

    layer = FlexConv2d(2, 3, kernel_size=None)
    layer(torch.randn(1, 2, 8, 10))
    layer.resample((11, 13))
    state = layer.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_model(layer, str(tmp_path / "layer.safetensors"))
    fresh = FlexConv2d(2, 3, kernel_size=None)
    load_model(fresh, str(tmp_path / "layer.safetensors"))
    assert fresh.kernel_size == (11, 13) and fresh.base_kernel_size == (9, 11)
    x = torch.randn(1, 2, 8, 10)
    torch.testing.assert_close(fresh(x), layer(x))
    # Checkpoints written before the grid sizes became a tensor hold a dict.
    older = {**state, "_extra_state": {"kernel_size": [11, 13], "base_kernel_size": [9, 11]}}
    again = FlexConv2d(2, 3, kernel_size=None)
    again.load_state_dict(older)
    assert again.kernel_size == (11, 13) and again.base_kernel_size == (9, 11)


_HALF_LAYERS = {
    "CKConv1d-siren": lambda: CKConv1d(4, 4, 1023),
    "CKConv1d-mlp": lambda: CKConv1d(4, 4, 1023, kernel_net="mlp"),
    "FlexConv1d-magnet": lambda: FlexConv1d(4, 4, 1023, mask_init=1.0),
    "FlexConv1d-gabor": lambda: FlexConv1d(4, 4, 1023, kernel_net="gabor", mask_init=1.0),
    "FlexConv1d-fourier-separable": lambda: FlexConv1d(4, 4, 1023, kernel_net="fourier", mask_init=1.0,
                                                       separable=True),
    "FlexConv2d-magnet": lambda: FlexConv2d(4, 4, 63, mask_init=1.0),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(_HALF_LAYERS))
def test_half_precision_layer_within_twice_torchs_error(name, dtype):
    """A layer in float16 / bfloat16 (``.to(dtype)``): its output, against the float64 layer with the same values,
    within twice the error of torch's own convolution of that float64 kernel in ``dtype``; gradients reach every
    parameter in ``dtype``. Before, the kernel was sampled in ``dtype``: bfloat16 holds 513 distinct points of a
    1023-point grid, and SIREN's ``sin(omega_0 x)`` multiplied the rounding (errors 2-3x torch's, CKConv's SIREN
    20-25x)."""
    torch.manual_seed(0)
    layer = _HALF_LAYERS[name]().to(dtype)
    exact = copy.deepcopy(layer).double()
    x = torch.randn(2, 4, *([1023] if "1d" in name else [64, 64])).to(dtype)
    expected = exact(x.double()).detach()
    kernel = exact.construct_kernel().detach()
    conv = F.conv1d if kernel.dim() == 3 else F.conv2d
    torchs = conv(x, kernel.to(dtype), layer.bias, padding="same").double()
    y = layer(x)
    assert y.dtype == dtype
    error, torchs_error = (y.double() - expected).abs().max(), (torchs - expected).abs().max()
    assert error <= 2 * torchs_error, (error, torchs_error)
    y.float().square().mean().backward()
    for n, p in layer.named_parameters():
        assert p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all(), n
