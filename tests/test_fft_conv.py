"""fft_conv against torch's own convolution (the independent reference) for every argument."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from conftest import forced_fft_path, spy_functions

from largekernel.functional import fast_fft_length, fft_conv

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch.nn.functional.convNd, with non-zero padding modes applied the way torch.nn.ConvNd does."""
    nd = w.dim() - 2
    if padding_mode != "zeros":
        k = w.shape[2:]
        d = (dilation,) * nd if isinstance(dilation, int) else dilation
        if padding == "same":
            total = [di * (ki - 1) for di, ki in zip(d, k)]
            pads = [(t // 2, t - t // 2) for t in total]
        elif padding == "valid":
            pads = [(0, 0)] * nd
        else:
            p = (padding,) * nd if isinstance(padding, int) else padding
            pads = [(pi, pi) for pi in p]
        x = F.pad(x, [p for lo_hi in reversed(pads) for p in lo_hi], mode=padding_mode)
        padding = 0
    return TORCH_CONV[nd](x, w, b, stride, padding, dilation, groups)


@st.composite
def conv_configs(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    sizes = [draw(st.integers(2, 9 if nd < 3 else 6)) for _ in range(nd)]
    mode = draw(st.sampled_from(["zeros", "zeros", "circular", "reflect", "replicate"]))
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if kind == "same":
        stride, padding = 1, "same"
        pads = [0] * nd
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
        pads = [0] * nd if kind == "valid" else [draw(st.integers(0, 3)) for _ in range(nd)]
        if mode == "reflect":
            pads = [min(p, n - 1) for p, n in zip(pads, sizes)]
        padding = "valid" if kind == "valid" else (pads[0] if kind == "int" else tuple(pads))
        if kind == "int":
            pads = [pads[0]] * nd
            if mode == "reflect":
                padding = min([padding] + [n - 1 for n in sizes])
                pads = [padding] * nd
    # kernels up to the padded input size (largest allowed), including even sizes
    kernel = []
    for n, p, d in zip(sizes, pads, dilation):
        largest = (n + 2 * p - 1) // d + 1 if kind != "same" else (n - 1) // d + 1
        if mode == "reflect" and kind == "same":
            largest = (2 * (n - 1)) // d + 1 if d > 1 else n
        kernel.append(draw(st.integers(1, max(1, largest))))
    bias = draw(st.booleans())
    return dict(nd=nd, groups=groups, cin=cin, cout=cout, sizes=sizes, kernel=kernel, stride=stride,
                padding=padding, dilation=dilation, padding_mode=mode, bias=bias)


def _tensors(cfg, dtype=torch.float64, batch=2):
    x = torch.randn(batch, cfg["cin"], *cfg["sizes"], dtype=dtype)
    w = torch.randn(cfg["cout"], cfg["cin"] // cfg["groups"], *cfg["kernel"], dtype=dtype)
    b = torch.randn(cfg["cout"], dtype=dtype) if cfg["bias"] else None
    return x, w, b


def _kwargs(cfg):
    return {k: cfg[k] for k in ("stride", "padding", "dilation", "groups", "padding_mode")}


@pytest.fixture(params=["whole", "blocks"])
def blocks(request, monkeypatch):
    """Run a test with the default cache-sized channel blocks (whole tensors at test sizes) and with one group
    per block (functional/_packed.channel_blocks)."""
    from largekernel.functional import _packed

    if request.param == "blocks":
        monkeypatch.setattr(_packed, "BLOCK_BYTES", 1)
        monkeypatch.setattr(_packed, "REAL_BLOCK_BYTES", 1)
    return request.param


@given(conv_configs())
def test_matches_torch_conv_property(cfg):
    x, w, b = _tensors(cfg)
    kw = _kwargs(cfg)
    try:
        expected = reference(x, w, b, **kw)
    except RuntimeError:  # a configuration torch itself rejects (e.g. reflect padding >= size)
        with pytest.raises((ValueError, TypeError)):
            fft_conv(x, w, b, **kw)
        return
    torch.testing.assert_close(fft_conv(x, w, b, **kw), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kw", [
    {},
    {"stride": 2, "padding": 1, "dilation": 2},
    {"padding": "same", "groups": 2},
    {"stride": 3, "padding": 4, "padding_mode": "circular"},
    {"padding": "same", "padding_mode": "reflect", "dilation": 2},
    {"stride": 2, "padding": 2, "padding_mode": "replicate"},
])
def test_matches_torch_conv_examples(nd, kw, blocks):
    groups = kw.get("groups", 1)
    x = torch.randn(2, 4, *([9] * nd), dtype=torch.float64)
    w = torch.randn(6, 4 // groups, *([3] * nd), dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(fft_conv(x, w, b, **kw), reference(x, w, b, **kw))


@pytest.mark.parametrize("kernel", [55, 56, 31, 32])
def test_large_depthwise_same(kernel):
    """The ConvNeXt-like case the length choice is tuned for, odd and even kernels up to the input size."""
    x = torch.randn(2, 3, 56, 40, dtype=torch.float64)
    w = torch.randn(3, 1, kernel, min(kernel, 40), dtype=torch.float64)
    torch.testing.assert_close(fft_conv(x, w, padding="same", groups=3), F.conv2d(x, w, padding="same", groups=3))


def test_channel_multiplier_and_valid_full_size_kernel():
    x = torch.randn(2, 3, 20, dtype=torch.float64)
    w = torch.randn(6, 1, 20, dtype=torch.float64)  # kernel == input: one output
    torch.testing.assert_close(fft_conv(x, w, groups=3), F.conv1d(x, w, groups=3))
    w = torch.randn(6, 1, 30, dtype=torch.float64)  # kernel == padded input
    torch.testing.assert_close(fft_conv(x, w, padding=5, groups=3), F.conv1d(x, w, padding=5, groups=3))


def test_unbatched_input():
    x = torch.randn(4, 10, 11, dtype=torch.float64)
    w = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(fft_conv(x, w, padding=2), F.conv2d(x, w, padding=2))


@pytest.mark.parametrize("kw, cin, cout", [
    ({"stride": 2, "padding": 2, "dilation": 2, "groups": 2}, 4, 4),
    ({"stride": (3, 2), "padding": (1, 3)}, 3, 2),
    ({"groups": 4}, 4, 4),
    ({"groups": 2}, 2, 6),
    ({"stride": 2, "padding": 3, "padding_mode": "circular"}, 2, 2),
    ({"padding": 2, "padding_mode": "reflect", "dilation": 2}, 2, 2),
])
def test_gradcheck_2d(kw, cin, cout, blocks):
    groups = kw.get("groups", 1)
    x = torch.randn(2, cin, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b: fft_conv(x, w, b, **kw), (x, w, b), fast_mode=True)


def test_gradcheck_full_jacobian():
    """Every Jacobian entry (not the fast random projection) for a strided, dilated, grouped call."""
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b: fft_conv(x, w, b, stride=2, padding=(2, 1), dilation=(1, 2), groups=2),
                     (x, w, b))


@pytest.mark.parametrize("nd, kw", [(1, {"padding": "same", "dilation": 3}), (1, {"stride": 3, "padding": 4}),
                                    (3, {"stride": 2, "padding": 1, "groups": 2})])
def test_gradcheck_1d_3d(nd, kw, blocks):
    x = torch.randn(2, 2, *([8] * nd if nd == 1 else [5] * nd), dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // kw.get("groups", 1), *([3] * nd), dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b: fft_conv(x, w, b, **kw), (x, w, b), fast_mode=True)


def test_gradients_match_torch_for_partial_requires_grad():
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    w = torch.randn(4, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    fft_conv(x, w, padding="same", groups=4).square().sum().backward()
    expected = torch.autograd.grad(F.conv2d(x, w, padding="same", groups=4).square().sum(), w)[0]
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_round_trip(dtype):
    x = torch.randn(2, 4, 16, 16)
    w = torch.randn(4, 1, 7, 7) / 7
    y = fft_conv(x.to(dtype), w.to(dtype), padding="same", groups=4)
    assert y.dtype == dtype
    expected = F.conv2d(x.to(dtype).float(), w.to(dtype).float(), padding="same", groups=4)
    torch.testing.assert_close(y.float(), expected, rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 4e-3)
    xg = x.to(dtype).requires_grad_()
    fft_conv(xg, w.to(dtype), padding="same", groups=4).sum().backward()
    assert xg.grad.dtype == dtype


def _smooth(n):
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_fast_fft_length():
    for minimum in [*range(1, 300), 1000, 1025, 4097, 65537, 1_000_001]:
        n = fast_fft_length(minimum)
        assert minimum <= n <= 2 * minimum
        assert _smooth(n) or n <= 2  # never a length with a large prime factor
    assert fast_fft_length(71) == 72
    assert fast_fft_length(86) != 86
    assert fast_fft_length(50, multiple_of=4) % 4 == 0
    assert fast_fft_length(1001, multiple_of=3) % 3 == 0 and fast_fft_length(1001, multiple_of=3) >= 1001
    assert _smooth(fast_fft_length(5000, "cuda"))  # cuFFT: only 2, 3, 5, 7 are fast radices
    with pytest.raises(ValueError, match="minimum"):
        fast_fft_length(0)


BAD = [
    (dict(x=(2, 3, 8, 8), w=(4, 2, 3, 3)), {}, ValueError, "channels"),
    (dict(x=(2, 4, 8, 8), w=(4, 2, 3, 3)), {"groups": 3}, ValueError, "groups"),
    (dict(x=(2, 4, 8, 8), w=(3, 2, 3, 3)), {"groups": 2}, ValueError, "out_channels"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"groups": 0}, ValueError, "groups"),
    (dict(x=(2, 4, 8, 8, 8), w=(4, 4, 3, 3)), {}, ValueError, "spatial dims"),
    (dict(x=(2, 4, 8, 8), w=(4, 4)), {}, ValueError, "weight"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"stride": 0}, ValueError, "stride"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"stride": (1, 2, 3)}, ValueError, "stride"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"dilation": -1}, ValueError, "dilation"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding": -1}, ValueError, "padding"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 9, 3)), {}, ValueError, "kernel size 9"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"dilation": 5}, ValueError, "padded input"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding": "full"}, ValueError, "'same' or 'valid'"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding": "same", "stride": 2}, ValueError, "stride 1"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding_mode": "mirror"}, ValueError, "padding_mode"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding": 8, "padding_mode": "reflect"}, ValueError, "reflect"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"padding": 9, "padding_mode": "circular"}, ValueError, "circular"),
    (dict(x=(2, 4, 8, 8), w=(4, 4, 3, 3)), {"stride": 1.5}, TypeError, "stride"),
]


