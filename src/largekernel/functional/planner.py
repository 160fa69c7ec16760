"""The planner: one function turns a convolution call into a plan, and one home for every cost constant.

A call (shapes, stride, padding per side, dilation, groups, dtype, device, whether
gradients are needed) becomes a :class:`ConvPlan`: the path (``"direct"``,
``"fft"`` or ``"overlap-save"``), the transform lengths, whether channel pairs are
packed as complex signals, the channel blocks, and the predicted seconds of each
path. A plan is a value: printable, comparable, and computed from the call alone,
so the same call gets the same plan (and the same bits) in every process. The
engine (:mod:`largekernel.functional.engine`) compares the paths' predictions for
``backend="auto"``; the FFT executor (:mod:`largekernel.functional.fft_conv`) runs
the geometry it is given and decides nothing itself.

The cost constants were fitted on the project's reference CPU (2-core Xeon,
torch 2.13, docs/fft_conv.md); only ratios matter. On CUDA the rule is a separate,
documented one (docs/cuda.md; :func:`_cuda_fft_seconds` and the CUDA branch of
:func:`_direct_seconds`): transforms cost what they read and write, cuDNN's direct
path what it multiplies, at that device's throughputs; it also decides overlap-save
segments there.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from largekernel.functional._args import ConvArgs, conv_args, real_parts
from largekernel.functional._tracing import constant_result, exporting_onnx, size_hint, symbolic, tracing

__all__ = ["ConvPlan", "FFTGeometry", "plan_conv", "plan_filter", "planner_options", "fast_fft_length"]

# ----------------------------------------------------------------------------- FFT lengths


def _factor(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


def _cost_per_element(n: int, device_type: str) -> float:
    """Relative time per element of a length-``n`` transform (1.0 = a smooth even length).

    CPU (pocketfft / MKL, measured on the reference machine, see docs/fft_conv.md): powers
    of two are fastest, then even 7-smooth lengths; odd lengths and factors 11/13
    cost ~1.3-1.8x, 17-23 ~2.5x, larger primes ~4x. cuFFT has fast kernels for 2, 3, 5, 7 only and
    falls back to Bluestein (~3 transforms of twice the size) otherwise. ``"onnx"`` (a graph recorded by
    ``torch.onnx.export``): ONNX Runtime's CPU ``DFT`` is a radix-2 FFT for powers of two only; other lengths
    run slower and lose float32 precision (4e-4 at length 1050), so powers of two win.
    """
    if n & (n - 1) == 0:  # powers of two: radix-4 passes, ~15% cheaper per element than other smooth lengths
        return 0.85
    largest = max(_factor(n))
    if device_type == "cuda":
        return 1.0 if largest <= 7 else 4.0
    if device_type == "onnx":
        return 8.0
    if largest <= 7:
        return 1.0 if n % 2 == 0 else 1.7
    if largest <= 13:
        return 1.3 if n % 2 == 0 else 1.8
    return 2.5 if largest <= 23 else 4.0


def _smooth_numbers(stop: int) -> list[int]:
    """All products of 2, 3, 5, 7, 11 and 13 below ``stop``, sorted."""
    numbers = [1]
    for p in (2, 3, 5, 7, 11, 13):
        numbers = [n * p**e for n in numbers for e in range(int(math.log(stop / n, p)) + 2) if n * p**e < stop]
    return sorted(numbers)


@constant_result  # under torch.compile: evaluated while tracing, a constant
def fast_fft_length(minimum: int, device_type: str = "cpu", multiple_of: int = 1) -> int:
    """The fastest FFT length ``n >= minimum`` (and a multiple of ``multiple_of``) by the cost model.

    The model is ``n * (2 + cost_per_element(n) * log2 n)``: the transform plus the
    elementwise work (products, copies) that grows with ``n``. Deterministic.
    """
    if minimum < 1:
        raise ValueError(f"minimum must be positive, got {minimum}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be positive, got {multiple_of}")
    return _fast_length(minimum, device_type, multiple_of)


@lru_cache(maxsize=4096)
def _fast_length(minimum: int, device_type: str, multiple_of: int) -> int:
    start = -(-minimum // multiple_of) * multiple_of
    stop = 2 * start + multiple_of
    if start <= 256:
        candidates = range(start, stop, multiple_of)
    else:  # long signals: only 13-smooth lengths can win, and there are few of them
        candidates = [n for n in _smooth_numbers(stop) if n >= start and n % multiple_of == 0] or [start]
    best, best_cost = start, math.inf
    for n in candidates:
        cost = n * (2.0 + _cost_per_element(n, device_type) * math.log2(max(n, 2)))
        if cost < best_cost:
            best, best_cost = n, cost
    return best


# ----------------------------------------------------------------------------- cost constants (reference CPU)

# The depthwise direct model (seconds; per output element, per multiply-add, per call; the work divided by
# threads ** exponent), fitted by least squares on the log error to 57 depthwise layers (1-D and 2-D, batch
# 1-128, 8-4096 samples, kernels 3-1025, dilation 1 and 9), forward and forward+backward, with 1 and 2 threads
# (docs/fft_conv.md).
_DW_PER_OUTPUT = 7.1e-10
_DW_RATE = (3.8e-10, 1.6e-11, 5.7e-10)  # per multiply-add: 1-D, 2-D up to 13x13 (vectorised), larger 2-D
_DW_DILATED = 1.22
_DW_CALL = 5.7e-5
_DW_GRAD = (7.3e-10, 7.2e-10)  # the weight gradient, per multiply-add: 1-D, N-D
_DW_GRAD_DILATED = 3.36
_DW_GRAD_CALL = 3.6e-4
_DW_THREADS = 0.79  # exponent of the thread count the work is divided by
# oneDNN's dense and grouped kernels: multiply-adds per second forward, per output element, backward factor
_DENSE_RATE = 120e9
_DENSE_PER_OUTPUT = 2e-9
_DENSE_GRAD = 3.5
# The elementwise (depthwise) FFT path: per transform row (batch x (in + out)) and point, plus a log2(points)
# term; packed channel pairs; per call; backward factor; thread exponent.
_FFT_PER_POINT = 5.0e-10
_FFT_PER_POINT_LOG = 1.26e-10
_FFT_PACKED = 0.95
_FFT_CALL = 3.3e-4
_FFT_GRAD = 2.3
_FFT_THREADS = 0.98
# The contracting (dense, grouped) FFT path, forward + backward, fitted to nine dense and grouped layers (1-D and
# 2-D, with and without overlap-save segments) at 2 threads: per element of an activation transform row
# (B * (Cin + Cout) rows), per element of a kernel buffer row (Cout * Cin/g rows; by whether channels are
# contracted), per complex multiply-add of the contraction, per call, per segmented call; a forward alone.
_COST_ACTIVATION = 2.95e-9
_COST_KERNEL = {True: 3.48e-9, False: 1.2e-9}
_COST_MAC = 0.111e-9
_COST_CALL = 0.5e-3
_COST_SEGMENTS = 0.2e-3
_COST_FORWARD = 0.4
# Overlap-save: segments only when modelled at least 20% cheaper than one whole-signal transform; segment
# lengths tried: fast lengths near these multiples of the dilated kernel extent. N-D segments measured slower
# (segment copies, small transforms): 1-D only.
_SEGMENT_GAIN = 0.8
_SEGMENT_FACTORS = (2, 3, 4, 6, 8, 12, 16)
# torch's CPU bmm runs products of fewer than this many multiply-adds (rows * cols * inner) as one plain loop over
# the batch, fast for complex; larger channel contractions go to a real bmm over frequency-major operands.
_SMALL_CONTRACTION = 400
# Packed channel pairs (two real signals as one complex one): on the CPU, for 2-D and 3-D grids (1-D: real
# transforms measured faster). Channel blocks: bytes of one block's spectra, packed and real (about one core's
# L2 cache; measured best on the reference CPU); devices where blocks pay.
_PACKED_DEVICES = ("cpu",)
_PACKED_MIN_NDIM = 2
_BLOCK_BYTES = 2 ** 21
_REAL_BLOCK_BYTES = 2 ** 23
_BLOCK_DEVICES = ("cpu",)
# CUDA (a rule, not a fit: docs/fft_conv.md): bytes per second a transform pass moves, multiply-adds per second
# of cuDNN's dense and depthwise kernels, and per-call launch overhead.
_CUDA_BANDWIDTH = 2.0e12
_CUDA_DENSE_RATE = 100e12
_CUDA_DEPTHWISE_RATE = 2.0e12
_CUDA_CALL = 2e-5


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class FFTGeometry:
    """What the spectral executor needs for one call: transform grid, placement, products, blocks.

    The input sits at the origin of a zero-filled ``grid``; output sample ``j`` per dim is sample
    ``out_start + j * stride`` of the circular result. A spatial ``kernel`` (torch layout) has tap ``t``
    at ``(t * dilation - shift) mod grid`` (a correlation); ``kernel=None`` means the caller gives a
    (convolution) filter on the grid. ``packed``: channel pairs travel as one complex signal;
    ``channel_block``: groups (or, packed, channel pairs) per cache-sized block; ``contraction``:
    ``"elementwise"`` (one input channel per group), ``"einsum"`` or ``"bmm"`` (channel contractions).
    """

    grid: tuple[int, ...]
    size: tuple[int, ...]
    out: tuple[int, ...]
    out_start: tuple[int, ...]
    stride: tuple[int, ...]
    kernel: tuple[int, ...] | None
    dilation: tuple[int, ...]
    shift: tuple[int, ...]
    groups: int
    packed: bool
    channel_block: int
    contraction: str


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution call runs. ``path``: ``"direct"`` (torch's conv), ``"fft"`` or ``"overlap-save"``
    (FFT on overlapping segments, 1-D); ``pre_pad``: the padding is materialised with ``F.pad`` first
    (reflect, replicate, and circular padding longer than one period); ``geometry``: the FFT path's
    transforms (per segment for overlap-save), ``segments``: ``(valid outputs, count)`` per dim;
    ``direct_seconds`` / ``fft_seconds``: the predictions (or timings, ``source="timed"``) compared."""

    path: str
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    padding_mode: str
    out: tuple[int, ...]
    device: str
    dtype: torch.dtype
    needs_grad: bool
    direct_seconds: float
    fft_seconds: float
    source: str = "model"
    pre_pad: bool = False
    geometry: FFTGeometry | None = field(default=None, repr=False)
    segments: tuple[tuple[int, int], ...] | None = None

    @property
    def seconds(self) -> float:
        """Predicted (or timed) seconds of this plan's path."""
        return self.direct_seconds if self.path == "direct" else self.fft_seconds


