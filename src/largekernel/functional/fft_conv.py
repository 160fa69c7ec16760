"""FFT convolution with the exact semantics of ``torch.nn.functional.conv{1,2,3}d``.

Seed 003 (FFT for vision; also the FFT path of FiT / SGConv): a cross-correlation
computed as a product of real spectra, so that its cost does not grow with the
kernel size.

How it is made fast (docs/fft_conv.md has the derivations):

* **Circular length.** The correlation is computed as a circular one of length
  ``n`` per dimension, with the *unpadded* input at offset 0 and the kernel
  placed at ``(t * dilation - pad_before) mod n``. Every read of a kept output
  then lands on the right input sample or on a zero as long as
  ``n >= size + pad_before`` and ``n > the last index read``, which for "same"
  padding is ``size + k // 2`` rather than the ``size + k - 1`` of a full linear
  convolution. Zero padding is never materialised: the right side is the FFT's
  own zero-fill, the left side a shift of the kernel. ``padding_mode="circular"``
  is the same computation with ``n = size``.
* **Length choice.** Among the admissible lengths the fastest one is taken from
  a deterministic cost model of the FFT library per device type
  (:func:`fast_fft_length`).
* **Groups.** Depthwise and channel-multiplier convolutions are elementwise
  products of spectra; only general grouped convolutions contract channels: a
  matmul per frequency, done as one *real* bmm over frequency-major operands
  (torch's complex bmm loops over the batch on the CPU; ~10x slower here).
* **Packed batch pairs** (2-D / 3-D on CPU, elementwise products at stride 1):
  two real signals travel as one complex one, ``x_a + i x_b``; complex transforms
  over half the batch are cheaper than real ones over all of it with torch's MKL
  backend (:mod:`largekernel.functional._packed`).
* **Overlap-save.** A 1-D kernel much shorter than the signal is applied in
  blocks: each block of outputs is a valid correlation of an overlapping input
  segment at a short length, so the kernel is transformed at the block length,
  not the signal's. A cost model (``_block_plan``) decides; dense long-sequence
  layers (CKConv/FlexConv with a cropped kernel) gain 2-3x.
* **Stride** is decimation in the frequency domain: the spectrum is aliased to
  ``n / stride`` before the (smaller) inverse transform, so discarded outputs
  are never computed; in backward, the spectrum of the zero-stuffed gradient is
  the periodic repetition of the small one.
* **Dilation** never builds a zero-stuffed kernel: kernel taps are scattered
  straight into the FFT buffer.
* **Autograd.** A custom :class:`torch.autograd.Function` saves the input and
  kernel spectra in forward; backward needs one forward FFT (of the output
  gradient) and one inverse per requested gradient. Double backward is not
  supported (``once_differentiable``).
* fp16 / bf16 inputs are computed in fp32 and returned in the input dtype.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from largekernel.functional import _native
from largekernel.functional._packed import channel_blocks, channel_sums, pack, packed_bytes, packs, unpack

__all__ = ["fft_conv", "fast_fft_length", "PADDING_MODES"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- argument checks


def _tuple(value, nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list, torch.Size)):
        raise TypeError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(value)
    if len(value) != nd or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    return value


def _positive(value, nd: int, name: str) -> tuple[int, ...]:
    value = _tuple(value, nd, name)
    if any(v < 1 for v in value):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def _explicit_padding(padding, kernel_size, dilation, nd: int) -> list[tuple[int, int]]:
    """Per-dimension (before, after) padding, as torch.nn.functional.convNd applies it."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            dilation = _tuple(dilation, nd, "dilation")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            return [(t // 2, t - t // 2) for t in total]
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    pads = _tuple(padding, nd, "padding")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return [(p, p) for p in pads]


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")


@dataclass(frozen=True)
class _Args:
    """Validated, normalised convolution arguments."""

    nd: int
    batched: bool
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    groups: int
    padding_mode: str


