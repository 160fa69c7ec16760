"""The convolution engine: apply an already-built kernel by the direct or the FFT path.

Every layer family (dense, DCLS, FlexConv, ...; seeds 001-003) builds its kernel
and then calls :func:`convolve`; choosing the path per call shape happens here,
in one place.

``backend="auto"`` picks the faster path per call shape. The first time a key is
seen, a cost model estimates both paths. When it predicts one of them faster by
:data:`MODEL_MARGIN` or more on a call that is not tiny, or predicts both slower
than a second (on CPU, where its constants were fitted), the model decides; otherwise both paths are timed on the actual
call (forward, and forward+backward when gradients are needed): a warm-up of
each, then :data:`CALIBRATION_REPS` alternating runs of each, the minimum
counting; a path whose first timed run is already twice as slow as the other's
is not run again. A timed choice whose paths came within :data:`RETIME_RATIO` of
each other is timed once more after :data:`RETIME_AFTER` further calls of its key
(source ``"retimed"``), when the process has warmed up. The choice is cached
per key (shapes, stride, padding, dilation, groups, padding mode, dtype, device,
whether gradients are needed); :func:`auto_cache` shows it and
:func:`clear_auto_cache` forgets it. Under ``torch.compile`` or ``torch.jit``
tracing, and when calibration is disabled (:func:`set_calibration` or the
environment variable ``LARGEKERNEL_CALIBRATE=0``), the model alone decides,
which is deterministic; nothing is cached while compiling.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from largekernel.functional.fft_conv import (_check_args, _direct_conv, _fft_conv, _fft_seconds, _make_plan,
                                             _packed_plan)

__all__ = [
    "convolve",
    "choose_backend",
    "auto_cache",
    "clear_auto_cache",
    "set_calibration",
    "BACKENDS",
    "MODEL_MARGIN",
    "CALIBRATION_REPS",
    "RETIME_RATIO",
    "RETIME_AFTER",
]

BACKENDS = ("auto", "direct", "fft")

#: The model decides alone when it predicts one path faster by at least this factor.
MODEL_MARGIN = 4.0
# The depthwise model (seconds; per output element, per multiply-add, per transform row and point, per call; the
# work divided by threads ** exponent), fitted by least squares on the log error to 57 depthwise layers (1-D and
# 2-D, batch 1-128, 8-4096 samples, kernels 3-1025, dilation 1 and 9), forward and forward+backward, both paths
# timed with 1 and 2 threads on the reference CPU (fifth session, docs/fft_conv.md): of the 114 cases per thread
# count the faster path is picked in 108 (1 thread) and 105 (2 threads), the worst pick 1.7x / 2.3x slower than
# the best (1-D dilated forwards, which oneDNN runs at irregular speeds), and no pick the model is 4x
# (MODEL_MARGIN) sure of is wrong. The constants before it picked wrong in 28 at 2 threads, up to 11.7x slower.
_DW_PER_OUTPUT = 7.1e-10
_DW_RATE = (3.8e-10, 1.6e-11, 5.7e-10)  # per multiply-add: 1-D, 2-D up to 13x13 (vectorised), larger 2-D
_DW_DILATED = 1.22
_DW_CALL = 5.7e-5
_DW_GRAD = (7.3e-10, 7.2e-10)  # the weight gradient, per multiply-add: 1-D, N-D
_DW_GRAD_DILATED = 3.36
_DW_GRAD_CALL = 3.6e-4
_DW_THREADS = 0.79  # exponent of the thread count the work is divided by
_FFT_PER_POINT = 5.0e-10  # per transform row (batch x (in + out)) and point, plus a log2(points) term
_FFT_PER_POINT_LOG = 1.26e-10
_FFT_PACKED = 0.95
_FFT_CALL = 3.3e-4
_FFT_GRAD = 2.3
_FFT_THREADS = 0.98
#: Timed runs per path during calibration (after one warm-up); the minimum counts.
CALIBRATION_REPS = 3
#: Calls the model predicts slower than this (seconds) are not timed: calibration stays cheap.
_MAX_CALIBRATION_CALL = 1.0
#: Calls the model predicts faster than this (seconds, both paths) are always timed.
_MIN_MODEL_CALL = 0.02


#: A timed choice whose two paths are within this factor of each other is timed once more, after
#: :data:`RETIME_AFTER` further calls of its key: the first calls of a process also pay page
#: faults and cold caches, unevenly between the paths (an FFT path measured 1.2-2x its steady
#: time there), so a close first timing can pick the slower path for the rest of the run.
RETIME_RATIO = 1.5
RETIME_AFTER = 10


@dataclass(frozen=True)
class _Choice:
    backend: str
    source: str  # "timed", "retimed" or "model"
    direct_seconds: float
    fft_seconds: float
    retime_in: int = 0  # calls of the key left before a close timed choice is timed again (0: final)


_CACHE: dict[tuple, _Choice] = {}
_CALIBRATION = {"enabled": os.environ.get("LARGEKERNEL_CALIBRATE", "1") != "0"}


def set_calibration(enabled: bool) -> bool:
    """Enable or disable timing-based calibration for ``backend="auto"`` (the model decides when off);
    returns the previous setting."""
    previous = _CALIBRATION["enabled"]
    _CALIBRATION["enabled"] = bool(enabled)
    return previous


def auto_cache() -> dict[tuple, dict]:
    """A copy of the ``backend="auto"`` decisions: key -> backend, source ("timed"/"model") and the
    seconds per call of each path (measured when timed, modelled otherwise)."""
    return {key: dict(vars(choice)) for key, choice in _CACHE.items()}


def clear_auto_cache() -> None:
    """Forget every ``backend="auto"`` decision (they are re-made on the next call)."""
    _CACHE.clear()


def _direct(input, weight, bias, stride, padding, dilation, groups, padding_mode, args=None) -> Tensor:
    args = args or _check_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return _direct_conv(input, weight, bias, padding, args)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    return torch.jit.is_tracing() or torch.jit.is_scripting()


@torch.compiler.assume_constant_result  # under torch.compile: read when tracing, not traced
def _threads() -> int:
    return max(1, torch.get_num_threads())


def _model_seconds(input: Tensor, weight: Tensor, args, needs_grad: bool) -> tuple[float, float]:
    """Rough seconds per call of the direct and the FFT path.

    Constants fitted on the 2-core reference CPU (docs/fft_conv.md); only their
    ratio matters, and only to skip timing when it is lopsided, to pick which
    path to time first, and to decide under tracing or with calibration off.
    Depthwise direct convolutions run far below the dense rate, and their
    backward (weight gradient) is much slower still than their forward.
    """
    nd = args.nd
    batch = input.shape[0] if args.batched else 1
    cin, cout, per_group = input.shape[-nd - 1], weight.shape[0], weight.shape[1]
    sizes = tuple(input.shape[-nd:])
    kernel = tuple(weight.shape[2:])
    out = [(n + lo + hi - d * (k - 1) - 1) // s + 1
           for n, k, (lo, hi), s, d in zip(sizes, kernel, args.pads, args.stride, args.dilation)]
    outputs = batch * cout * math.prod(out)
    macs = outputs * per_group * math.prod(kernel)
    if per_group != 1:  # oneDNN's dense kernels: ~120 GMAC/s forward + backward on the reference CPU
        direct = (macs / 120e9 + outputs * 2e-9) * (3.5 if needs_grad else 1.0)
        # the FFT path's own model (fitted to dense and grouped layers, blocks included)
        return direct, _fft_seconds(input, weight, args) * (1.0 if needs_grad else 0.4)
    # Depthwise: oneDNN vectorises 2-D kernels up to 13x13 (a generic loop beyond, and in 1-D), dilation slows it
    # down, and its weight gradient is far slower than its forward.
    threads = _threads()
    taps = math.prod(kernel)
    dilated = any(d > 1 for d in args.dilation)
    work = outputs * (_DW_PER_OUTPUT + taps * _DW_RATE[0 if nd == 1 else 1 if taps <= 169 else 2])
    work *= _DW_DILATED if dilated else 1.0
    if needs_grad:
        work += macs * _DW_GRAD[0 if nd == 1 else 1] * (_DW_GRAD_DILATED if dilated else 1.0)
    direct = work / threads ** _DW_THREADS + _DW_CALL + (_DW_GRAD_CALL if needs_grad else 0.0)
    plan = _make_plan(sizes, kernel, args.pads, args.stride, args.dilation, args.groups,
                      args.padding_mode == "circular", input.device.type)
    points = math.prod(plan.fft)
    work = batch * (cin + cout) * points * (_FFT_PER_POINT + _FFT_PER_POINT_LOG * math.log2(max(points, 2)))
    if _packed_plan(weight, plan, batch):
        work *= _FFT_PACKED  # batch pairs packed as complex signals (functional/_packed.py)
    fft = (work / threads ** _FFT_THREADS + _FFT_CALL) * (_FFT_GRAD if needs_grad else 1.0)
    return direct, fft


def _timer(fn, device: torch.device):
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return once


def _timed_seconds(input, weight, bias, stride, padding, dilation, groups, padding_mode, args, needs_grad,
                   direct_first: bool) -> tuple[float, float]:
    """Measured seconds per call of (direct, fft). The path the model favours runs first (a warm-up
    and one timed run), then the other one (likewise a warm-up, which absorbs one-time costs such
    as primitive creation and FFT plans, and one timed run); unless that timed run of the other is
    already twice as slow and not tiny (a hopeless path costs two runs), both run
    :data:`CALIBRATION_REPS` more times, alternating, and each one's minimum counts."""
    def run(path):
        if not needs_grad:
            return lambda: path(input, weight, bias, stride, padding, dilation, groups, padding_mode)
        x = input.detach().requires_grad_(input.requires_grad)
        w = weight.detach().requires_grad_(weight.requires_grad)
        b = None if bias is None else bias.detach().requires_grad_(bias.requires_grad)

        def forward_backward():
            out = path(x, w, b, stride, padding, dilation, groups, padding_mode)
            out.backward(torch.ones_like(out))
        return forward_backward

    def direct(*a):
        return _direct(*a, args=args)

    def fft(x, w, b, *_):
        return _fft_conv(x, w, b, args)

    paths = [direct, fft] if direct_first else [fft, direct]
    with torch.enable_grad() if needs_grad else torch.no_grad():
        first, second = (_timer(run(path), input.device) for path in paths)
        first()
        best = first()
        second()
        other = second()
        if other < 2 * best or other < _MIN_MODEL_CALL:
            # alternate the runs so that a change of machine load hits both paths alike
            for _ in range(CALIBRATION_REPS):
                best, other = min(best, first()), min(other, second())
    return (best, other) if direct_first else (other, best)