# ----------------------------------------------------------------------------- user overrides

_OVERRIDES = threading.local()


@constant_result  # under torch.compile: read while tracing, a constant
def _option(name: str):
    return getattr(_OVERRIDES, "options", {}).get(name)


@contextlib.contextmanager
def planner_options(*, packed: bool | None = None, channel_block: int | None = None,
                    segments: bool | None = None):
    """Override the planner's choices inside a ``with`` block (this thread / task only).

    ``packed``: pack channel pairs where possible (True) or never (False); ``channel_block``: groups
    (or channel pairs) per block; ``segments``: allow (True, where the geometry permits) or forbid (False)
    overlap-save segments. ``None`` leaves a choice to the planner. For debugging and testing every path;
    results agree to rounding whatever the choice. Under ``torch.compile`` the options are read when tracing.
    """
    if channel_block is not None and (isinstance(channel_block, bool) or not isinstance(channel_block, int)
                                      or channel_block < 1):
        raise ValueError(f"channel_block must be a positive int, got {channel_block!r}")
    options = {k: v for k, v in (("packed", packed), ("channel_block", channel_block), ("segments", segments))
               if v is not None}
    previous = getattr(_OVERRIDES, "options", {})
    _OVERRIDES.options = {**previous, **options}
    try:
        yield
    finally:
        _OVERRIDES.options = previous


