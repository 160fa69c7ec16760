"""convolve(): every backend equals torch's conv; "auto" follows the planner, deterministically, unless timing is
switched on; per-side padding, batch isolation, autocast, double backward and memory format as torch's conv."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st


from largekernel.functional import (ConvArgumentError, auto_cache, calibration, choose_backend, clear_auto_cache,
                                    convolve, plan_conv, planner_options)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_auto_cache()
    yield
    clear_auto_cache()


CASES = [
    (2, dict(padding="same", groups=4), (2, 4, 12, 12), (4, 1, 7, 7)),
    (1, dict(stride=2, padding=3, dilation=2), (2, 3, 20), (5, 3, 4)),
    (3, dict(padding=1, padding_mode="circular", groups=2), (1, 2, 6, 6, 6), (4, 1, 3, 3, 3)),
    (2, dict(padding=(2, 1), padding_mode="reflect"), (2, 2, 9, 8), (3, 2, 5, 3)),
    (2, dict(padding="same", padding_mode="replicate"), (2, 2, 9, 8), (3, 2, 4, 3)),
]


def _reference(x, w, b, nd, kw):
    kw = dict(kw)
    mode = kw.pop("padding_mode", "zeros")
    if mode != "zeros":  # how torch.nn.ConvNd applies a padding mode
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd](
            x.shape[1], w.shape[0], w.shape[2:], bias=b is not None, padding_mode=mode, dtype=x.dtype, device=x.device,
            **kw)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return conv(x)
    return CONV[nd](x, w, b, **kw)


@pytest.mark.parametrize("backend", ["auto", "direct", "fft"])
@pytest.mark.parametrize("nd, kw, xs, ws", CASES)
def test_backends_agree_with_torch(backend, nd, kw, xs, ws, device):
    x, w = torch.randn(xs, dtype=torch.float64, device=device), torch.randn(ws, dtype=torch.float64, device=device)
    b = torch.randn(ws[0], dtype=torch.float64, device=device)
    torch.testing.assert_close(convolve(x, w, b, backend=backend, **kw), _reference(x, w, b, nd, kw))


# ----------------------------------------------------------------------------- per-side padding


@st.composite
def per_side_calls(draw):
    nd = draw(st.integers(1, 3))
    size = [draw(st.integers(3, 8)) for _ in range(nd)]
    kernel = [draw(st.integers(1, 4)) for _ in range(nd)]
    pads = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(nd))
    mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
    if mode == "reflect":
        pads = tuple((min(lo, n - 1), min(hi, n - 1)) for (lo, hi), n in zip(pads, size))
    if mode == "circular":
        pads = tuple((min(lo, n), min(hi, n)) for (lo, hi), n in zip(pads, size))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    groups = draw(st.sampled_from([1, 2]))
    return nd, size, kernel, pads, mode, stride, groups


@given(per_side_calls(), st.sampled_from(["direct", "fft"]))
def test_per_side_padding_is_f_pad_then_conv(device, call, backend):
    """``padding=((before, after), ...)`` on both paths equals ``F.pad`` (in the padding mode) then an unpadded
    conv, values and gradients."""
    nd, size, kernel, pads, mode, stride, groups = call
    x = torch.randn(2, 2, *size, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 2 // groups, *kernel, dtype=torch.float64, device=device, requires_grad=True)
    flat = [p for pair in reversed(pads) for p in pair]
    padded = F.pad(x, flat, mode="constant" if mode == "zeros" else mode)
    if any(n < k for n, k in zip(padded.shape[2:], kernel)):
        with pytest.raises(ConvArgumentError, match="kernel size"):
            convolve(x, w, padding=pads, stride=stride, groups=groups, padding_mode=mode, backend=backend)
        return
    expected = CONV[nd](padded, w, None, stride, 0, 1, groups)
    got = convolve(x, w, padding=pads, stride=stride, groups=groups, padding_mode=mode, backend=backend)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(got, (x, w), grad), torch.autograd.grad(expected, (x, w), grad)):
        torch.testing.assert_close(a, e)


def test_causal_padding(device):
    x = torch.randn(2, 3, 50, dtype=torch.float64, device=device)
    w = torch.randn(3, 1, 9, dtype=torch.float64, device=device)
    y = convolve(x, w, padding=((8, 0),), groups=3, backend="fft")
    torch.testing.assert_close(y, F.conv1d(F.pad(x, (8, 0)), w, groups=3))
    x2 = x.clone()
    x2[..., 30:] = 0.0  # the future never reaches the past
    torch.testing.assert_close(convolve(x2, w, padding=((8, 0),), groups=3, backend="fft")[..., :30], y[..., :30])


@pytest.mark.parametrize("backend", ["auto", "direct", "fft"])
@pytest.mark.parametrize("size, kernel, padding, stride, dilation", [
    ((7, 7), (17, 17), (8, 8), 1, 1),            # ConvNeXt-dcls's last stage: 13x13 of the kernel reach the map
    ((5, 9), (31, 13), ((15, 15), (2, 10)), 1, 1),  # one dim cropped, per-side padding
    ((6, 6), (9, 9), (7, 3), 2, 1),              # strided
    ((4, 4), (7, 7), (9, 9), 1, 2),              # dilated, padding wider than the kernel reaches
])
def test_kernel_wider_than_the_input(size, kernel, padding, stride, dilation, backend, device):
    """Taps that only ever meet zero padding change nothing: outputs and gradients (zero for those taps) as
    F.pad + torch's convolution."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 1, *kernel, dtype=torch.float64, device=device, requires_grad=True)
    pads = [p if isinstance(p, tuple) else (p, p) for p in padding]
    expected = F.conv2d(F.pad(x, [v for pair in reversed(pads) for v in pair]), w, None, stride, 0, dilation, 3)
    got = convolve(x, w, None, stride, tuple(pads), dilation, 3, backend=backend)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(got, (x, w), grad), torch.autograd.grad(expected, (x, w), grad)):
        torch.testing.assert_close(a, e)


