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
  products of spectra; only general grouped convolutions contract channels
  (a batched matmul over frequencies).
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

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

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


def _place_kernel(weight: Tensor, plan: _Plan) -> Tensor:
    """Scatter kernel taps into the circular FFT buffer (no zero-stuffed dilated copy); taps that
    share a position (a kernel longer than the buffer) add up."""
    buffer = weight.new_zeros(*weight.shape[:2], *plan.fft)  # (Cout, Cin/g, *fft)
    index = _kernel_index(plan, weight.device)
    if all(d * (k - 1) + 1 <= n for k, d, n in zip(plan.kernel, plan.dilation, plan.fft)):
        buffer[(slice(None), slice(None), *index)] = weight
        return buffer
    channels = [torch.arange(c, device=weight.device).reshape(-1, *([1] * (weight.dim() - 1 - j)))
                for j, c in enumerate(weight.shape[:2])]
    return buffer.index_put_((*channels, *index), weight, accumulate=True)


def _gather_kernel(buffer: Tensor, plan: _Plan) -> Tensor:
    """Adjoint of :func:`_place_kernel`: read each tap's position back out of the buffer."""
    return buffer[(slice(None), slice(None), *_kernel_index(plan, buffer.device))]  # (Cout, Cin/g, *kernel)


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
# x: (B, G*I, *F), w: (G*O, I, *F), y: (B, G*O, *F). The kernel spectrum is kept conjugated
# (cross-correlation multiplies by conj(w)), materialised once because it is small.


def _product(x_f: Tensor, wc_f: Tensor, groups: int) -> Tensor:
    """Output spectrum ``y = sum_i x * conj(w)`` per group."""
    b = x_f.shape[0]
    cout, i = wc_f.shape[:2]
    o = cout // groups
    freq = x_f.shape[2:]
    if i == 1:  # depthwise (o == 1) or channel multiplier: elementwise, no channel contraction
        y_f = x_f.reshape(b, groups, 1, -1) * wc_f.reshape(groups, o, -1)  # (B, G, O, F)
    else:
        y_f = torch.einsum("bgif,goif->bgof", x_f.reshape(b, groups, i, -1), wc_f.reshape(groups, o, i, -1))
    return y_f.reshape(b, cout, *freq)


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


def _weight_grad_product(x_f: Tensor, g_f: Tensor, groups: int) -> Tensor:
    """Kernel-gradient spectrum ``gw = sum_b x * conj(g)``: reduced over the batch before the inverse
    transform, so that only a kernel-sized buffer is transformed back."""
    b, cout = g_f.shape[:2]
    i = x_f.shape[1] // groups
    o = cout // groups
    freq = g_f.shape[2:]
    w_f = torch.einsum("bgif,bgof->goif", x_f.reshape(b, groups, i, -1), g_f.reshape(b, groups, o, -1).conj())
    return w_f.reshape(cout, i, *freq)


class _FFTConvFunction(torch.autograd.Function):
    """Forward and backward of the (unpadded-input, circular-length) FFT correlation.

    Saves the input spectrum (for the weight gradient) and the kernel spectrum (for
    the input gradient), so backward transforms only the output gradient.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan) -> Tensor:
        dims = _spatial(len(plan.fft))
        x_f = torch.fft.rfftn(input, s=plan.fft, dim=dims)  # (B, Cin, *F) complex
        wc_f = torch.fft.rfftn(_place_kernel(weight, plan), dim=dims).conj_physical()  # (Cout, Cin/g, *F)
        out = _irfft_keep(_product(x_f, wc_f, plan.groups), plan.fft, plan.stride, plan.out)  # (B, Cout, *out)
        # the add (or copy) also makes the strided slice contiguous, like torch's conv output
        out = out + bias.reshape(-1, *([1] * len(dims))) if bias is not None else out.contiguous()
        need_input, need_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x_f if need_weight else None, wc_f if need_input else None)
        ctx.plan = plan
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        plan: _Plan = ctx.plan
        x_f, wc_f = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        nd = len(plan.fft)
        grad_input = grad_weight = grad_bias = None
        if need_input or need_weight:
            g_f = _rfft_upsampled(grad, plan)  # (B, Cout, *F)
        if need_weight:  # first: the input-gradient product below may overwrite g_f
            buffer = torch.fft.irfftn(_weight_grad_product(x_f, g_f, plan.groups), s=plan.fft, dim=_spatial(nd))
            grad_weight = _gather_kernel(buffer, plan)  # (Cout, Cin/g, *kernel)
        if need_input:
            gx_f = _input_grad_product(g_f, wc_f.conj_physical(), plan.groups)  # (B, Cin, *F)
            grad_input = _irfft_keep(gx_f, plan.fft, (1,) * nd, plan.sizes).contiguous()  # (B, Cin, *sizes)
        if need_bias:
            grad_bias = grad.sum(dim=(0, *range(2, 2 + nd)))
        return grad_input, grad_weight, grad_bias, None


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
    plan = _make_plan(sizes, tuple(weight.shape[2:]), pads, args.stride, args.dilation, args.groups,
                      circular, input.device.type)
    out = _FFTConvFunction.apply(input, weight, bias, plan)
    return out.to(dtype) if dtype in _LOW_PRECISION else out


def _circular_wraps(args: _Args, sizes, weight: Tensor) -> bool:
    """Whether circular padding yields more outputs than one period (then it is materialised)."""
    for n, k, (lo, hi), s, d in zip(sizes, weight.shape[2:], args.pads, args.stride, args.dilation):
        keep = (n + lo + hi - d * (k - 1) - 1) // s + 1
        if (keep - 1) * s >= n:
            return True
    return False