@pytest.mark.parametrize("shapes, kw, error, match", BAD)
def test_bad_input(shapes, kw, error, match):
    x, w = torch.randn(shapes["x"]), torch.randn(shapes["w"])
    with pytest.raises(error, match=match):
        fft_conv(x, w, **kw)


def test_bad_tensors():
    x, w = torch.randn(2, 4, 8), torch.randn(4, 4, 3)
    with pytest.raises(TypeError, match="input must be a real floating-point"):
        fft_conv(x.to(torch.complex64), w)
    with pytest.raises(TypeError, match="weight must be a real floating-point"):
        fft_conv(x, w.to(torch.int64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        fft_conv(x.tolist(), w)
    with pytest.raises(TypeError, match="weight dtype"):
        fft_conv(x, w.double())
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fft_conv(x, w, torch.randn(3))
    with pytest.raises(TypeError, match="bias dtype"):
        fft_conv(x, w, torch.randn(4, dtype=torch.float64))


def test_output_size_formula():
    x = torch.randn(1, 1, 23, 17)
    w = torch.randn(1, 1, 5, 4)
    y = fft_conv(x, w, stride=(3, 2), padding=(2, 1), dilation=(2, 3))
    expected = [math.floor((n + 2 * p - d * (k - 1) - 1) / s) + 1
                for n, p, d, k, s in zip((23, 17), (2, 1), (2, 3), (5, 4), (3, 2))]
    assert list(y.shape[2:]) == expected


def test_empty_batch_and_non_contiguous_input():
    w = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    empty = torch.randn(0, 4, 12, 12, dtype=torch.float64)
    assert fft_conv(empty, w, padding="same", groups=4, padding_mode="reflect").shape == (0, 4, 12, 12)
    x = torch.randn(2, 4, 12, 13, dtype=torch.float64)
    for view in (x.to(memory_format=torch.channels_last), x.transpose(2, 3)):
        torch.testing.assert_close(fft_conv(view, w, padding=2, groups=4), F.conv2d(view, w, padding=2, groups=4))


# ----------------------------------------------------------------------------- internal paths
# The channel-contracting products (real bmm over frequencies), the kernel placement and the
# overlap-save path are each checked against torch's convolution on geometries that select them.

fft_module = __import__("largekernel.functional.fft_conv", fromlist=["_block_plan"])


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("batch, cin, cout, kw", [
    (3, 6, 4, {"padding": "same", "groups": 2}),  # 3 * 2 * 3 multiply-adds per product: complex einsum
    (4, 24, 20, {"padding": "same", "groups": 2}),  # 4 * 10 * 12 >= 400: the real-bmm path
    (5, 16, 16, {"stride": 2, "padding": (2, 1), "dilation": (1, 2)}),  # real bmm, strided and dilated
])
def test_dense_partial_requires_grad(needs, batch, cin, cout, kw):
    groups = kw.get("groups", 1)
    assert (cin // groups) * (cout // groups) * batch >= 400 or cin == 6
    x = torch.randn(batch, cin, 11, 9, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(cout, cin // groups, 5, 4, dtype=torch.float64, requires_grad=needs[1])
    y = F.conv2d(x, w, **kw)
    grad = torch.randn_like(y)
    leaves = [t for t in (x, w) if t.requires_grad]
    ours = fft_conv(x, w, **kw)
    torch.testing.assert_close(ours, y)
    for a, b in zip(torch.autograd.grad(ours, leaves, grad), torch.autograd.grad(y, leaves, grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel, dilation, pads, fft", [
    ((5,), (1,), ((2, 2),), (12,)),
    ((4,), (3,), ((9, 0),), (20,)),  # padding before beyond the dilated extent
    ((3, 4), (2, 1), ((0, 1), (3, 0)), (9, 8)),
    ((7,), (2,), ((6, 0),), (10,)),  # dilated kernel longer than the buffer: taps share positions
])
def test_place_and_gather_kernel_are_adjoint(kernel, dilation, pads, fft):
    plan = fft_module._Plan(1, fft, kernel, fft, tuple(lo for lo, _ in pads), (1,) * len(fft), dilation, fft)
    w = torch.randn(2, 3, *kernel, dtype=torch.float64)
    b = torch.randn(2, 3, *fft, dtype=torch.float64)
    placed = fft_module._place_kernel(w, plan)
    # position of tap t is (t * d - shift) mod n per dim: the definition, written out
    expected = torch.zeros_like(b)
    for t in torch.cartesian_prod(*[torch.arange(k) for k in kernel]).reshape(-1, len(kernel)).tolist():
        pos = tuple((ti * d - lo) % n for ti, d, lo, n in zip(t, dilation, plan.shift, fft))
        expected[(..., *pos)] += w[(..., *t)]
    torch.testing.assert_close(placed, expected)
    torch.testing.assert_close((placed * b).sum(), (w * fft_module._gather_kernel(b, plan)).sum())


@pytest.mark.parametrize("batch, cin, cout, length, kernel, stride, dilation, groups, padding", [
    (2, 64, 64, 4096, 512, 1, 1, 1, (511, 0)),    # a causal FlexConv layer with its mask over 1/8
    (4, 32, 48, 3000, 100, 1, 1, 1, (50, 49)),    # "same"
    (4, 32, 32, 3001, 60, 2, 2, 2, (7, 3)),       # strided, dilated, grouped
])
def test_overlap_save_matches_torch(batch, cin, cout, length, kernel, stride, dilation, groups, padding):
    """Dense 1-D layers with kernels much shorter than the signal take the block path."""
    extent = dilation * (kernel - 1) + 1
    fft = fft_module._make_plan((length,), (kernel,), (padding,), (stride,), (dilation,), groups, False, "cpu").fft
    assert fft_module._block_plan((length,), (kernel,), (padding,), (stride,), (dilation,), fft, batch, cin, cout,
                                  cin // groups, "cpu") is not None
    x = torch.randn(batch, cin, length, requires_grad=True)
    w = torch.randn(cout, cin // groups, kernel, requires_grad=True)
    b = torch.randn(cout, requires_grad=True)
    xp = F.pad(x, padding)
    ours = fft_module._fft_conv(x, w, b, fft_module.replace(
        fft_module._check_args(x, w, b, stride, 0, dilation, groups, "zeros"), pads=(padding,)))
    expected = F.conv1d(xp, w, b, stride, 0, dilation, groups)
    assert extent < length and ours.shape == expected.shape
    # float32 sums of thousands of products: tolerances relative to the largest value
    torch.testing.assert_close(ours, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(ours, (x, w, b), grad), torch.autograd.grad(expected, (x, w, b), grad)):
        torch.testing.assert_close(a, e, atol=1e-5 * e.abs().max().item(), rtol=0)


@pytest.mark.parametrize("length, valid, stride, dilation, groups, padding", [
    (16, 10, 1, 1, 1, (2, 4)),
    (18, 6, 3, 1, 2, (0, 5)),
    (20, 5, 2, 2, 1, (7, 0)),
])
def test_overlap_save_gradcheck(length, valid, stride, dilation, groups, padding):
    """The block path with a forced small geometry: exact gradients (float64 gradcheck)."""
    x = torch.randn(2, 4, 31, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4 // groups, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    args = fft_module.replace(fft_module._check_args(x, w, b, stride, 0, dilation, groups, "zeros"), pads=(padding,))
    keep = (31 + sum(padding) - dilation * 2 - 1) // stride + 1
    count = -(-keep // valid)
    blocks = fft_module._Blocks((length,), (valid,), (count,))
    assert (valid - 1) * stride + 2 * dilation + 1 <= length
    y = fft_module._blocked_conv(x, w, b, (padding,), args, blocks)
    torch.testing.assert_close(y, F.conv1d(F.pad(x, padding), w, b, stride, 0, dilation, groups))
    assert gradcheck(lambda x, w, b: fft_module._blocked_conv(x, w, b, (padding,), args, blocks), (x, w, b))


def test_block_plan_keeps_small_and_depthwise_problems_whole():
    # the cost model: per-call overhead dominates tiny problems; depthwise kernels are cheap to transform
    assert fft_module._block_plan((300,), (20,), ((19, 0),), (1,), (1,), (320,), 2, 8, 8, 8, "cpu") is None
    assert fft_module._block_plan((16384,), (257,), ((128, 128),), (1,), (1,), (16800,), 1, 16, 16, 1, "cpu") is None
    assert fft_module._block_plan((64, 64), (9, 9), ((4, 4),) * 2, (1, 1), (1, 1), (72, 72), 8, 32, 32, 32,
                                  "cpu") is None


@pytest.fixture(params=["packed", "packed-blocks", "packed-torch", "real", "real-blocks", "real-torch"])
def fft_path(request, monkeypatch):
    """Force the elementwise (depthwise / channel-multiplier, stride 1) calls onto batch pairs packed as
    complex signals (the CPU default for 2-D and 3-D) or onto real FFTs (1-D, CUDA), for every dimension;
    ``-blocks`` runs either one input channel at a time (the cache-sized blocks of large activations);
    ``-torch`` runs either without the native CPU kernels (functional/_native.py)."""
    from importlib import import_module

    module = import_module("largekernel.functional.fft_conv")  # the module, not the function of that name
    yield from forced_fft_path(monkeypatch, request.param, module, "_PackedFFTConvFunction", "_FFTConvFunction")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("batch", [2, 3])
@pytest.mark.parametrize("cout, kw", [
    (4, {"padding": "same"}),
    (8, {"padding": 2, "dilation": 2}),
    (4, {"padding": 1, "padding_mode": "circular"}),
    (4, {"padding": "same", "padding_mode": "reflect"}),
    (8, {"padding": "valid"}),
])
def test_elementwise_products_match_torch_with_gradients(nd, batch, cout, kw, fft_path):
    """Depthwise and channel-multiplier convolutions, values and all three gradients, on both products."""
    torch.manual_seed(nd * 10 + batch)
    x = torch.randn(batch, 4, *([7, 6, 5][:nd]), dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, 1, *([3, 4, 2][:nd]), dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    grad = None
    results = []
    for conv in (fft_conv, reference):
        y = conv(x, w, b, groups=4, **kw)
        grad = torch.randn_like(y) if grad is None else grad
        results.append((y, *torch.autograd.grad(y, (x, w, b), grad)))
    for name, got, expected in zip(("output", "input", "weight", "bias"), *results):
        torch.testing.assert_close(got, expected, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_packed_partial_requires_grad_and_gradcheck(needs, fft_path):
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=needs[1])
    assert gradcheck(lambda *t: fft_conv(*t, padding=1, groups=2), (x, w), fast_mode=True)


@pytest.mark.parametrize("needs_input", [False, True])
def test_packed_bias_gradient_is_the_output_gradient_sum(needs_input, fft_path):
    """With the input gradient the bias gradient is read off a transform's DC bin; without, summed directly."""
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=needs_input)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = fft_conv(x, w, b, padding=(1, 0), groups=2)
    grad = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, b, grad)
    torch.testing.assert_close(got, grad.sum(dim=(0, 2, 3)))


@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    ((2, 4, 9, 9), (4, 1, 5, 5), {"groups": 4, "padding": "same"}, "_PackedFFTConvFunction"),
    ((2, 4, 5, 5, 5), (8, 1, 3, 3, 3), {"groups": 4}, "_PackedFFTConvFunction"),  # channel multiplier, 3-D
    ((1, 4, 9, 9), (4, 1, 5, 5), {"groups": 4}, "_FFTConvFunction"),  # a batch of one: nothing to pair
    ((2, 4, 9, 9), (4, 1, 5, 5), {"groups": 4, "stride": 2}, "_FFTConvFunction"),  # decimation: half spectra
    ((2, 4, 9, 9), (4, 2, 5, 5), {"groups": 2}, "_FFTConvFunction"),  # a channel contraction
    ((2, 4, 12), (4, 1, 5), {"groups": 4}, "_FFTConvFunction"),  # 1-D: real transforms are the faster ones
])
def test_default_path_per_call(x_shape, w_shape, kw, expected, monkeypatch):
    from importlib import import_module

    calls = spy_functions(monkeypatch, import_module("largekernel.functional.fft_conv"),
                          ("_PackedFFTConvFunction", "_FFTConvFunction"))
    fft_conv(torch.randn(x_shape), torch.randn(w_shape), **kw)
    assert calls == [expected]


def test_non_finite_sample_reaches_only_its_pair_partner():
    """Packed pairs are (b, b + ceil(B/2)): a NaN in channel 0 of sample 0 of four fills that channel of sample 2
    too, and leaves the other channel and samples 1 and 3 exactly as without it (docs/fft_conv.md)."""
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    clean = fft_conv(x, w, padding="same", groups=2)
    x[0, 0, 3, 3] = float("nan")
    y = fft_conv(x, w, padding="same", groups=2)
    assert torch.isnan(y[0, 0]).any() and torch.isnan(y[2, 0]).all()
    torch.testing.assert_close(y[[1, 3]], clean[[1, 3]], rtol=0, atol=0)
    torch.testing.assert_close(y[[0, 2], 1], clean[[0, 2], 1], rtol=0, atol=0)


def test_docs_examples_run():
    """Every python block of docs/fft_conv.md runs as written (blocks inside list items dedented)."""
    import re
    import textwrap
    from pathlib import Path

    from largekernel.functional import _native, clear_auto_cache, set_calibration

    text = (Path(__file__).resolve().parents[1] / "docs" / "fft_conv.md").read_text()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    assert len(blocks) >= 5
    calibrating, native = set_calibration(True), _native.ENABLED  # the examples switch process-wide settings
    try:
        for _, block in blocks:
            exec(compile(textwrap.dedent(block), "docs/fft_conv.md", "exec"), {})
    finally:
        set_calibration(calibrating)
        clear_auto_cache()
        _native.ENABLED = native
