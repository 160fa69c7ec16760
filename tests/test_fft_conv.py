"""fft_conv against torch's own convolution (the independent reference) for every argument."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from dataclasses import replace

from torch.autograd import gradcheck, gradgradcheck

from largekernel.functional import ConvArgumentError, execute, fast_fft_length, fft_conv, plan_conv, planner_options

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


def _tensors(cfg, dtype=torch.float64, batch=2, device="cpu"):
    x = torch.randn(batch, cfg["cin"], *cfg["sizes"], dtype=dtype, device=device)
    w = torch.randn(cfg["cout"], cfg["cin"] // cfg["groups"], *cfg["kernel"], dtype=dtype, device=device)
    b = torch.randn(cfg["cout"], dtype=dtype, device=device) if cfg["bias"] else None
    return x, w, b


def _kwargs(cfg):
    return {k: cfg[k] for k in ("stride", "padding", "dilation", "groups", "padding_mode")}


@pytest.fixture(params=["whole", "blocks"])
def blocks(request):
    """Run a test with the default cache-sized channel blocks (whole tensors at test sizes) and with one group
    (or channel pair) per block."""
    with planner_options(channel_block=1 if request.param == "blocks" else None):
        yield request.param


@given(conv_configs())
def test_matches_torch_conv_property(device, cfg):
    x, w, b = _tensors(cfg, device=device)
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
def test_matches_torch_conv_examples(nd, kw, blocks, device):
    groups = kw.get("groups", 1)
    x = torch.randn(2, 4, *([9] * nd), dtype=torch.float64, device=device)
    w = torch.randn(6, 4 // groups, *([3] * nd), dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    torch.testing.assert_close(fft_conv(x, w, b, **kw), reference(x, w, b, **kw))


@pytest.mark.parametrize("kernel", [55, 56, 31, 32])
def test_large_depthwise_same(kernel, device):
    """The ConvNeXt-like case the length choice is tuned for, odd and even kernels up to the input size."""
    x = torch.randn(2, 3, 56, 40, dtype=torch.float64, device=device)
    w = torch.randn(3, 1, kernel, min(kernel, 40), dtype=torch.float64, device=device)
    torch.testing.assert_close(fft_conv(x, w, padding="same", groups=3), F.conv2d(x, w, padding="same", groups=3))


def test_channel_multiplier_and_valid_full_size_kernel(device):
    x = torch.randn(2, 3, 20, dtype=torch.float64, device=device)
    w = torch.randn(6, 1, 20, dtype=torch.float64, device=device)  # kernel == input: one output
    torch.testing.assert_close(fft_conv(x, w, groups=3), F.conv1d(x, w, groups=3))
    w = torch.randn(6, 1, 30, dtype=torch.float64, device=device)  # kernel == padded input
    torch.testing.assert_close(fft_conv(x, w, padding=5, groups=3), F.conv1d(x, w, padding=5, groups=3))


def test_unbatched_input(device):
    x = torch.randn(4, 10, 11, dtype=torch.float64, device=device)
    w = torch.randn(2, 4, 5, 3, dtype=torch.float64, device=device)
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


def test_gradients_match_torch_for_partial_requires_grad(device):
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64, device=device)
    w = torch.randn(4, 1, 9, 9, dtype=torch.float64, device=device, requires_grad=True)
    fft_conv(x, w, padding="same", groups=4).square().sum().backward()
    expected = torch.autograd.grad(F.conv2d(x, w, padding="same", groups=4).square().sum(), w)[0]
    torch.testing.assert_close(w.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_round_trip(dtype, device):
    x = torch.randn(2, 4, 16, 16, device=device)
    w = torch.randn(4, 1, 7, 7, device=device) / 7
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
    with pytest.raises(TypeError, match="weight dtype must match input dtype torch.complex64"):
        fft_conv(x.to(torch.complex64), w)  # (complex operands: tests/test_complex_conv.py)
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


def test_empty_batch_and_non_contiguous_input(device):
    w = torch.randn(4, 1, 5, 5, dtype=torch.float64, device=device)
    empty = torch.randn(0, 4, 12, 12, dtype=torch.float64, device=device)
    assert fft_conv(empty, w, padding="same", groups=4, padding_mode="reflect").shape == (0, 4, 12, 12)
    x = torch.randn(2, 4, 12, 13, dtype=torch.float64, device=device)
    for view in (x.to(memory_format=torch.channels_last), x.transpose(2, 3)):
        torch.testing.assert_close(fft_conv(view, w, padding=2, groups=4), F.conv2d(view, w, padding=2, groups=4))


# ----------------------------------------------------------------------------- plans and paths
# Every path the planner can choose (real transforms, packed channel pairs, channel blocks, the real-bmm and the
# einsum contraction, overlap-save segments), forced through the public plan and options and checked against
# torch's convolution.


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("batch, cin, cout, kw, contraction", [
    (3, 6, 4, {"padding": "same", "groups": 2}, "einsum"),
    (4, 24, 20, {"padding": "same", "groups": 2}, "bmm"),
    (5, 16, 16, {"stride": 2, "padding": (2, 1), "dilation": (1, 2)}, "bmm"),
])
def test_dense_partial_requires_grad(needs, batch, cin, cout, kw, contraction, device):
    groups = kw.get("groups", 1)
    x = torch.randn(batch, cin, 11, 9, dtype=torch.float64, device=device, requires_grad=needs[0])
    w = torch.randn(cout, cin // groups, 5, 4, dtype=torch.float64, device=device, requires_grad=needs[1])
    assert plan_conv(x, w, backend="fft", **kw).geometry.contraction == contraction
    y = F.conv2d(x, w, **kw)
    grad = torch.randn_like(y)
    leaves = [t for t in (x, w) if t.requires_grad]
    ours = fft_conv(x, w, **kw)
    torch.testing.assert_close(ours, y)
    for a, b in zip(torch.autograd.grad(ours, leaves, grad), torch.autograd.grad(y, leaves, grad)):
        torch.testing.assert_close(a, b)


def test_dilated_kernel_longer_than_the_circular_period():
    """Taps of a dilated kernel longer than one circular period share grid positions (they add up)."""
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, dtype=torch.float64, requires_grad=True)
    kw = dict(padding=3, dilation=3, groups=3, padding_mode="circular")
    assert plan_conv(x, w, backend="fft", **kw).geometry.grid == (5,)
    torch.testing.assert_close(fft_conv(x, w, **kw), reference(x, w, **kw))
    assert gradcheck(lambda x, w: fft_conv(x, w, **kw), (x, w))


_SEGMENTED = [
    (2, 64, 64, 4096, 512, 1, 1, 1, ((511, 0),)),    # a causal FlexConv layer with its mask over 1/8
    (4, 32, 48, 3000, 100, 1, 1, 1, ((50, 49),)),    # "same"
    (4, 32, 32, 3001, 60, 2, 2, 2, ((7, 3),)),       # strided, dilated, grouped
]


@pytest.mark.parametrize("batch, cin, cout, length, kernel, stride, dilation, groups, padding", _SEGMENTED)
def test_planner_segments_dense_kernels_much_shorter_than_the_signal(batch, cin, cout, length, kernel, stride,
                                                                      dilation, groups, padding):
    """The CPU cost model takes overlap-save segments for these dense 1-D layers (CUDA's rule decides by its own
    costs: docs/cuda.md)."""
    x = torch.empty(batch, cin, length, requires_grad=True)
    w = torch.empty(cout, cin // groups, kernel, requires_grad=True)
    plan = plan_conv(x, w, None, stride, padding, dilation, groups, backend="fft")
    assert plan.path == "overlap-save" and plan.segments[0][1] > 1


@pytest.mark.parametrize("batch, cin, cout, length, kernel, stride, dilation, groups, padding", _SEGMENTED)
def test_overlap_save_matches_torch(batch, cin, cout, length, kernel, stride, dilation, groups, padding, device):
    """Dense 1-D layers with kernels much shorter than the signal, by overlap-save segments."""
    x = torch.randn(batch, cin, length, device=device, requires_grad=True)
    w = torch.randn(cout, cin // groups, kernel, device=device, requires_grad=True)
    b = torch.randn(cout, device=device, requires_grad=True)
    with planner_options(segments=True):
        plan = plan_conv(x, w, b, stride, padding, dilation, groups, backend="fft")
        ours = fft_conv(x, w, b, stride, padding, dilation, groups)
    assert plan.path == "overlap-save" and plan.segments[0][1] > 1
    expected = F.conv1d(F.pad(x, padding[0]), w, b, stride, 0, dilation, groups)
    # float32 sums of thousands of products: tolerances relative to the largest value
    torch.testing.assert_close(ours, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(ours, (x, w, b), grad), torch.autograd.grad(expected, (x, w, b), grad)):
        torch.testing.assert_close(a, e, atol=1e-5 * e.abs().max().item(), rtol=0)


@pytest.mark.parametrize("stride, dilation, groups, padding", [
    (1, 1, 1, ((2, 4),)),
    (3, 1, 2, ((0, 5),)),
    (2, 2, 1, ((7, 0),)),
])
def test_overlap_save_gradcheck(stride, dilation, groups, padding):
    """Overlap-save forced on a small geometry: exact first and second derivatives (float64)."""
    x = torch.randn(2, 4, 31, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4 // groups, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with planner_options(segments=True):
        assert plan_conv(x, w, b, stride, padding, dilation, groups, backend="fft").path == "overlap-save"
        conv = lambda x, w, b: fft_conv(x, w, b, stride, padding, dilation, groups)  # noqa: E731
        torch.testing.assert_close(conv(x, w, b), F.conv1d(F.pad(x, padding[0]), w, b, stride, 0, dilation, groups))
        assert gradcheck(conv, (x, w, b))
        assert gradgradcheck(conv, (x, w, b), fast_mode=True)


def test_planner_keeps_small_and_depthwise_problems_whole():
    # the cost model: per-call overhead dominates tiny problems; depthwise kernels are cheap to transform
    assert plan_conv(torch.randn(2, 8, 300), torch.randn(8, 8, 20), padding=((19, 0),), backend="fft").segments is None
    assert plan_conv(torch.randn(1, 16, 16384), torch.randn(16, 1, 257), padding=128, groups=16,
                     backend="fft").segments is None
    assert plan_conv(torch.randn(8, 32, 64, 64), torch.randn(32, 1, 9, 9), padding=4, groups=32,
                     backend="fft").segments is None


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("cin, cout, kw", [
    (4, 4, {"padding": "same"}),
    (5, 10, {"padding": 2, "dilation": 2}),
    (4, 4, {"padding": 1, "padding_mode": "circular"}),
    (3, 3, {"padding": "same", "padding_mode": "reflect"}),
    (4, 8, {"padding": "valid"}),
])
def test_elementwise_products_match_torch_with_gradients(nd, batch, cin, cout, kw, fft_path, device):
    """Depthwise and channel-multiplier convolutions (odd channel counts: a channel without partner), values and
    all three gradients, on every product."""
    torch.manual_seed(nd * 10 + batch)
    x = torch.randn(batch, cin, *([7, 6, 5][:nd]), dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(cout, 1, *([3, 4, 2][:nd]), dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, device=device, requires_grad=True)
    assert plan_conv(x, w, b, groups=cin, backend="fft", **kw).geometry.packed == fft_path.startswith("packed")
    grad = None
    results = []
    for conv in (fft_conv, reference):
        y = conv(x, w, b, groups=cin, **kw)
        grad = torch.randn_like(y) if grad is None else grad
        results.append((y, *torch.autograd.grad(y, (x, w, b), grad)))
    for name, got, expected in zip(("output", "input", "weight", "bias"), *results):
        torch.testing.assert_close(got, expected, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
def test_packed_partial_requires_grad_and_gradcheck(needs, fft_path):
    x = torch.randn(3, 3, 5, 4, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=needs[1])
    assert gradcheck(lambda *t: fft_conv(*t, padding=1, groups=3), (x, w), fast_mode=True)


@pytest.mark.parametrize("needs_input", [False, True])
def test_bias_gradient_is_the_output_gradient_sum(needs_input, fft_path, device):
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=needs_input)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    y = fft_conv(x, w, b, padding=(1, 0), groups=2)
    grad = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, b, grad)
    torch.testing.assert_close(got, grad.sum(dim=(0, 2, 3)))


@pytest.mark.parametrize("x_shape, w_shape, kw, packed", [
    ((2, 4, 9, 9), (4, 1, 5, 5), {"groups": 4, "padding": "same"}, True),
    ((2, 4, 5, 5, 5), (8, 1, 3, 3, 3), {"groups": 4}, True),  # channel multiplier, 3-D
    ((1, 4, 9, 9), (4, 1, 5, 5), {"groups": 4}, True),  # a batch of one: channels pair within the sample
    ((2, 4, 9, 9), (4, 1, 5, 5), {"groups": 4, "stride": 2}, False),  # decimation: half spectra
    ((2, 4, 9, 9), (4, 2, 5, 5), {"groups": 2}, False),  # a channel contraction
    ((2, 1, 9, 9), (1, 1, 5, 5), {}, False),  # one channel: nothing to pair
    ((2, 4, 12), (4, 1, 5), {"groups": 4}, False),  # 1-D: real transforms are the faster ones
])
def test_default_product_per_call(x_shape, w_shape, kw, packed):
    plan = plan_conv(torch.randn(x_shape), torch.randn(w_shape), backend="fft", **kw)
    assert plan.geometry.packed == packed


def test_plan_can_be_changed_and_executed(device):
    x = torch.randn(2, 6, 20, 20, dtype=torch.float64, device=device)
    w = torch.randn(6, 1, 9, 9, dtype=torch.float64, device=device)
    plan = plan_conv(x, w, padding=4, groups=6, backend="fft")
    expected = F.conv2d(x, w, padding=4, groups=6)
    for changed in (plan, replace(plan, path="direct"), replace(plan, geometry=replace(plan.geometry, packed=False)),
                    replace(plan, geometry=replace(plan.geometry, channel_block=1))):
        torch.testing.assert_close(execute(changed, x, w), expected)
    with pytest.raises(ConvArgumentError, match="plan was made for"):
        execute(plan, torch.randn(3, 6, 20, 20, dtype=torch.float64, device=device), w)


def test_docs_examples_run():
    """Every python block of docs/fft_conv.md runs as written (blocks inside list items dedented)."""
    import re
    import textwrap
    from pathlib import Path

    from largekernel.functional import clear_auto_cache, native_kernels, set_calibration

    text = (Path(__file__).resolve().parents[1] / "docs" / "fft_conv.md").read_text()
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.S | re.M)
    assert len(blocks) >= 5
    calibrating, native = set_calibration(False), native_kernels()  # the examples switch process-wide settings
    try:
        for _, block in blocks:
            exec(compile(textwrap.dedent(block), "docs/fft_conv.md", "exec"), {})
    finally:
        set_calibration(calibrating)
        clear_auto_cache()
        native_kernels(native)