def test_bad_per_side_padding():
    x, w = torch.randn(1, 2, 8), torch.randn(2, 2, 3)
    for padding, match in [(((1, 2, 3),), "pairs"), (((-1, 0),), "non-negative"), (((1, 0), (1, 0)), "padding")]:
        with pytest.raises(ConvArgumentError, match=match):
            convolve(x, w, padding=padding)


# ----------------------------------------------------------------------------- deterministic "auto"


def test_auto_follows_the_planner_and_caches_nothing_by_default():
    x, w = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 7, 7)
    plan = plan_conv(x, w, padding="same", groups=4)
    assert plan.source == "model"
    assert plan.path == ("direct" if plan.direct_seconds <= plan.fft_seconds else "fft")
    assert choose_backend(x, w, padding="same", groups=4) == ("direct" if plan.path == "direct" else "fft")
    convolve(x, w, padding="same", groups=4)
    assert auto_cache() == {}


def test_model_prefers_fft_for_large_depthwise_and_direct_for_small(device):
    """On every device (its own rule on CUDA: docs/cuda.md)."""
    x = torch.empty(8, 96, 56, 56, device=device, requires_grad=True)
    assert plan_conv(x, torch.empty(96, 1, 31, 31, device=device), padding="same", groups=96).path == "fft"
    assert plan_conv(x, torch.empty(96, 1, 3, 3, device=device), padding="same", groups=96).path == "direct"