@constant_result  # under torch.compile: read when tracing, not traced
def _threads() -> int:
    return max(1, torch.get_num_threads())


# ----------------------------------------------------------------------------- geometry


def _circular_wraps(size, kernel, args: ConvArgs) -> bool:
    """Whether circular padding yields more outputs than one period (then it is materialised)."""
    return any((keep - 1) * s >= n for n, keep, s in zip(size, args.output_size(size, kernel), args.stride))


def _whole_grid(size, kernel, pads, args: ConvArgs, circular: bool, device_type: str) -> tuple[int, ...]:
    """Per dim, the smallest fast length with no wrap-around onto a kept output (docs/fft_conv.md): the input
    at offset 0, the kernel shifted by the padding before; ``circular``: one period."""
    if circular:
        return tuple(size)
    return tuple(fast_fft_length(max(_reach(n, k, lo, hi, s, d)), device_type, s)
                 for n, k, (lo, hi), s, d in zip(size, kernel, pads, args.stride, args.dilation))


def _transformed(size, args: ConvArgs, pre_pad: bool) -> tuple[tuple, tuple]:
    """The input extent the transforms see and the padding left to them: with ``pre_pad`` (padding materialised
    first), the padded input and no padding."""
    if not pre_pad:
        return tuple(size), args.pads
    return tuple(n + lo + hi for n, (lo, hi) in zip(size, args.pads)), ((0, 0),) * args.nd


