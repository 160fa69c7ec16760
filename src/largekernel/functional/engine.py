"""The convolution engine: apply an already-built kernel by the direct or the FFT path.

Every layer family (dense, DCLS, FlexConv, NIFF-baked, SGConv, ...; seeds 001-003) builds
its kernel and then calls :func:`convolve`. The planner
(:mod:`largekernel.functional.planner`) turns the call into a plan; for
``backend="auto"`` the path its cost model predicts faster runs. That decision is a
function of the call alone: the same model, seed and input give the same bits in every
process.

Timing instead of the model is opt-in (like ``torch.backends.cudnn.benchmark``):
:func:`set_calibration` / the context :func:`calibration` (or the environment variable
``LARGEKERNEL_CALIBRATE=1``). Then, the first time a call shape is seen, both paths are
timed unless the model predicts one faster by :data:`MODEL_MARGIN` on a call that is not
tiny: a warm-up of each, then :data:`CALIBRATION_REPS` alternating runs, the minimum
counting. Choices are cached per call shape (:func:`auto_cache`, :func:`clear_auto_cache`);
nothing is timed or cached while tracing or compiling. Timed choices depend on the
machine's load, so two processes may then take different paths and differ in rounding.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from largekernel.functional._args import (ConvArgumentError, autocast_operands, complex_convolution,
                                          complex_operands, conv_args, flat_pads, real_parts)
from largekernel.functional._tracing import tracing
from largekernel.functional.fft_conv import run_fft
from largekernel.functional.planner import ConvPlan, make_plan
from largekernel.functional._fx import call_under_fx

__all__ = [
    "convolve",
    "execute",
    "choose_backend",
    "auto_cache",
    "clear_auto_cache",
    "set_calibration",
    "calibration",
    "BACKENDS",
    "MODEL_MARGIN",
    "CALIBRATION_REPS",
]

BACKENDS = ("auto", "direct", "fft")

#: With timing on, the model decides alone when it predicts one path faster by at least this factor.
MODEL_MARGIN = 4.0
#: Timed runs per path during calibration (after one warm-up); the minimum counts.
CALIBRATION_REPS = 3
#: Calls the model predicts slower than this (seconds) are not timed: calibration stays cheap.
_MAX_CALIBRATION_CALL = 1.0
#: Calls the model predicts faster than this (seconds, both paths) are always timed.
_MIN_MODEL_CALL = 0.02


@dataclass(frozen=True)
class _Choice:
    backend: str
    source: str  # "timed" or "model"
    direct_seconds: float
    fft_seconds: float


_CACHE: dict[tuple, _Choice] = {}
_CALIBRATION = {"enabled": os.environ.get("LARGEKERNEL_CALIBRATE", "0") == "1"}


def set_calibration(enabled: bool) -> bool:
    """Switch timing-based choices of ``backend="auto"`` on or off for this process (off by default: the
    planner's cost model decides, deterministically); returns the previous setting."""
    previous = _CALIBRATION["enabled"]
    _CALIBRATION["enabled"] = bool(enabled)
    return previous


@contextlib.contextmanager
def calibration(enabled: bool = True):
    """``with calibration():`` time both paths of new call shapes inside the block (see the module docstring)."""
    previous = set_calibration(enabled)
    try:
        yield
    finally:
        set_calibration(previous)


def auto_cache() -> dict[tuple, dict]:
    """A copy of the calibrated ``backend="auto"`` decisions: key -> backend, source ("timed"/"model") and
    the seconds per call of each path (measured when timed, modelled otherwise)."""
    return {key: dict(vars(choice)) for key, choice in _CACHE.items()}


def clear_auto_cache() -> None:
    """Forget every timed ``backend="auto"`` decision."""
    _CACHE.clear()


def _direct(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """torch's own convolution, with padding modes and per-side padding applied as ``torch.nn.ConvNd`` would."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(plan.kernel) - 1]
    if plan.padding_mode != "zeros":
        return conv(F.pad(input, flat_pads(plan.pads), mode=plan.padding_mode), weight, bias, plan.stride, 0,
                    plan.dilation, plan.groups)
    symmetric = tuple(min(lo, hi) for lo, hi in plan.pads)
    if _pad_first(plan, input):
        symmetric = (0,) * len(plan.kernel)
    extra = [(lo - p, hi - p) for (lo, hi), p in zip(plan.pads, symmetric)]
    if any(lo or hi for lo, hi in extra):
        input = F.pad(input, flat_pads(extra))  # (B, Cin, *partly padded)
    return conv(input, weight, bias, plan.stride, symmetric, plan.dilation, plan.groups)


def _pad_first(plan: ConvPlan, input: Tensor) -> bool:
    """Whether the zero padding goes in with ``F.pad`` first (torch's convolution then pads nothing): torch's CPU
    ``conv3d`` (oneDNN; torch 2.13 and 2.14.1) computes a wrong weight gradient for some strided, zero-padded
    shapes, values of 1e7 and more that change from run to run and at times a corrupted heap ("malloc():
    unaligned tcache chunk detected"): kernel 7, stride 2, padding 3 on an input 5 to 7 long, batch >= 2, among
    others (one random 3-D configuration in 500). Padded first, the gradient is right (every configuration
    checked). Only where that gradient may be computed: 3-D, on the CPU, strided and padded, with autograd on
    (``weight.requires_grad`` is not asked: torch.func's transforms compute gradients of tensors that say False)."""
    return (len(plan.kernel) == 3 and input.device.type == "cpu" and any(s > 1 for s in plan.stride)
            and any(lo or hi for lo, hi in plan.pads) and torch.is_grad_enabled())


def _run(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if plan.path == "direct":
        return _direct(plan, input, weight, bias)
    return run_fft(plan, input, weight, bias)


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


def _timed_seconds(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None,
                   direct_first: bool) -> tuple[float, float]:
    """Measured seconds per call of (direct, fft): the favoured path first (a warm-up and one timed run), then
    the other; unless the other's timed run is already twice as slow and not tiny, both run
    :data:`CALIBRATION_REPS` more times, alternating, and each one's minimum counts."""
    def run(path: str):
        chosen = replace(plan, path=path if path == "direct" else "overlap-save" if plan.segments else "fft")
        if not plan.needs_grad:
            return lambda: _run(chosen, input, weight, bias)
        x = input.detach().requires_grad_(input.requires_grad)
        w = weight.detach().requires_grad_(weight.requires_grad)
        b = None if bias is None else bias.detach().requires_grad_(bias.requires_grad)

        def forward_backward():
            out = _run(chosen, x, w, b)
            out.backward(torch.ones_like(out))
        return forward_backward

    paths = ["direct", "fft"] if direct_first else ["fft", "direct"]
    with torch.enable_grad() if plan.needs_grad else torch.no_grad():
        first, second = (_timer(run(path), input.device) for path in paths)
        first()
        best = first()
        second()
        other = second()
        if other < 2 * best or other < _MIN_MODEL_CALL:
            for _ in range(CALIBRATION_REPS):  # alternating: a change of machine load hits both paths alike
                best, other = min(best, first()), min(other, second())
    return (best, other) if direct_first else (other, best)


def _key(plan: ConvPlan, input: Tensor) -> tuple:
    return (tuple(input.shape), plan.out_channels, plan.kernel, plan.stride, plan.pads, plan.dilation, plan.groups,
            plan.padding_mode, plan.dtype, str(input.device), plan.needs_grad)


def _timed(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None) -> ConvPlan:
    """With calibration on: the cached or newly timed choice for this call shape, as a plan."""
    key = _key(plan, input)
    choice = _CACHE.get(key)
    if choice is None:
        direct, fft = plan.direct_seconds, plan.fft_seconds
        lopsided = max(direct, fft) >= MODEL_MARGIN * min(direct, fft) and max(direct, fft) > _MIN_MODEL_CALL
        if input.device.type == "cpu" and (lopsided or min(direct, fft) > _MAX_CALIBRATION_CALL):
            choice = _Choice("direct" if direct <= fft else "fft", "model", direct, fft)
        else:
            direct, fft = _timed_seconds(plan, input, weight, bias, direct_first=direct <= fft)
            choice = _Choice("direct" if direct <= fft else "fft", "timed", direct, fft)
        _CACHE[key] = choice
    path = "direct" if choice.backend == "direct" else "overlap-save" if plan.segments else "fft"
    return replace(plan, path=path, source=choice.source, direct_seconds=choice.direct_seconds,
                   fft_seconds=choice.fft_seconds)


def _plan(input, weight, bias, stride, padding, dilation, groups, padding_mode, backend):
    if backend not in BACKENDS:
        raise ConvArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = conv_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    plan = make_plan(args, input, weight, bias, backend)
    if backend == "auto" and _CALIBRATION["enabled"] and not tracing():
        plan = _timed(plan, input, weight, bias)
    return plan


def choose_backend(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | tuple[tuple[int, int], ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> str:
    """The path (``"direct"`` or ``"fft"``) that ``backend="auto"`` takes for this call (with calibration on,
    timing and caching it on first sight of the call shape)."""
    input, weight, bias = real_parts(*autocast_operands(input, weight, bias))  # (complex: three real calls)
    plan = _plan(input, weight, bias, stride, padding, dilation, groups, padding_mode, "auto")
    return "direct" if plan.path == "direct" else "fft"


@call_under_fx
def convolve(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | tuple[tuple[int, int], ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "auto",
) -> Tensor:
    """Cross-correlate ``input`` with an already-built ``weight`` (``torch.nn.functional.convNd`` semantics).

    Arguments as :func:`largekernel.functional.fft_conv` (``padding`` also per side,
    ``((before, after), ...)``: causal is ``((k - 1, 0),)``), plus ``padding_mode`` as in
    ``torch.nn.ConvNd`` and ``backend``: ``"direct"`` (oneDNN / cuDNN), ``"fft"``
    (:func:`fft_conv`) or ``"auto"`` (the path the planner predicts faster for this call;
    timed instead when calibration is switched on, see the module docstring). Under
    ``torch.autocast`` the operands are cast to the autocast dtype, as torch's
    convolutions are.

    Example:
        >>> x, w = torch.randn(2, 8, 32, 32), torch.randn(8, 1, 21, 21)
        >>> y = convolve(x, w, padding="same", groups=8)  # FFT for this large depthwise kernel
        >>> y.shape
        torch.Size([2, 8, 32, 32])
    """
    input, weight, bias = autocast_operands(input, weight, bias)
    if complex_operands(input, weight, bias):
        return complex_convolution(lambda x, w, b: convolve(x, w, b, stride, padding, dilation, groups, padding_mode,
                                                            backend), input, weight, bias)
    return _run(_plan(input, weight, bias, stride, padding, dilation, groups, padding_mode, backend), input, weight,
                bias)


def execute(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Run ``plan`` (from :func:`~largekernel.functional.plan_conv`, possibly changed with
    ``dataclasses.replace``, e.g. ``path="direct"``) on operands of the shapes it was made for."""
    input, weight, bias = autocast_operands(input, weight, bias)
    if complex_operands(input, weight, bias):
        return complex_convolution(lambda x, w, b: execute(plan, x, w, b), input, weight, bias)
    args = conv_args(input, weight, bias, plan.stride, plan.pads, plan.dilation, plan.groups, plan.padding_mode)
    shape = make_plan(args, input, weight, bias, "direct")
    fields = ("batch", "in_channels", "out_channels", "size", "kernel", "out")
    if any(getattr(shape, f) != getattr(plan, f) for f in fields):
        raise ConvArgumentError(f"plan was made for {', '.join(f'{f}={getattr(plan, f)}' for f in fields)}; the "
                                f"operands have {', '.join(f'{f}={getattr(shape, f)}' for f in fields)}")
    if plan.path not in ("direct", "fft", "overlap-save"):
        raise ConvArgumentError(f"plan.path must be 'direct', 'fft' or 'overlap-save', got {plan.path!r}")
    if (plan.path == "overlap-save") != bool(plan.segments) and plan.path != "direct":
        raise ConvArgumentError(f"plan.path={plan.path!r} does not match the plan's geometry (segments="
                                f"{plan.segments}); use planner_options(segments=...) to plan with or without "
                                f"overlap-save segments")
    return _run(plan, input, weight, bias)