def test_packing_and_channel_blocks_stay_on_the_cpu(device):
    """Channel pairs packed as complex signals and cache-sized channel blocks are CPU optimisations (docs/cuda.md):
    elsewhere every channel is transformed as a real signal, all channels in one block. Forced packing and blocks
    run on every device and give torch's result."""
    x, w = torch.randn(2, 96, 56, 56, device=device), torch.randn(96, 1, 31, 31, device=device) / 31
    geometry = plan_conv(x, w, padding=15, groups=96, backend="fft").geometry
    assert geometry.packed == (device == "cpu")
    assert (geometry.channel_block < 96 // 2) == (device == "cpu")
    expected = F.conv2d(x[:, :6], w[:6], padding=15, groups=6)
    for packed in (True, False):
        with planner_options(packed=packed, channel_block=1):
            got = convolve(x[:, :6], w[:6], padding=15, groups=6, backend="fft")
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, kernel, dilation, needs_grad, faster", [
    # Depthwise calls whose faster path was at least 2x faster at 1 and 2 threads on the reference CPU
    # (docs/fft_conv.md, the depthwise model): the planner must pick it.
    ((8, 64, 2048), (31,), 1, False, "fft"),
    ((128, 64, 100), (5,), 1, False, "direct"),
    ((128, 32, 40), (31,), 1, True, "fft"),
    ((8, 96, 56, 56), (7, 7), 1, False, "direct"),
    ((8, 96, 56, 56), (7, 7), 1, True, "fft"),
    ((128, 32, 8, 8), (3, 3), 1, True, "direct"),
    ((128, 64, 100), (5,), 9, True, "fft"),
])
def test_planner_picks_the_measured_faster_path(threads, shape, kernel, dilation, needs_grad, faster):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w = torch.empty(shape, requires_grad=needs_grad), torch.empty(shape[1], 1, *kernel)
        pad = tuple(dilation * (k - 1) // 2 for k in kernel)
        plan = plan_conv(x, w, padding=pad, dilation=dilation, groups=shape[1])
    finally:
        torch.set_num_threads(previous)
    assert ("direct" if plan.path == "direct" else "fft") == faster


def test_dense_long_kernels_go_by_fft():
    x = torch.randn(8, 64, 4096, requires_grad=True)
    plan = plan_conv(x, torch.randn(64, 64, 512), padding=256)
    assert plan.path != "direct" and plan.direct_seconds > 4 * plan.fft_seconds


def test_same_outputs_in_two_processes():
    """The same call in two fresh processes (same seed) gives the same bits: no timing, no process state."""
    code = ("import torch, hashlib; from largekernel.nn import Conv2d, DclsConv2d, NIFFConv2d; torch.manual_seed(0);"
            "x = torch.randn(4, 16, 40, 40); out = [];"
            "[out.append(m(x).detach().numpy().tobytes()) for m in (Conv2d(16, 16, 31, padding=15, groups=16),"
            " Conv2d(16, 16, 5, padding=2, groups=16), DclsConv2d(16, 16, 9, 17, padding=8, groups=16), NIFFConv2d(16))];"
            "print(hashlib.sha256(b''.join(out)).hexdigest())")
    env = {k: v for k, v in os.environ.items() if k != "LARGEKERNEL_CALIBRATE"}
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout for _ in range(2)}
    assert len(digests) == 1


# ----------------------------------------------------------------------------- opt-in timing


def test_calibration_times_close_calls_once_per_shape_and_caches(device):
    x, w = torch.randn(2, 4, 16, 16, device=device), torch.randn(4, 1, 7, 7, device=device)
    with calibration():
        convolve(x, w, padding="same", groups=4)
        convolve(x, w, padding="same", groups=4)
        ((key, entry),) = auto_cache().items()
        assert entry["source"] == "timed"
        assert entry["backend"] == ("direct" if entry["direct_seconds"] <= entry["fft_seconds"] else "fft")
        assert choose_backend(x, w, padding="same", groups=4) == entry["backend"]
        # needing gradients is a different shape key (backward is timed too)
        w.requires_grad_()
        convolve(x, w, padding="same", groups=4).sum().backward()
        assert len(auto_cache()) == 2 and w.grad is not None
        convolve(torch.randn(1, 4, 16, 16, device=device), w.detach(), padding="same", groups=4)
        assert len(auto_cache()) == 3
    convolve(torch.randn(3, 4, 16, 16, device=device), w.detach(), padding="same", groups=4)  # off again: nothing new
    assert len(auto_cache()) == 3
    clear_auto_cache()
    assert auto_cache() == {}


def test_calibration_trusts_lopsided_predictions():
    x, w = torch.randn(8, 96, 56, 56), torch.randn(96, 1, 31, 31)
    with calibration():
        assert choose_backend(x, w, padding=15, groups=96) == "fft"
    assert [e["source"] for e in auto_cache().values()] == ["model"]


def test_no_calibration_or_caching_while_tracing_or_compiling():
    w = torch.randn(4, 1, 5, 5)
    x = torch.randn(1, 4, 10, 10)
    with calibration():
        traced = torch.jit.trace(lambda x: convolve(x, w, padding=2, groups=4), x, check_trace=False)
        torch.testing.assert_close(traced(x), F.conv2d(x, w, padding=2, groups=4))
        compiled = torch.compile(lambda x: convolve(x, w, padding=2, groups=4), backend="eager")
        torch.testing.assert_close(compiled(x), F.conv2d(x, w, padding=2, groups=4))
    assert auto_cache() == {}


def test_bad_backend_and_arguments():
    x, w = torch.randn(1, 2, 8), torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        convolve(x, w, backend="cudnn")
    for backend in ("auto", "direct", "fft"):
        with pytest.raises(ValueError, match="groups"):
            convolve(x, w, groups=3, backend=backend)
        with pytest.raises(TypeError, match="input must be a real floating-point"):
            convolve(x.to(torch.int32), w, backend=backend)
        with pytest.raises(RuntimeError, match="channels"):  # caught like torch's own conv errors
            convolve(torch.randn(1, 3, 8), w, backend=backend)