def _reach(n, k, lo, hi, s, d) -> tuple:
    """What a grid must hold in one dim, each at most its length: the input (at 0) and its padding before (a
    shift of the kernel), and the last kept output's window, by its end and by its first sample. ``n`` may be
    a symbolic size (then each is a symbolic expression)."""
    extent = d * (k - 1) + 1
    last = (n + lo + hi - extent) // s * s  # where the last kept output's window starts (before the shift)
    return n + lo, last + extent - lo, last + 1


def _contraction(batch: int, per: int, cin_per_group: int) -> str:
    if cin_per_group == 1:
        return "elementwise"
    return "bmm" if batch * per * cin_per_group >= _SMALL_CONTRACTION else "einsum"


def _packs(device_type: str, nd: int, contraction: str, stride, channels: int) -> bool:
    forced = _option("packed")
    if forced is False:
        return False
    possible = contraction == "elementwise" and all(s == 1 for s in stride) and channels >= 2
    if forced:
        return possible
    return possible and device_type in _PACKED_DEVICES and nd >= _PACKED_MIN_NDIM


def _channel_block(device_type: str, groups: int, bytes_per_group: int, packed: bool) -> int:
    """Groups (channel pairs when packed) per block: about :data:`_BLOCK_BYTES` of spectra (one block off
    :data:`_BLOCK_DEVICES`).

    An elementwise spectral product treats channels independently, so transform, product and inverse
    transform run block by block: each block's intermediates stay in cache and its buffers are recycled by
    the allocator, where whole-activation intermediates would each make a trip to memory (docs/fft_conv.md).
    """
    units = (groups + 1) // 2 if packed else groups
    forced = _option("channel_block")
    if forced is not None:
        return min(forced, units)
    if device_type not in _BLOCK_DEVICES:
        return units
    budget = _BLOCK_BYTES if packed else _REAL_BLOCK_BYTES
    return max(1, min(units, budget // max(1, bytes_per_group)))


def _geometry(grid, size, out, stride, kernel, dilation, shift, batch, cin, cout, groups, device_type,
              itemsize) -> FFTGeometry:
    per, i = cout // groups, cin // groups
    contraction = _contraction(batch, per, i)
    packed = _packs(device_type, len(grid), contraction, stride, cin)
    points = math.prod(grid)
    if packed:  # one pair's packed signal, complex, over the batch (its outputs: per times that)
        unit = batch * points * 2 * itemsize * per
    else:  # one group's half spectra, input and output
        unit = batch * (points // grid[-1]) * (grid[-1] // 2 + 1) * 2 * itemsize * (i + per)
    block = _channel_block(device_type, groups, unit, packed) if contraction == "elementwise" else groups
    return FFTGeometry(tuple(grid), tuple(size), tuple(out), (0,) * len(grid), tuple(stride),
                       None if kernel is None else tuple(kernel), tuple(dilation), tuple(shift), groups, packed,
                       block, contraction)


# ----------------------------------------------------------------------------- cost models


def _cuda_fft_seconds(batch: int, cin: int, cout: int, cin_per_group: int, transform: int, buffer: int,
                      needs_grad: bool) -> float:
    """The FFT path on CUDA (a rule, not a fit): every transform pass reads and writes complex values of the
    activation rows (``transform`` elements each) and the kernel buffer rows (``buffer`` each) at the device's
    bandwidth, plus a launch overhead per pass."""
    rows = batch * (cin + cout) * transform + cout * cin_per_group * buffer
    passes = 6 if needs_grad else 3
    return rows * 8 * passes / _CUDA_BANDWIDTH + _CUDA_CALL * (8 if needs_grad else 4)


def _contracting_seconds(batch: int, cin: int, cout: int, cin_per_group: int, transform: int, buffer: int) -> float:
    """Forward + backward of the contracting FFT path with ``transform`` elements per activation row and a
    kernel buffer of ``buffer`` elements per (out, in) pair."""
    contract = cin_per_group > 1
    total = _COST_CALL + _COST_ACTIVATION * batch * (cin + cout) * transform
    total += _COST_KERNEL[contract] * cout * cin_per_group * buffer
    return total + (_COST_MAC * batch * transform * cout * cin_per_group if contract else 0.0)


def _segments(size, kernel, pads, args: ConvArgs, grid, batch, cin, cout, device_type):
    """Overlap-save: ``(length, valid, count)`` per dim where the cost model prefers segments to the
    whole-signal ``grid``, or None."""
    forced = _option("segments")
    if len(size) != 1 or forced is False:
        return None
    dims = []  # per dim: (length, valid, count) choices; the first is one explicitly padded segment
    for n, k, (lo, hi), s, d, whole in zip(size, kernel, pads, args.stride, args.dilation, grid):
        extent = d * (k - 1) + 1
        keep = (n + lo + hi - extent) // s + 1
        choices = [(fast_fft_length((keep - 1) * s + extent, device_type, s), keep, 1)]
        for factor in _SEGMENT_FACTORS:
            length = fast_fft_length(factor * extent, device_type, s)
            valid = (length - extent) // s + 1
            count = -(-keep // valid)
            if 2 * length <= whole and count > 1 and (length, valid, count) not in choices:
                choices.append((length, valid, count))
        dims.append(choices)
    if all(len(d) == 1 for d in dims):
        return None
    per_group = cin // args.groups

    def seconds(transform: int, buffer: int) -> float:
        if device_type == "cuda":
            return _cuda_fft_seconds(batch, cin, cout, per_group, transform, buffer, True)
        return _contracting_seconds(batch, cin, cout, per_group, transform, buffer)

    def cost(choice) -> float:
        # (math.prod of lists, not generators, here and below: torch.compile evaluates the planner while tracing)
        transform = math.prod([length * count for length, _, count in choice])
        buffer = math.prod([length for length, _, _ in choice])
        return seconds(transform, buffer) + (_CUDA_CALL if device_type == "cuda" else _COST_SEGMENTS)

    whole = seconds(math.prod(grid), math.prod(grid))
    best = min(itertools.product(*dims), key=cost)
    if all(count == 1 for _, _, count in best):
        return None
    if not forced and cost(best) > _SEGMENT_GAIN * whole:
        return None
    return best


def _direct_seconds(batch, cin, cout, groups, size, kernel, out, args: ConvArgs, needs_grad: bool,
                    device_type: str) -> float:
    """Rough seconds per call of torch's convolution (forward, plus backward when ``needs_grad``)."""
    per_group = cin // groups
    outputs = batch * cout * math.prod(out)
    macs = outputs * per_group * math.prod(kernel)
    if device_type == "cuda":
        rate = _CUDA_DENSE_RATE if per_group > 1 else _CUDA_DEPTHWISE_RATE
        return (macs / rate + _CUDA_CALL) * (3.0 if needs_grad else 1.0)
    if per_group != 1:
        return (macs / _DENSE_RATE + outputs * _DENSE_PER_OUTPUT) * (_DENSE_GRAD if needs_grad else 1.0)
    # Depthwise: oneDNN vectorises 2-D kernels up to 13x13 (a generic loop beyond, and in 1-D), dilation slows it
    # down, and its weight gradient is far slower than its forward.
    nd, threads, taps = len(size), _threads(), math.prod(kernel)
    dilated = any(d > 1 for d in args.dilation)
    work = outputs * (_DW_PER_OUTPUT + taps * _DW_RATE[0 if nd == 1 else 1 if taps <= 169 else 2])
    work *= _DW_DILATED if dilated else 1.0
    if needs_grad:
        work += macs * _DW_GRAD[0 if nd == 1 else 1] * (_DW_GRAD_DILATED if dilated else 1.0)
    return work / threads ** _DW_THREADS + _DW_CALL + (_DW_GRAD_CALL if needs_grad else 0.0)


def _fft_seconds(batch, cin, cout, geometry: FFTGeometry, segments, needs_grad: bool, device_type: str) -> float:
    """Rough seconds per call of the FFT path with this geometry (and overlap-save ``segments``)."""
    count = 1 if segments is None else math.prod([c for _, c in segments])
    transform = math.prod(geometry.grid) * count  # elements per activation row
    buffer = math.prod(geometry.grid)
    if device_type == "cuda":
        return _cuda_fft_seconds(batch, cin, cout, cin // geometry.groups, transform, buffer, needs_grad)
    extra = _COST_SEGMENTS if segments is not None else 0.0
    if geometry.contraction != "elementwise" or segments is not None:
        seconds = _contracting_seconds(batch, cin, cout, cin // geometry.groups, transform, buffer) + extra
        return seconds * (1.0 if needs_grad else _COST_FORWARD)
    points = transform
    work = batch * (cin + cout) * points * (_FFT_PER_POINT + _FFT_PER_POINT_LOG * math.log2(max(points, 2)))
    if geometry.packed:
        work *= _FFT_PACKED
    return (work / _threads() ** _FFT_THREADS + _FFT_CALL) * (_FFT_GRAD if needs_grad else 1.0)


# ----------------------------------------------------------------------------- the planner


def _needs_grad(input, weight, bias) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))


def make_plan(args: ConvArgs, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              backend: str = "auto") -> ConvPlan:
    """The plan of a validated call (``args`` from :func:`~largekernel.functional._args.conv_args`):
    ``backend="fft"`` / ``"direct"`` force the path, ``"auto"`` takes the one predicted faster."""
    nd = args.nd
    # Python ints of the shapes (operator.index: jit traces sizes as tensors). Channels and kernel taps are fixed in
    # a graph (the weight's shape). The batch and the spatial sizes only weigh the paths' costs and size the FFT
    # grid: in a recorded graph with dynamic shapes they are read as their example's values without a guard
    # (size_hint), and the plan is then bound to the graph's own sizes (_bind_sizes).
    batch = size_hint(input.shape[0]) if args.batched else 1
    cin, cout = operator.index(input.shape[-nd - 1]), operator.index(weight.shape[0])
    kernel = tuple(map(operator.index, weight.shape[2:]))
    # Transform lengths for ONNX Runtime's DFT when the plan is recorded into an ONNX graph.
    lengths_for = "onnx" if exporting_onnx() else input.device.type
    options = (_option("packed"), _option("channel_block"), _option("segments"))
    call = (input.device.type, input.dtype, _needs_grad(input, weight, bias), backend, _threads())
    if not tracing():  # a pure function of the call: its plans are kept (planning costs tens of microseconds)
        return _plan(args, batch, cin, cout, tuple(map(operator.index, input.shape[-nd:])), kernel, *call, options,
                     lengths_for)
    # A recorded graph plans once, at the example's sizes (:func:`_recorded_plan`), and binds the plan to its own.
    # Overlap-save segments come in a count that follows the length: none for a symbolic length (torch.export shows
    # it as a SymInt; Dynamo shows ints, and _bind_sizes fixes the length of a segmented plan instead).
    sizes = tuple(input.shape[-nd:])
    if symbolic(sizes):
        options = (*options[:2], False)
    fields = (args.nd, args.batched, args.stride, args.dilation, args.pads, args.groups, args.padding_mode)
    values = _recorded_plan(fields, batch, cin, cout, tuple(map(size_hint, sizes)), kernel, *call, options,
                            lengths_for)
    g = _GEOMETRY_FIELD
    plan = ConvPlan(*values[:g], None if values[g] is None else FFTGeometry(*values[g]), *values[g + 1:])
    return _bind_sizes(plan, args, sizes)


_GEOMETRY_FIELD = ConvPlan.__match_args__.index("geometry")


@constant_result
def _recorded_plan(fields: tuple, *key) -> tuple:
    """:func:`_plan` for a recorded graph, on the :class:`ConvArgs` ``fields``, as the plan's field values (the
    geometry's as a tuple in its place). Dynamo calls it while tracing and keeps the values as constants (its
    arguments are the example's Python values) instead of tracing the planner, every value of which it would guard
    on each call of the compiled code (41 of the 233 guards of one compiled FFT ``Conv2d``). Flattened by hand, one
    level: ``dataclasses.astuple`` deep-copies the values, and a copy of a size ``torch.jit.trace`` records is a
    constant (a traced SGConv2d then failed its trace check)."""
    plan = _plan(ConvArgs(*fields), *key)
    return tuple(tuple(getattr(value, name) for name in FFTGeometry.__match_args__)
                 if isinstance(value, FFTGeometry) else value
                 for value in (getattr(plan, name) for name in ConvPlan.__match_args__))


def _replaced(obj, **changes):
    """``dataclasses.replace(obj, **changes)`` for the planner's frozen dataclasses, whose fields are all
    ``__init__``'s, in ``__match_args__``'s order. ``torch.compile`` traces the planner: ``dataclasses.replace``
    reads every field's metadata there, each read a guard checked on every call of the compiled code (75 of the 308
    guards of one compiled FFT ``Conv2d``, 32 of them in Python); this reads the field names only."""
    return type(obj)(*[changes[name] if name in changes else getattr(obj, name) for name in type(obj).__match_args__])


def _bind_sizes(plan: ConvPlan, args: ConvArgs, sizes: tuple) -> ConvPlan:
    """A plan made from the example sizes of a recorded graph, for the graph's own (possibly symbolic) ``sizes``.

    The direct path reads no size. The FFT path keeps the example's grid: its output and input extents follow
    ``sizes``, and a guard keeps every size whose circular correlation fits that grid without wrapping onto a kept
    output, i.e. every size up to about the example's (``torch.compile`` compiles again for a larger one;
    ``torch.export`` asks for a dimension bounded by it). Where the grid is the input itself (circular padding on
    one period) or overlap-save segments split it, the sizes are fixed to the example's."""
    if plan.path == "direct":
        return plan
    if (args.padding_mode == "circular" and not plan.pre_pad) or plan.segments is not None:
        tuple(map(operator.index, sizes))  # the guard: these sizes exactly
        return plan
    fft_size, pads = _transformed(sizes, args, plan.pre_pad)
    for n, k, (lo, hi), s, d, length in zip(fft_size, plan.kernel, pads, args.stride, args.dilation,
                                             plan.geometry.grid):
        if not all(reach <= length for reach in _reach(n, k, lo, hi, s, d)):
            # (unreachable for the example the grid was made for; for a symbolic size, the test is the guard)
            raise AssertionError(f"input size {n} does not fit the FFT grid {length} planned for it")
    out = args.output_size(sizes, plan.kernel)
    geometry = _replaced(plan.geometry, size=fft_size, out=tuple(out))
    return _replaced(plan, size=tuple(sizes), out=tuple(out), geometry=geometry)


@lru_cache(maxsize=8192)
def _plan(args: ConvArgs, batch: int, cin: int, cout: int, size: tuple[int, ...], kernel: tuple[int, ...],
          device_type: str, dtype: torch.dtype, needs_grad: bool, backend: str, threads: int, options: tuple,
          lengths_for: str) -> ConvPlan:
    """:func:`make_plan` on the call's values (``threads``, ``options``: what the cost model and the planner options
    read, part of the key; ``lengths_for``: the device type, or ``"onnx"``, whose fast transform lengths the grid
    takes)."""
    nd = args.nd
    out = args.output_size(size, kernel)
    # the FFT path computes half precision in float32
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    itemsize = torch.empty((), dtype=compute).element_size()
    circular = args.padding_mode == "circular"
    pre_pad = args.padding_mode in ("reflect", "replicate") or (circular and _circular_wraps(size, kernel, args))
    circular = circular and not pre_pad
    fft_size, pads = _transformed(size, args, pre_pad)
    grid = _whole_grid(fft_size, kernel, pads, args, circular, lengths_for)
    segments = None if circular else _segments(fft_size, kernel, pads, args, grid, batch, cin, cout, lengths_for)
    if segments is None:
        geometry = _geometry(grid, fft_size, out, args.stride, kernel, args.dilation, [lo for lo, _ in pads],
                             batch, cin, cout, args.groups, device_type, itemsize)
    else:
        length = tuple(c[0] for c in segments)
        valid = tuple(c[1] for c in segments)
        geometry = _geometry(length, length, valid, args.stride, kernel, args.dilation, (0,) * nd,
                             batch * math.prod([c[2] for c in segments]), cin, cout, args.groups, device_type,
                             itemsize)
        segments = tuple((v, c) for _, v, c in segments)
    direct = _direct_seconds(batch, cin, cout, args.groups, size, kernel, out, args, needs_grad, device_type)
    fft = _fft_seconds(batch, cin, cout, geometry, segments, needs_grad, device_type)
    if backend == "auto":
        backend = "direct" if direct <= fft else "fft"
    path = "direct" if backend == "direct" else "fft" if segments is None else "overlap-save"
    return ConvPlan(path, batch, cin, cout, args.groups, size, kernel, args.stride, args.dilation, args.pads,
                    args.padding_mode, out, device_type, dtype, needs_grad, direct, fft,
                    "model", pre_pad, geometry, segments)


def plan_conv(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
              dilation=1, groups: int = 1, padding_mode: str = "zeros", backend: str = "auto") -> ConvPlan:
    """The plan :func:`~largekernel.functional.convolve` would run for this call (with the cost model;
    timing, when switched on with :func:`~largekernel.functional.calibration`, may choose the other path).

    Example:
        >>> plan = plan_conv(torch.randn(8, 96, 56, 56), torch.randn(96, 1, 31, 31), padding=15, groups=96)
        >>> plan.path, plan.geometry.grid, plan.geometry.packed
        ('fft', (72, 72), True)
    """
    from largekernel.functional._args import ConvArgumentError

    if backend not in ("auto", "direct", "fft"):
        raise ConvArgumentError(f"backend must be one of ('auto', 'direct', 'fft'), got {backend!r}")
    input, weight, bias = real_parts(input, weight, bias)  # (complex operands: three real calls of this plan)
    args = conv_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return make_plan(args, input, weight, bias, backend)


def plan_filter(batch: int, channels: int, filters: int, grid, size, out_start, out_size, device_type: str,
                dtype: torch.dtype, mixing: bool = False) -> FFTGeometry:
    """The geometry of a spectral filter call (:func:`~largekernel.functional.spectral_filter`): a depthwise
    circular convolution of ``(batch, channels, *size)`` by ``filters`` (a multiple of ``channels``) filters given
    on ``grid``, cropped to ``out_start + out_size``; ``mixing``: a channel map follows (no packing: it mixes
    the pairs). The batch only weighs costs (a symbolic one stays symbolic)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    geometry = _geometry(tuple(grid), tuple(size), tuple(out_size), (1,) * len(grid), None, (1,) * len(grid),
                         (0,) * len(grid), size_hint(batch), channels, filters, channels, device_type, itemsize)
    if mixing:
        geometry = _replaced(geometry, packed=False, channel_block=channels)
    return _replaced(geometry, out_start=tuple(out_start))