def _check_args(input, weight, bias, stride, padding, dilation, groups, padding_mode) -> _Args:
    """Validate like torch.nn.functional.convNd, but with errors that name the argument."""
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if weight.dim() not in (3, 4, 5):
        raise ValueError(f"weight must have shape (out_channels, in_channels/groups, *kernel) with 1 to 3 "
                         f"kernel dims, got shape {tuple(weight.shape)}")
    nd = weight.dim() - 2
    if input.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"input must have shape (batch, channels, *spatial) or (channels, *spatial) with {nd} "
                         f"spatial dims to match the {nd}-D kernel, got shape {tuple(input.shape)}")
    if input.dtype != weight.dtype:
        raise TypeError(f"weight dtype must match input dtype {input.dtype}, got {weight.dtype}")
    if input.device != weight.device:
        raise ValueError(f"weight must be on the input's device {input.device}, got {weight.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    cin = input.shape[-nd - 1]
    cout, cin_per_group = weight.shape[:2]
    if cout % groups:
        raise ValueError(f"groups must divide out_channels={cout} (weight.shape[0]), got groups={groups}")
    if cin % groups:
        raise ValueError(f"groups must divide in_channels={cin} (input channels), got groups={groups}")
    if cin_per_group * groups != cin:
        raise ValueError(f"input must have weight.shape[1] * groups = {cin_per_group * groups} channels, "
                         f"got {cin} (input shape {tuple(input.shape)})")
    if bias is not None:
        _check_tensor(bias, "bias")
        if tuple(bias.shape) != (cout,):
            raise ValueError(f"bias must have shape ({cout},) = (out_channels,), got {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            raise TypeError(f"bias dtype must match input dtype {input.dtype}, got {bias.dtype}")
    stride = _positive(stride, nd, "stride")
    dilation = _positive(dilation, nd, "dilation")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding == "same" and any(s != 1 for s in stride):
        raise ValueError(f"padding='same' requires stride 1 (as in torch), got stride={stride}")
    kernel = tuple(weight.shape[2:])
    pads = _explicit_padding(padding, kernel, dilation, nd)
    sizes = tuple(input.shape[-nd:])
    for i, ((lo, hi), n, k, d) in enumerate(zip(pads, sizes, kernel, dilation)):
        if padding_mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(f"padding must be smaller than the input size {n} in dim {i} for "
                             f"padding_mode='reflect', got {(lo, hi)}")
        if padding_mode == "circular" and max(lo, hi) > n:
            raise ValueError(f"padding must be at most the input size {n} in dim {i} for "
                             f"padding_mode='circular', got {(lo, hi)}")
        if d * (k - 1) + 1 > n + lo + hi:
            raise ValueError(f"weight's dilated kernel size {d * (k - 1) + 1} in dim {i} must not exceed the "
                             f"padded input size {n + lo + hi} (input {n} + padding {(lo, hi)})")
    return _Args(nd, input.dim() == nd + 2, stride, dilation, tuple(pads), groups, padding_mode)


def _flat_pads(pads) -> list[int]:
    """Per-dim (before, after) pairs -> the last-dim-first flat list ``F.pad`` takes."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


def _direct_conv(input: Tensor, weight: Tensor, bias: Tensor | None, padding, args: _Args) -> Tensor:
    """torch's own convolution, with a padding mode applied the way ``torch.nn.ConvNd`` does."""
    if args.padding_mode != "zeros":
        input = F.pad(input, _flat_pads(args.pads), mode=args.padding_mode)  # (B, Cin, *padded)
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[args.nd - 1]
    return conv(input, weight, bias, args.stride, padding, args.dilation, args.groups)


# ----------------------------------------------------------------------------- FFT length choice

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

    CPU (pocketfft, measured on the reference machine, see docs/fft_conv.md): powers
    of two are fastest, then even 7-smooth lengths; odd lengths and factors 11/13
    cost ~1.3-1.8x, 17-23 ~2.5x, larger primes ~4x. cuFFT has fast kernels for 2, 3, 5, 7 only and
    falls back to Bluestein (~3 transforms of twice the size) otherwise.
    """
    if n & (n - 1) == 0:  # powers of two: radix-4 passes, ~15% cheaper per element than other smooth lengths
        return 0.85
    largest = max(_factor(n))
    if device_type == "cuda":
        return 1.0 if largest <= 7 else 4.0
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


@lru_cache(maxsize=4096)
def fast_fft_length(minimum: int, device_type: str = "cpu", multiple_of: int = 1) -> int:
    """The fastest FFT length ``n >= minimum`` (and a multiple of ``multiple_of``) by the cost model.

    The model is ``n * (2 + cost_per_element(n) * log2 n)``: the transform plus the
    elementwise work (products, copies) that grows with ``n``. Deterministic.
    """
    if minimum < 1:
        raise ValueError(f"minimum must be positive, got {minimum}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be positive, got {multiple_of}")
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


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Plan:
    """Everything about one call's geometry that the transforms need (hashable, tensor-free)."""

    groups: int
    sizes: tuple[int, ...]   # spatial input size (after any materialised padding)
    kernel: tuple[int, ...]
    fft: tuple[int, ...]     # circular length per dim
    shift: tuple[int, ...]   # padding before, realised as a kernel shift
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    out: tuple[int, ...]


def _make_plan(sizes, kernel, pads, stride, dilation, groups, circular: bool, device_type: str) -> _Plan:
    fft, out = [], []
    for n, k, (lo, hi), s, d in zip(sizes, kernel, pads, stride, dilation):
        extent = d * (k - 1) + 1
        keep = (n + lo + hi - extent) // s + 1
        if circular:
            length = n
        else:
            # smallest length with no wrap-around onto a kept output (module docstring)
            minimum = max(n + lo, (keep - 1) * s + extent - lo, (keep - 1) * s + 1)
            length = fast_fft_length(minimum, device_type, s)
        fft.append(length)
        out.append(keep)
    return _Plan(groups, tuple(sizes), tuple(kernel), tuple(fft), tuple(lo for lo, _ in pads),
                 tuple(stride), tuple(dilation), tuple(out))


# ----------------------------------------------------------------------------- transforms


def _kernel_index(plan: _Plan, device) -> list[Tensor]:
    """Buffer position of each (dilated, shifted) kernel tap, ``(t*d - shift) mod n``, one index
    tensor per spatial dim, shaped to broadcast over a ``(Cout, Cin/g, *kernel)`` tensor."""
    nd = len(plan.fft)
    index = []
    for i, (k, d, lo, n) in enumerate(zip(plan.kernel, plan.dilation, plan.shift, plan.fft)):
        position = (torch.arange(k, device=device) * d - lo) % n
        index.append(position.reshape(k, *([1] * (nd - 1 - i))))
    return index


def _wraps(plan: _Plan) -> bool:
    """Whether some dilated kernel is longer than its circular buffer (taps then share positions)."""
    return any(d * (k - 1) + 1 > n for k, d, n in zip(plan.kernel, plan.dilation, plan.fft))


def _place_kernel(weight: Tensor, plan: _Plan) -> Tensor:
    """Scatter kernel taps into the circular FFT buffer (no zero-stuffed dilated copy of the input);
    taps that share a position (a kernel longer than the buffer) add up.

    Usually the buffer is the kernel rotated by its shift and zero-filled, written as a few
    slice copies (an index scatter costs several times more on the large dense kernels of
    continuous-kernel layers).
    """
    nd = len(plan.fft)
    if _wraps(plan):
        buffer = weight.new_zeros(*weight.shape[:2], *plan.fft)  # (Cout, Cin/g, *fft)
        channels = [torch.arange(c, device=weight.device).reshape(-1, *([1] * (weight.dim() - 1 - j)))
                    for j, c in enumerate(weight.shape[:2])]
        return buffer.index_put_((*channels, *_kernel_index(plan, weight.device)), weight, accumulate=True)
    for i, (k, d) in enumerate(zip(plan.kernel, plan.dilation)):
        if d > 1:  # zero-stuff this dim of the (small) kernel
            shape = list(weight.shape)
            shape[i - nd] = d * (k - 1) + 1
            stuffed = weight.new_zeros(shape)
            stuffed[(..., slice(None, None, d), *([slice(None)] * (nd - 1 - i)))] = weight
            weight = stuffed
    buffer = weight.new_zeros(*weight.shape[:2], *plan.fft)  # (Cout, Cin/g, *fft)
    # per dim, taps [lo, extent) go to the start and taps [0, lo) wrap to the end (or, with
    # lo > extent, all of them to [n - lo, n - lo + extent)): 2**nd slice copies
    pieces = []
    for extent, lo, n in zip(weight.shape[2:], plan.shift, plan.fft):
        if lo <= extent:
            pieces.append([(slice(lo, extent), slice(0, extent - lo)), (slice(0, lo), slice(n - lo, n))])
        else:
            pieces.append([(slice(0, extent), slice(n - lo, n - lo + extent))])
    for combo in itertools.product(*pieces):
        src = tuple(c[0] for c in combo)
        dst = tuple(c[1] for c in combo)
        if all(a.stop > a.start for a in src):
            buffer[(..., *dst)] = weight[(..., *src)]
    return buffer


def _gather_kernel(buffer: Tensor, plan: _Plan) -> Tensor:
    """Adjoint of :func:`_place_kernel`: read each tap's position back out of ``(..., *fft)``."""
    nd = len(plan.fft)
    if _wraps(plan):
        return buffer[(..., *_kernel_index(plan, buffer.device))]  # (..., *kernel)
    for i, (k, d, lo, n) in enumerate(zip(plan.kernel, plan.dilation, plan.shift, plan.fft)):
        dim, extent = i - nd, d * (k - 1) + 1
        if lo <= extent:
            parts = [buffer.narrow(dim, n - lo, lo), buffer.narrow(dim, 0, extent - lo)]
            buffer = torch.cat([part for part in parts if part.shape[dim]], dim)
        else:
            buffer = buffer.narrow(dim, n - lo, extent)
        if d > 1:
            buffer = buffer[(..., slice(None, None, d), *([slice(None)] * (nd - 1 - i)))]
    return buffer.contiguous()  # (..., *kernel)


def _spatial(nd: int) -> tuple[int, ...]:
    return tuple(range(-nd, 0))


def _mirror(spectrum: Tensor, nd: int) -> Tensor:
    """``conj(Y[-k])`` over the non-last spatial dims: with the last dim at ``n - q``, the bin that the
    Hermitian symmetry of a real N-D signal maps onto ``Y[k, q]``."""
    dims = tuple(range(-nd, -1))
    if dims:
        spectrum = torch.roll(torch.flip(spectrum, dims), (1,) * len(dims), dims)
    return spectrum.conj()


def _fold_last(spectrum: Tensor, n: int, s: int, nd: int) -> Tensor:
    """Half spectrum (last dim n//2+1) of a real signal of last-dim length n -> half spectrum of its
    every-s-th sample (m//2+1, m = n/s), up to the factor 1/s: ``Z[f] = sum_a Y[f + a*m]``."""
    m = n // s
    q = torch.arange(s, device=spectrum.device).unsqueeze(1) * m + torch.arange(m // 2 + 1, device=spectrum.device)
    mirrored = q > n // 2
    source = torch.where(mirrored, n - q, q).flatten()
    picked = spectrum.index_select(-1, source).unflatten(-1, (s, m // 2 + 1))  # (..., s, m//2+1)
    picked = torch.where(mirrored, _mirror(picked.movedim(-2, 0), nd).movedim(0, -2), picked)
    return picked.sum(-2)  # (..., m//2+1)


def _tile_last(spectrum: Tensor, n: int, s: int, nd: int) -> Tensor:
    """Half spectrum (last dim m//2+1) of a real signal of last-dim length m -> half spectrum (n//2+1,
    n = s*m) of the signal zero-stuffed by s, the periodic repetition ``G[q] = Gm[q mod m]``."""
    m = n // s
    r = torch.arange(n // 2 + 1, device=spectrum.device) % m
    mirrored = r > m // 2
    picked = spectrum.index_select(-1, torch.where(mirrored, m - r, r))  # (..., n//2+1)
    return torch.where(mirrored, _mirror(picked, nd), picked)


def _irfft_keep(spectrum: Tensor, fft: tuple[int, ...], stride: tuple[int, ...], keep: tuple[int, ...]) -> Tensor:
    """Samples ``j * stride`` (``j < keep``) of the real inverse transform of ``spectrum``.

    Where the stride divides the length, the spectrum is aliased first so that the
    inverse has length n/s and no discarded sample is computed.
    """
    nd = len(fft)
    scale, lengths, steps = 1, [], []
    for i, (n, s) in enumerate(zip(fft, stride)):
        decimate = s > 1 and n % s == 0
        if decimate and i < nd - 1:
            dim = i - nd
            spectrum = spectrum.unflatten(dim, (s, n // s)).sum(dim - 1)  # (..., n/s, ...)
        elif decimate:
            spectrum = _fold_last(spectrum, n, s, nd)  # (..., n/s//2+1)
        scale *= s if decimate else 1
        lengths.append(n // s if decimate else n)
        steps.append(1 if decimate else s)
    out = torch.fft.irfftn(spectrum, s=lengths, dim=_spatial(nd))  # (..., *lengths)
    out = out[(..., *(slice(0, (k - 1) * step + 1, step) for k, step in zip(keep, steps)))]  # (..., *keep)
    return out / scale if scale > 1 else out


def _rfft_upsampled(grad: Tensor, plan: _Plan) -> Tensor:
    """Spectrum (length ``plan.fft``) of ``grad`` zero-stuffed by the stride: the adjoint of the
    strided read in :func:`_irfft_keep`."""
    nd = len(plan.fft)
    # Dims whose length the stride does not divide (circular mode only) are zero-stuffed explicitly.
    explicit = [s > 1 and n % s != 0 for n, s in zip(plan.fft, plan.stride)]
    if any(explicit):
        shape = list(grad.shape[:2]) + [(k - 1) * s + 1 if e else k for k, s, e in zip(plan.out, plan.stride, explicit)]
        stuffed = grad.new_zeros(shape)
        stuffed[(..., *(slice(None, None, s) if e else slice(None) for s, e in zip(plan.stride, explicit)))] = grad
        grad = stuffed
    stride = [1 if e else s for s, e in zip(plan.stride, explicit)]
    spectrum = torch.fft.rfftn(grad, s=[n // s for n, s in zip(plan.fft, stride)], dim=_spatial(nd))
    if stride[-1] > 1:
        spectrum = _tile_last(spectrum, plan.fft[-1], stride[-1], nd)
    repeats = [1, 1, *stride[:-1], 1]
    if any(r > 1 for r in repeats):
        spectrum = spectrum.repeat(repeats)
    return spectrum  # (B, Cout, *fft[:-1], fft[-1]//2+1) complex


# ----------------------------------------------------------------------------- spectral products
# x: (B, G*I, *F), w: (G*O, I, *F), y: (B, G*O, *F); P = prod(F) frequencies.
#
# Without a channel contraction (depthwise, channel multiplier: I == 1) the products are
# elementwise. With one (I > 1), every frequency is a small complex matrix product. torch's
# complex bmm calls BLAS once per matrix on the CPU, so (unless the products are tiny, see
# _SMALL_CONTRACTION) they are done as *real* bmm's over
# frequency-major operands instead: the complex kernel spectrum viewed as real, (P*G, O, 2I)
# with re/im interleaved, against an expanded real copy of the smaller activation operand:
#
#   x block (P, G, 2, B, I, 2):  [0] = (re x, im x),  [1] = (im x, -re x)
#   y = x conj(w):      y[(c, b), o]   = sum_(i, t) xblock[c, b, i, t] w[o, i, t]   (c = re / im)
#   gw = sum_b x conj(g): gw[o, (i, t)] = sum_(c, b) gplanar[c, b, o] xblock[c, b, i, t]
#   gx = g w:           from [re g; im g] (2B, O) times w (O, 2I)
#
# so one bmm per product, with every operand either a view or a single pass of copying.

_TILE = 64


def _transpose(matrix: Tensor) -> Tensor:
    """``(R, C) -> (C, R)`` contiguous, copied in row tiles (a plain strided copy is not cache-blocked;
    this is ~1.3x faster on the spectra here)."""
    rows = matrix.shape[0]
    if matrix.device.type != "cpu":
        return matrix.T.contiguous()
    out = matrix.new_empty(matrix.shape[::-1])
    step = max(_TILE, -(-rows // 256))  # at most 256 copies
    for j in range(0, rows, step):
        out[:, j:j + step] = matrix[j:j + step].T
    return out


def _frequency_major(spectrum: Tensor, groups: int) -> Tensor:
    """``(N, G*C, *F)`` complex -> ``(P, G, N, C)``, frequencies outermost."""
    n, channels = spectrum.shape[:2]
    out = _transpose(spectrum.reshape(n * channels, -1))  # (P, N*G*C)
    return out.view(-1, n, groups, channels // groups).transpose(1, 2)  # (P, G, N, C) view


def _channel_major(re: Tensor, im: Tensor, freq: tuple[int, ...]) -> Tensor:
    """Real and imaginary parts ``(P, G, N, C)`` -> the complex spectrum ``(N, G*C, *F)``."""
    p, g, n, c = re.shape
    spectrum = torch.complex(re, im).transpose(1, 2).reshape(p, n * g * c)  # (P, N*G*C)
    return _transpose(spectrum).view(n, g * c, *freq)


def _x_block(x_f: Tensor, groups: int) -> Tensor:
    """The expanded activation operand ``(P, G, 2, B, I, 2)`` (see above), real."""
    x = torch.view_as_real(_frequency_major(x_f, groups))  # (P, G, B, I, 2)
    block = x.new_empty(*x.shape[:2], 2, *x.shape[2:])
    block[:, :, 0] = x
    block[:, :, 1, ..., 0] = x[..., 1]
    torch.neg(x[..., 0], out=block[:, :, 1, ..., 1])
    return block


def _g_planar(g_f: Tensor, groups: int) -> Tensor:
    """``(P*G, 2B, O)`` real: the output-gradient spectrum with re stacked over im."""
    g = _frequency_major(g_f, groups)  # (P, G, B, O)
    p, _, b, o = g.shape
    return torch.stack((g.real, g.imag), 2).view(p * groups, 2 * b, o)


def _contract_forward(x_f: Tensor, w_f: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """``y = sum_i x conj(w)`` and the operands backward reuses: (y, x block, frequency-major w)."""
    b, freq = x_f.shape[0], x_f.shape[2:]
    cout, i = w_f.shape[:2]
    o = cout // groups
    w = _transpose(w_f.reshape(cout * i, -1))  # (P, G*O*I) complex
    block = _x_block(x_f, groups)  # (P, G, 2, B, I, 2)
    p = block.shape[0]
    w_real = torch.view_as_real(w).view(p * groups, o, 2 * i)
    y = torch.bmm(block.view(p * groups, 2 * b, 2 * i), w_real.transpose(1, 2)).view(p, groups, 2, b, o)
    return _channel_major(y[:, :, 0], y[:, :, 1], freq), block, w


def _contract_input_grad(g: Tensor, w: Tensor, groups: int, freq: tuple[int, ...]) -> Tensor:
    """``gx = sum_o g w`` from the planar gradient ``(P*G, 2B, O)`` and frequency-major ``w``."""
    pg, b2, o = g.shape
    i = w.shape[1] // (groups * o)
    t = torch.bmm(g, torch.view_as_real(w).view(pg, o, 2 * i)).view(pg // groups, groups, 2, b2 // 2, i, 2)
    return _channel_major(t[:, :, 0, ..., 0] - t[:, :, 1, ..., 1], t[:, :, 0, ..., 1] + t[:, :, 1, ..., 0], freq)


def _contract_weight_grad(g: Tensor, block: Tensor) -> Tensor:
    """``gw = sum_b x conj(g)``, frequency-major ``(P, G*O*I)`` complex."""
    p, groups, _, b, i, _ = block.shape
    gw = torch.bmm(g.transpose(1, 2), block.view(p * groups, 2 * b, 2 * i))  # (P*G, O, 2I)
    return torch.view_as_complex(gw.view(p, -1, 2))


# torch's CPU bmm runs products of fewer than 400 multiply-adds (rows * cols * inner) as one
# plain loop over the batch, fast for complex; larger ones go to BLAS one matrix at a time.
# Channel contractions that small stay complex einsums.
_SMALL_CONTRACTION = 400


def _product(x_f: Tensor, wc_f: Tensor, groups: int) -> Tensor:
    """Output spectrum ``y = sum_i x * conj(w)`` per group, unless the real-bmm path takes it."""
    b = x_f.shape[0]
    cout, i = wc_f.shape[:2]
    o = cout // groups
    if i == 1:  # depthwise (o == 1) or channel multiplier: elementwise, no channel contraction
        y_f = x_f.reshape(b, groups, 1, -1) * wc_f.reshape(groups, o, -1)  # (B, G, O, F)
    else:
        y_f = torch.einsum("bgif,goif->bgof", x_f.reshape(b, groups, i, -1), wc_f.reshape(groups, o, i, -1))
    return y_f.reshape(b, cout, *x_f.shape[2:])


def _input_grad_product(g_f: Tensor, w_f: Tensor, groups: int) -> Tensor:
    """Input-gradient spectrum ``gx = sum_o g * w`` (a convolution: no conjugate). May overwrite ``g_f``."""
    b, cout = g_f.shape[:2]
    i = w_f.shape[1]
    o = cout // groups
    freq = g_f.shape[2:]
    if i == 1 and o == 1:  # depthwise: elementwise, in place (no fresh spectrum-sized allocation)
        return g_f.mul_(w_f.reshape(cout, *freq))
    x_f = torch.einsum("bgof,goif->bgif", g_f.reshape(b, groups, o, -1), w_f.reshape(groups, o, i, -1))
    return x_f.reshape(b, groups * i, *freq)


def _bias_grad(grad: Tensor) -> Tensor:
    """The bias gradient: the output gradient summed over everything but the channels."""
    return grad.sum(dim=(0, *range(2, grad.dim())))


def _weight_grad_product(x_f: Tensor, g_f: Tensor, groups: int) -> Tensor:
    """Kernel-gradient spectrum ``gw = sum_b x * conj(g)``: reduced over the batch before the inverse
    transform, so that only a kernel-sized buffer is transformed back."""
    b, cout = g_f.shape[:2]
    i = x_f.shape[1] // groups
    o = cout // groups
    w_f = torch.einsum("bgif,bgof->goif", x_f.reshape(b, groups, i, -1), g_f.reshape(b, groups, o, -1).conj())
    return w_f.reshape(cout, i, *g_f.shape[2:])


class _FFTConvFunction(torch.autograd.Function):
    """Forward and backward of the (unpadded-input, circular-length) FFT correlation.

    Saves what the gradients need from forward (the input spectrum, or its expanded
    block, for the weight gradient; the kernel spectrum for the input gradient), so
    backward transforms only the output gradient. Without the real-bmm contraction the
    groups are independent and run in cache-sized blocks (:func:`channel_blocks`);
    ``keep``: whether a kernel gradient will be wanted (the caller knows the grad mode).
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan, keep: bool = True) -> Tensor:
        nd = len(plan.fft)
        dims = _spatial(nd)
        w_f = torch.fft.rfftn(_place_kernel(weight, plan), dim=dims)  # (Cout, Cin/g, *F)
        batch, cout, i = input.shape[0], weight.shape[0], weight.shape[1]
        per = cout // plan.groups  # outputs per group
        contract = i > 1 and batch * per * i >= _SMALL_CONTRACTION
        need_input, need_weight = ctx.needs_input_grad[:2]
        need_weight = need_weight and keep
        ctx.plan, ctx.contract, ctx.freq, ctx.i = plan, contract, tuple(w_f.shape[2:]), i
        if contract:
            x_f = torch.fft.rfftn(input, s=plan.fft, dim=dims)  # (B, Cin, *F) complex
            y_f, x_saved, w_saved = _contract_forward(x_f, w_f, plan.groups)
            out = _irfft_keep(y_f, plan.fft, plan.stride, plan.out)  # (B, Cout, *out)
            # the add (or copy) also makes the strided slice contiguous, like torch's conv output
            out = out + bias.reshape(-1, *([1] * nd)) if bias is not None else out.contiguous()
            ctx.save_for_backward(w_saved if need_input else None, x_saved if need_weight else None)
            ctx.blocks = None
            return out
        w_saved = w_f.conj_physical_()
        # Groups in cache-sized blocks, sized by their input and output spectra.
        blocks = channel_blocks(plan.groups, batch * math.prod(ctx.freq) * 2 * input.element_size() * (i + per),
                                input.device, real=True)
        out = input.new_empty(batch, cout, *plan.out)
        specs = []
        for block in blocks:
            ins, outs = slice(block.start * i, block.stop * i), slice(block.start * per, block.stop * per)
            x_f = torch.fft.rfftn(input[:, ins], s=plan.fft, dim=dims)  # (B, block inputs, *F) complex
            y = _irfft_keep(_product(x_f, w_saved[outs], block.stop - block.start), plan.fft, plan.stride, plan.out)
            if bias is not None:
                torch.add(y, bias[outs].reshape(-1, *([1] * nd)), out=out[:, outs])
            else:
                out[:, outs] = y
            specs.append(x_f if need_weight else None)
        ctx.save_for_backward(w_saved if need_input else None, *specs)
        ctx.blocks = blocks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        plan: _Plan = ctx.plan
        w_saved, *specs = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        nd = len(plan.fft)
        dims = _spatial(nd)
        grad_input = grad_weight = grad_bias = None
        if not (need_input or need_weight):
            if need_bias:
                grad_bias = _bias_grad(grad)
            return grad_input, grad_weight, grad_bias, None, None
        if ctx.contract:
            (x_saved,) = specs
            g = _g_planar(_rfft_upsampled(grad, plan), plan.groups)  # (P*G, 2B, O)
            if need_weight:
                cout, i = grad.shape[1], x_saved.shape[4]
                gw = _transpose(_contract_weight_grad(g, x_saved)).view(cout, i, *ctx.freq)  # (Cout, I, *F)
                grad_weight = _gather_kernel(torch.fft.irfftn(gw, s=plan.fft, dim=dims), plan)
            if need_input:
                gx_f = _contract_input_grad(g, w_saved, plan.groups, ctx.freq)  # (B, Cin, *F)
                grad_input = _irfft_keep(gx_f, plan.fft, (1,) * nd, plan.sizes).contiguous()  # (B, Cin, *sizes)
            if need_bias:
                grad_bias = _bias_grad(grad)
            return grad_input, grad_weight, grad_bias, None, None
        batch, cout = grad.shape[:2]
        per = cout // plan.groups
        i = ctx.i
        w_conj = None
        if need_input:
            grad_input = grad.new_empty(batch, plan.groups * i, *plan.sizes)
        if need_weight:
            gw_f = torch.empty(cout, i, *ctx.freq, dtype=specs[0].dtype, device=grad.device)
        if need_bias:
            grad_bias = grad.new_empty(cout)
        for block, x_f in zip(ctx.blocks, specs):
            ins, outs = slice(block.start * i, block.stop * i), slice(block.start * per, block.stop * per)
            n = block.stop - block.start
            g_f = _rfft_upsampled(grad[:, outs], plan)  # (B, block outputs, *F)
            if need_bias:  # the DC bin: the sum over the output (zero-stuffing adds zeros)
                torch.sum(g_f[(slice(None), slice(None)) + (0,) * nd].real, dim=0, out=grad_bias[outs])
            # Depthwise: sum_b x * conj(g) and g *= conj(w) in one native pass (w_saved holds conj(w)).
            if i == per == 1 and _native.spectral_grad(
                    x_f, g_f, w_saved[outs].view(n, *ctx.freq) if need_input else None,
                    gw_f[outs].view(n, *ctx.freq) if need_weight else None, conj_q=True, conj_w=True):
                gx_f = g_f
            else:
                if need_weight:  # first: the input-gradient product below may overwrite g_f
                    gw_f[outs] = _weight_grad_product(x_f, g_f, n)
                if need_input:
                    if w_conj is None:
                        w_conj = w_saved.conj_physical()
                    gx_f = _input_grad_product(g_f, w_conj[outs], n)  # (B, block inputs, *F)
            if need_input:
                grad_input[:, ins] = _irfft_keep(gx_f, plan.fft, (1,) * nd, plan.sizes)
        if need_weight:
            grad_weight = _gather_kernel(torch.fft.irfftn(gw_f, s=plan.fft, dim=dims), plan)  # (Cout, Cin/g, *k)
        return grad_input, grad_weight, grad_bias, None, None


class _PackedFFTConvFunction(torch.autograd.Function):
    """:class:`_FFTConvFunction` on batch pairs packed as complex signals (:mod:`largekernel.functional._packed`),
    for the elementwise cases (depthwise, channel multiplier) at stride 1 (see :func:`_packed_plan`).

    Forward ``y = x * conj(w)`` on the full grid; backward from ``q = i conj(G)``, the swapped gradient pair's
    unnormalised inverse transform: the kernel gradient's buffer is ``Im(ifftn(sum x q))`` (the real part of
    ``ifftn(-i sum x q)``; the pairs' cross terms are imaginary there), the input gradient
    ``i conj(fftn(q conj(w)) / N)``, unpacked with the pair swapped back. Nothing large is conjugated.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan, keep: bool) -> Tensor:
        """``keep``: whether the input spectra are kept for the kernel gradient (the caller knows the grad mode)."""
        nd = len(plan.fft)
        dims, origin = _spatial(nd), (0,) * nd
        batch, groups, cout = input.shape[0], plan.groups, weight.shape[0]
        per = cout // groups  # outputs per input channel
        need_input, need_weight = ctx.needs_input_grad[:2]
        need_weight = need_weight and keep
        wc_f = torch.fft.fftn(_place_kernel(weight, plan), dim=dims).conj_physical_()  # (Cout, 1, *fft)
        # Channels are independent: pack, transform, product and back per cache-sized block (_packed.py),
        # sized by the block's output spectrum (per times its input).
        blocks = channel_blocks(groups, packed_bytes(batch, plan.fft, input.element_size()) * per, input.device)
        out = input.new_empty(batch, cout, *plan.out)
        specs = []
        for block in blocks:
            outs = slice(block.start * per, block.stop * per)
            x_f = torch.fft.fftn(pack(input[:, block], plan.fft, origin), dim=dims)  # (B/2, block, *fft) complex
            y_f = _product(x_f, wc_f[outs], block.stop - block.start)
            unpack(torch.fft.ifftn(y_f, dim=dims), batch, origin, plan.out, None if bias is None else bias[outs],
                   out=out[:, outs])
            specs.append(x_f if need_weight else None)
        ctx.save_for_backward(wc_f if need_input else None, *specs)
        ctx.plan, ctx.batch, ctx.blocks = plan, batch, blocks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        plan: _Plan = ctx.plan
        wc_f, *specs = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        nd = len(plan.fft)
        dims, origin = _spatial(nd), (0,) * nd
        batch, cout = ctx.batch, grad.shape[1]
        per = cout // plan.groups
        grad_input = grad_weight = grad_bias = None
        if not (need_input or need_weight):
            if need_bias:
                grad_bias = _bias_grad(grad)
            return grad_input, grad_weight, grad_bias, None, None
        if need_input:
            grad_input = grad.new_empty(batch, plan.groups, *plan.sizes)
        if need_weight:
            acc = torch.empty(cout, 1, *plan.fft, dtype=specs[0].dtype, device=grad.device)  # sum of x * q per output
        if need_bias:
            grad_bias = grad.new_empty(cout)
        for block, x_f in zip(ctx.blocks, specs):
            outs, n = slice(block.start * per, block.stop * per), block.stop - block.start
            q = torch.fft.ifftn(pack(grad[:, outs], plan.fft, origin, swap=True), dim=dims, norm="forward")
            if need_bias:  # from the DC bin (zero outside the output)
                channel_sums(q, grad_bias[outs])
            if per == 1 and _native.spectral_grad(x_f, q, wc_f[outs].view(n, *plan.fft) if need_input else None,
                                                  acc[outs].view(n, *plan.fft) if need_weight else None):
                gx = q  # depthwise: the kernel-gradient sum and q *= conj(w) in one native pass
            else:
                if need_weight:  # first: the input-gradient product below may overwrite q
                    half = q.shape[0]
                    torch.sum(x_f.view(half, n, 1, *plan.fft) * q.view(half, n, per, *plan.fft), dim=0,
                              out=acc[outs].view(n, per, *plan.fft))
                if need_input:
                    gx = _input_grad_product(q, wc_f[outs], n)  # sum_o q * conj(w): (B/2, block, *F)
            if need_input:
                unpack(torch.fft.fftn(gx, dim=dims, norm="forward"), batch, origin, plan.sizes, swap=True,
                       out=grad_input[:, block])
        if need_weight:
            grad_weight = _gather_kernel(torch.fft.ifftn(acc, dim=dims).imag, plan)  # (Cout, 1, *kernel)
        return grad_input, grad_weight, grad_bias, None, None


def _packed_plan(weight: Tensor, plan: _Plan, batch: int) -> bool:
    """Whether :class:`_PackedFFTConvFunction` takes the call: an elementwise product (one input channel per
    group), stride 1 (decimation is written for half spectra), a batch to pair, and a device and dimension
    where packed transforms are the faster ones."""
    return weight.shape[1] == 1 and all(s == 1 for s in plan.stride) and packs(weight.device, len(plan.fft), batch)


# ----------------------------------------------------------------------------- overlap-save blocks
# A kernel much shorter than the signal need not be transformed at the signal's length: the
# output is cut into blocks, each computed as a valid correlation of an overlapping input
# segment of a short length M (overlap-save). The kernel-side work (its transforms and, for
# dense layers, its layout passes and the kernel-sized product of the weight gradient) then
# shrinks by n / M while the activation side grows by the overlap, M / (M - extent + 1).
# Whether that pays is decided by a cost model of the FFT path's forward + backward, fitted by
# least squares to nine dense and grouped layers (1-D and 2-D, blocked or not) timed on the
# reference CPU with 2 threads; predictions within 0.8-1.3x of the measurements
# (docs/fft_conv.md). The engine's ``backend="auto"`` uses the same model for such layers.

_COST_ACTIVATION = 2.95e-9  # s per element of an activation transform row (B * (Cin + Cout) rows)
_COST_KERNEL = {True: 3.48e-9, False: 1.2e-9}  # per element of a kernel buffer row (Cout * Cin/g), by contraction
_COST_MAC = 0.111e-9  # per complex multiply-add of the channel contraction (per transform element)
_COST_CALL = 0.5e-3  # per call
_COST_BLOCKS = 0.2e-3  # per blocked call: segmenting, reassembling, more small ops
_BLOCK_GAIN = 0.8  # blocks only when modelled at least 20% cheaper than one whole-signal transform
_BLOCK_FACTORS = (2, 3, 4, 6, 8, 12, 16)  # block lengths tried: fast lengths near these multiples of the extent


def _modelled_seconds(batch: int, cin: int, cout: int, cin_per_group: int, transform: int, buffer: int) -> float:
    """Forward + backward of the FFT path with ``transform`` elements per activation row and a kernel
    buffer of ``buffer`` elements per (out, in) pair."""
    contract = cin_per_group > 1
    total = _COST_CALL + _COST_ACTIVATION * batch * (cin + cout) * transform
    total += _COST_KERNEL[contract] * cout * cin_per_group * buffer
    return total + (_COST_MAC * batch * transform * cout * cin_per_group if contract else 0.0)


@dataclass(frozen=True)
class _Blocks:
    """Overlap-save geometry per spatial dim: block length, outputs per block, blocks."""

    length: tuple[int, ...]
    valid: tuple[int, ...]
    count: tuple[int, ...]


@lru_cache(maxsize=1024)
def _block_plan(sizes, kernel, pads, stride, dilation, fft, batch: int, cin: int, cout: int, cin_per_group: int,
                device_type: str) -> _Blocks | None:
    """The overlap-save geometry the cost model prefers over the whole-signal ``fft`` lengths, or None."""
    if len(sizes) != 1:  # N-D blocks measured slower (segment copies, small 2-D transforms): 1-D only
        return None
    options = []  # per dim: (length, valid, count) choices; the first is one explicitly padded block
    for n, k, (lo, hi), s, d, full in zip(sizes, kernel, pads, stride, dilation, fft):
        extent = d * (k - 1) + 1
        keep = (n + lo + hi - extent) // s + 1
        dim = [(fast_fft_length((keep - 1) * s + extent, device_type, s), keep, 1)]
        for factor in _BLOCK_FACTORS:
            length = fast_fft_length(factor * extent, device_type, s)
            valid = (length - extent) // s + 1
            count = -(-keep // valid)
            if 2 * length <= full and count > 1 and (length, valid, count) not in dim:
                dim.append((length, valid, count))
        options.append(dim)
    if all(len(dim) == 1 for dim in options):
        return None

    def cost(choice) -> float:
        transform = math.prod(length * count for length, _, count in choice)
        buffer = math.prod(length for length, _, _ in choice)
        return _modelled_seconds(batch, cin, cout, cin_per_group, transform, buffer) + _COST_BLOCKS

    whole = _modelled_seconds(batch, cin, cout, cin_per_group, math.prod(fft), math.prod(fft))
    best = min(itertools.product(*options), key=cost)
    if all(count == 1 for _, _, count in best) or cost(best) > _BLOCK_GAIN * whole:
        return None
    return _Blocks(*(tuple(c[j] for c in best) for j in range(3)))


def _geometry(sizes, weight: Tensor, pads, args: _Args, batch: int, cin: int, circular: bool,
              device_type: str) -> tuple[_Plan, _Blocks | None]:
    """The whole-signal plan and, where the cost model prefers them, the overlap-save blocks."""
    plan = _make_plan(sizes, tuple(weight.shape[2:]), pads, args.stride, args.dilation, args.groups, circular,
                      device_type)
    blocks = None if circular else _block_plan(tuple(sizes), plan.kernel, tuple(pads), args.stride, args.dilation,
                                               plan.fft, batch, cin, weight.shape[0], weight.shape[1], device_type)
    return plan, blocks


def _fft_seconds(input: Tensor, weight: Tensor, args: _Args) -> float:
    """Modelled seconds of forward + backward by :func:`_fft_conv` (with the blocks it would use)."""
    nd = args.nd
    batch = input.shape[0] if args.batched else 1
    cin, cout, per_group = input.shape[-nd - 1], weight.shape[0], weight.shape[1]
    plan, blocks = _geometry(input.shape[-nd:], weight, args.pads, args, batch, cin,
                             args.padding_mode == "circular", input.device.type)
    if blocks is None:
        return _modelled_seconds(batch, cin, cout, per_group, math.prod(plan.fft), math.prod(plan.fft))
    transform = math.prod(length * count for length, count in zip(blocks.length, blocks.count))
    return _modelled_seconds(batch, cin, cout, per_group, transform, math.prod(blocks.length)) + _COST_BLOCKS


def _blocked_conv(input: Tensor, weight: Tensor, bias: Tensor | None, pads, args: _Args, blocks: _Blocks) -> Tensor:
    """Overlap-save: each block of outputs is a valid correlation of one overlapping input segment,
    computed at the short circular length ``blocks.length``. Segmenting and reassembling are
    differentiable views and copies, so autograd overlap-adds the input gradient."""
    nd = args.nd
    b, cin = input.shape[:2]
    sizes, kernel = input.shape[2:], weight.shape[2:]
    keep, flat = [], []
    for n, k, (lo, hi), s, d, length, valid, count in zip(sizes, kernel, pads, args.stride, args.dilation,
                                                           blocks.length, blocks.valid, blocks.count):
        keep.append((n + lo + hi - d * (k - 1) - 1) // s + 1)
        flat.append((lo, (count - 1) * valid * s + length - lo - n))  # segment b starts at b*valid*s - lo
    x = F.pad(input, [p for pair in reversed(flat) for p in pair])  # (B, Cin, *padded); negative pads crop
    for i, (length, valid, s) in enumerate(zip(blocks.length, blocks.valid, args.stride)):
        x = x.unfold(2 + i, length, valid * s)  # (B, Cin, *count, *length) once all dims are done
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (B, *count, Cin, *length)
    x = x.reshape(b * math.prod(blocks.count), cin, *blocks.length)
    plan = _Plan(args.groups, blocks.length, tuple(kernel), blocks.length, (0,) * nd, args.stride, args.dilation,
                 blocks.valid)
    y = _FFTConvFunction.apply(x, weight, None, plan)  # (B * blocks, Cout, *valid)
    cout = y.shape[1]
    y = y.view(b, *blocks.count, cout, *blocks.valid)
    y = y.permute(0, 1 + nd, *(j for i in range(nd) for j in (1 + i, 2 + nd + i)))  # (B, Cout, count1, valid1, ...)
    y = y.reshape(b, cout, *(c * v for c, v in zip(blocks.count, blocks.valid)))
    y = y[(..., *(slice(0, k) for k in keep))]  # (B, Cout, *out)
    return y + bias.reshape(-1, *([1] * nd)) if bias is not None else y.contiguous()


# ----------------------------------------------------------------------------- public function


def fft_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """Same result as ``torch.nn.functional.conv{1,2,3}d``, computed with real FFTs.

    The dimension comes from ``weight`` (``(out, in/groups, *kernel)``); ``input``
    is ``(batch, in, *spatial)`` or unbatched ``(in, *spatial)`` as in torch.

    Args:
        input: real floating-point tensor.
        weight: kernel in torch conv layout, same dtype and device as ``input``.
        bias: optional ``(out,)`` tensor.
        stride, dilation: positive int or tuple of one int per spatial dim.
        padding: non-negative int or tuple, ``"same"`` (stride 1 only) or ``"valid"``.
        groups: number of channel groups (divides in and out channels).
        padding_mode: ``"zeros" | "circular" | "reflect" | "replicate"``, as the
            ``padding_mode`` of ``torch.nn.ConvNd``.

    Returns:
        ``(batch, out, *out_size)`` with ``out_size = (size + pad_before + pad_after
        - dilation * (kernel - 1) - 1) // stride + 1``, in the input dtype
        (fp16 / bf16 are computed in fp32).

    Gradients flow to ``input``, ``weight`` and ``bias`` through a custom autograd
    Function that reuses the forward spectra; double backward is not supported.

    Example:
        >>> x, w = torch.randn(2, 4, 32, 32), torch.randn(4, 1, 15, 15)
        >>> y = fft_conv(x, w, padding="same", groups=4)
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding="same", groups=4), atol=1e-4)
        True
    """
    return _fft_conv(input, weight, bias, _check_args(input, weight, bias, stride, padding, dilation, groups,
                                                      padding_mode))


def _fft_conv(input: Tensor, weight: Tensor, bias: Tensor | None, args: _Args) -> Tensor:
    """:func:`fft_conv` on arguments already validated by :func:`_check_args` (the engine's entry)."""
    if not args.batched:
        return _fft_conv(input.unsqueeze(0), weight, bias, replace(args, batched=True))[0]
    if input.numel() == 0:  # nothing to transform, and MKL rejects empty FFTs
        mode = "constant" if args.padding_mode == "zeros" else args.padding_mode
        padded = F.pad(input, _flat_pads(args.pads), mode=mode)  # (0, Cin, *padded)
        return _direct_conv(padded, weight, bias, 0, replace(args, padding_mode="zeros"))
    dtype = input.dtype
    if dtype in _LOW_PRECISION:
        input, weight = input.float(), weight.float()
        bias = None if bias is None else bias.float()
    nd, pads = args.nd, args.pads
    sizes = tuple(input.shape[2:])
    circular = args.padding_mode == "circular"
    if args.padding_mode in ("reflect", "replicate") or (circular and _circular_wraps(args, sizes, weight)):
        input = F.pad(input, _flat_pads(pads), mode=args.padding_mode)  # (B, Cin, *padded)
        sizes, pads, circular = tuple(input.shape[2:]), ((0, 0),) * nd, False
    plan, blocks = _geometry(sizes, weight, pads, args, input.shape[0], input.shape[1], circular, input.device.type)
    if blocks is not None:
        out = _blocked_conv(input, weight, bias, pads, args, blocks)
    elif _packed_plan(weight, plan, input.shape[0]):
        keep = torch.is_grad_enabled() and weight.requires_grad
        out = _PackedFFTConvFunction.apply(input, weight, bias, plan, keep)
    else:
        out = _FFTConvFunction.apply(input, weight, bias, plan, torch.is_grad_enabled() and weight.requires_grad)
    return out.to(dtype) if dtype in _LOW_PRECISION else out


def _circular_wraps(args: _Args, sizes, weight: Tensor) -> bool:
    """Whether circular padding yields more outputs than one period (then it is materialised)."""
    for n, k, (lo, hi), s, d in zip(sizes, weight.shape[2:], args.pads, args.stride, args.dilation):
        keep = (n + lo + hi - d * (k - 1) - 1) // s + 1
        if (keep - 1) * s >= n:
            return True
    return False