def choose_backend(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> str:
    """The path (``"direct"`` or ``"fft"``) that ``backend="auto"`` takes for this call, calibrating
    and caching it on first sight of the key."""
    args = _check_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return _choose(input, weight, bias, stride, padding, dilation, groups, padding_mode, args).backend


def _choose(input, weight, bias, stride, padding, dilation, groups, padding_mode, args) -> _Choice:
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    key = (tuple(input.shape), tuple(weight.shape), args.stride, args.pads, args.dilation, groups,
           padding_mode, input.dtype, str(input.device), needs_grad)
    choice = _CACHE.get(key)
    if choice is not None:
        if choice.retime_in and not _compiling():
            if not _CALIBRATION["enabled"]:  # timing switched off since: the first timing is final
                choice = replace(choice, retime_in=0)
            elif choice.retime_in > 1:
                choice = replace(choice, retime_in=choice.retime_in - 1)
            else:
                direct, fft = _timed_seconds(input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                             args, needs_grad, direct_first=choice.backend == "direct")
                choice = _Choice("direct" if direct <= fft else "fft", "retimed", direct, fft)
            _CACHE[key] = choice
        return choice
    direct, fft = _model_seconds(input, weight, args, needs_grad)
    # Timing small calls is cheap, so the model only short-cuts large, lopsided ones; its constants
    # are fitted on a CPU, so on accelerators every shape is timed.
    lopsided = max(direct, fft) >= MODEL_MARGIN * min(direct, fft) and max(direct, fft) > _MIN_MODEL_CALL
    trusted = input.device.type == "cpu" and (lopsided or min(direct, fft) > _MAX_CALIBRATION_CALL)
    compiling = _compiling()
    if trusted or compiling or not _CALIBRATION["enabled"]:
        choice = _Choice("direct" if direct <= fft else "fft", "model", direct, fft)
    else:
        direct, fft = _timed_seconds(input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                     args, needs_grad, direct_first=direct <= fft)
        close = max(direct, fft) < RETIME_RATIO * min(direct, fft)
        choice = _Choice("direct" if direct <= fft else "fft", "timed", direct, fft, RETIME_AFTER if close else 0)
    if not compiling:  # a traced graph must not mutate Python state
        _CACHE[key] = choice
    return choice


def convolve(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "auto",
) -> Tensor:
    """Cross-correlate ``input`` with an already-built ``weight`` (torch.nn.functional.convNd semantics).

    Arguments as :func:`largekernel.functional.fft_conv`, plus ``padding_mode``
    as in ``torch.nn.ConvNd`` and ``backend``: ``"direct"`` (oneDNN / cuDNN),
    ``"fft"`` (:func:`fft_conv`) or ``"auto"`` (the faster of the two for this
    call shape, calibrated once per shape; see the module docstring).

    Example:
        >>> x, w = torch.randn(2, 8, 32, 32), torch.randn(8, 1, 21, 21)
        >>> y = convolve(x, w, padding="same", groups=8)  # FFT for this large depthwise kernel
        >>> y.shape
        torch.Size([2, 8, 32, 32])
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = _check_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if backend == "auto":
        backend = _choose(input, weight, bias, stride, padding, dilation, groups, padding_mode, args).backend
    if backend == "fft":
        return _fft_conv(input, weight, bias, args)
    return _direct(input, weight, bias, stride, padding, dilation, groups, padding_mode, args)
