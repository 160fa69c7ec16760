"""convolve(): every backend equals torch's conv; backend="auto" calibrates once per key and caches."""

import pytest
import torch
import torch.nn.functional as F

from largekernel.functional import engine
from largekernel.functional import auto_cache, choose_backend, clear_auto_cache, convolve, set_calibration


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_auto_cache()
    set_calibration(True)
    yield
    clear_auto_cache()
    set_calibration(True)


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
            x.shape[1], w.shape[0], w.shape[2:], bias=b is not None, padding_mode=mode, dtype=x.dtype, **kw)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return conv(x)
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd](x, w, b, **kw)


@pytest.mark.parametrize("backend", ["auto", "direct", "fft"])
@pytest.mark.parametrize("nd, kw, xs, ws", CASES)
def test_backends_agree_with_torch(backend, nd, kw, xs, ws):
    x, w, b = torch.randn(xs, dtype=torch.float64), torch.randn(ws, dtype=torch.float64), torch.randn(ws[0], dtype=torch.float64)
    torch.testing.assert_close(convolve(x, w, b, backend=backend, **kw), _reference(x, w, b, nd, kw))


def test_auto_calibrates_once_per_key_and_caches(monkeypatch):
    calls = []
    real = engine._timed_seconds
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1.0, 1.5))  # close: must time
    x, w = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 7, 7)
    convolve(x, w, padding="same", groups=4)
    convolve(x, w, padding="same", groups=4)
    assert len(calls) == 1
    (key, entry), = auto_cache().items()
    assert entry["source"] == "timed" and entry["backend"] in ("direct", "fft")
    assert entry["backend"] == ("direct" if entry["direct_seconds"] <= entry["fft_seconds"] else "fft")
    assert choose_backend(x, w, padding="same", groups=4) == entry["backend"]
    # needing gradients is a different key (backward is timed too)
    convolve(x, w.requires_grad_(), padding="same", groups=4).sum().backward()
    assert len(calls) == 2 and len(auto_cache()) == 2
    assert w.grad is not None
    # a new shape is a new key
    convolve(torch.randn(1, 4, 16, 16), w.detach(), padding="same", groups=4)
    assert len(auto_cache()) == 3
    clear_auto_cache()
    assert auto_cache() == {}


@pytest.mark.parametrize("model, expected", [((0.1, 1.0), "direct"), ((1.0, 0.1), "fft")])
def test_lopsided_model_skips_timing(monkeypatch, model, expected):
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: pytest.fail("timed a lopsided call"))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: model)
    x, w = torch.randn(1, 8, 16, 16), torch.randn(8, 1, 5, 5)
    assert choose_backend(x, w, padding="same", groups=8) == expected
    assert [e["source"] for e in auto_cache().values()] == ["model"]


def test_tiny_calls_are_always_timed(monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: calls.append(1) or (1.0, 2.0))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1e-4, 1e-2))  # lopsided but cheap to time
    assert choose_backend(torch.randn(1, 2, 8), torch.randn(2, 2, 3)) == "direct"
    assert calls == [1]


def test_calibration_can_be_disabled(monkeypatch):
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: pytest.fail("timed with calibration off"))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (2.0, 1.0))
    set_calibration(False)
    x, w = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 7, 7)
    assert choose_backend(x, w, padding=3, groups=4) == "fft"
    assert next(iter(auto_cache().values()))["source"] == "model"


def test_no_calibration_or_caching_while_tracing(monkeypatch):
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: pytest.fail("timed while tracing"))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1.0, 1.1))
    w = torch.randn(4, 1, 5, 5)
    traced = torch.jit.trace(lambda x: convolve(x, w, padding=2, groups=4), torch.randn(1, 4, 10, 10),
                             check_trace=False)
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(traced(x), F.conv2d(x, w, padding=2, groups=4))
    assert auto_cache() == {}


def test_model_prefers_fft_for_large_depthwise_and_direct_for_small():
    args = engine._check_args
    x = torch.randn(8, 96, 56, 56)
    big, small = torch.randn(96, 1, 31, 31), torch.randn(96, 1, 3, 3)
    d, f = engine._model_seconds(x, big, args(x, big, None, 1, "same", 1, 96, "zeros"), True)
    assert f < d
    d, f = engine._model_seconds(x, small, args(x, small, None, 1, "same", 1, 96, "zeros"), True)
    assert d < f


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, kernel, dilation, needs_grad, faster", [
    # Depthwise calls whose faster path was at least 2x faster at 1 and 2 threads on the reference CPU
    # (docs/fft_conv.md, the depthwise model): the model must pick it.
    ((8, 64, 2048), (31,), 1, False, "fft"),
    ((128, 64, 100), (5,), 1, False, "direct"),
    ((128, 32, 40), (31,), 1, True, "fft"),
    ((8, 96, 56, 56), (7, 7), 1, False, "direct"),
    ((8, 96, 56, 56), (7, 7), 1, True, "fft"),
    ((128, 32, 8, 8), (3, 3), 1, True, "direct"),
    ((128, 64, 100), (5,), 9, True, "fft"),
])
def test_depthwise_model_picks_the_measured_faster_path(threads, shape, kernel, dilation, needs_grad, faster,
                                                         monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    x, w = torch.empty(shape), torch.empty(shape[1], 1, *kernel)
    pad = tuple(dilation * (k - 1) // 2 for k in kernel)
    d, f = engine._model_seconds(x, w, engine._check_args(x, w, None, 1, pad, dilation, shape[1], "zeros"),
                                 needs_grad)
    assert ("fft" if f < d else "direct") == faster


def test_bad_backend_and_arguments():
    x, w = torch.randn(1, 2, 8), torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        convolve(x, w, backend="cudnn")
    for backend in ("auto", "direct", "fft"):
        with pytest.raises(ValueError, match="groups"):
            convolve(x, w, groups=3, backend=backend)
        with pytest.raises(TypeError, match="input must be a real floating-point"):
            convolve(x.to(torch.int32), w, backend=backend)


def test_no_calibration_or_caching_under_torch_compile(monkeypatch):
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: pytest.fail("timed while compiling"))
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1.0, 1.1))
    w = torch.randn(4, 1, 5, 5)
    compiled = torch.compile(lambda x: convolve(x, w, padding=2, groups=4), backend="eager")
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(compiled(x), F.conv2d(x, w, padding=2, groups=4))
    assert auto_cache() == {}


def test_model_for_dense_layers_follows_the_fft_path():
    """Dense layers: long kernels are lopsidedly FFT (the model decides), short ones are close (timed)."""
    args = engine._check_args
    x = torch.randn(8, 64, 4096)
    long_kernel, short_kernel = torch.randn(64, 64, 512), torch.randn(64, 64, 9)
    d, f = engine._model_seconds(x, long_kernel, args(x, long_kernel, None, 1, 256, 1, 1, "zeros"), True)
    assert d > engine.MODEL_MARGIN * f
    x = torch.randn(8, 64, 1024)
    d, f = engine._model_seconds(x, short_kernel, args(x, short_kernel, None, 1, 4, 1, 1, "zeros"), True)
    assert 1 / engine.MODEL_MARGIN < d / f < engine.MODEL_MARGIN


def test_close_timed_choice_is_timed_again_once_after_warm_up(monkeypatch):
    """A close first timing (cold process) is re-timed after RETIME_AFTER calls; a clear one is final."""
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1.0, 1.1))  # close: must time
    timings = iter([(1.0, 1.2), (1.0, 0.5)])  # cold: direct looks faster; warm: FFT is
    calls = []
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: calls.append(1) or next(timings))
    x, w = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 7, 7)
    convolve(x, w, padding="same", groups=4)
    (entry,) = auto_cache().values()
    assert (entry["backend"], entry["source"], entry["retime_in"]) == ("direct", "timed", engine.RETIME_AFTER)
    for _ in range(engine.RETIME_AFTER - 1):
        convolve(x, w, padding="same", groups=4)
    assert len(calls) == 1 and choose_backend(x, w, padding="same", groups=4) == "fft"  # the retiming call
    (entry,) = auto_cache().values()
    assert (entry["backend"], entry["source"], entry["retime_in"], len(calls)) == ("fft", "retimed", 0, 2)
    for _ in range(3 * engine.RETIME_AFTER):
        torch.testing.assert_close(convolve(x, w, padding="same", groups=4), F.conv2d(x, w, padding="same", groups=4))
    assert len(calls) == 2  # final
    clear_auto_cache()
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: calls.append(1) or (1.0, 3.0))  # clear-cut
    for _ in range(3 * engine.RETIME_AFTER):
        convolve(x, w, padding="same", groups=4)
    assert len(calls) == 3 and next(iter(auto_cache().values()))["source"] == "timed"


def test_pending_retiming_is_dropped_when_calibration_is_switched_off(monkeypatch):
    monkeypatch.setattr(engine, "_model_seconds", lambda *a: (1.0, 1.1))
    calls = []
    monkeypatch.setattr(engine, "_timed_seconds", lambda *a, **kw: calls.append(1) or (1.0, 1.2))
    x, w = torch.randn(2, 4, 16, 16), torch.randn(4, 1, 7, 7)
    convolve(x, w, padding="same", groups=4)
    set_calibration(False)
    try:
        for _ in range(2 * engine.RETIME_AFTER):
            convolve(x, w, padding="same", groups=4)
    finally:
        set_calibration(True)
    (entry,) = auto_cache().values()
    assert len(calls) == 1 and (entry["source"], entry["retime_in"]) == ("timed", 0)
