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
from dataclasses import dataclass
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

    CPU (pocketfft, measured on the reference machine, see docs/fft_conv.md): even
    7-smooth lengths are fastest, odd lengths and factors 11/13 cost ~1.3-1.8x,
    17-23 ~2.5x, larger primes ~4x. cuFFT has fast kernels for 2, 3, 5, 7 only and
    falls back to Bluestein (~3 transforms of twice the size) otherwise.
    """
    largest = max(_factor(n)) if n > 1 else 1
    if device_type == "cuda":
        return 1.0 if largest <= 7 else 4.0
    if largest <= 7:
        return 1.0 if n % 2 == 0 else 1.7
    if largest <= 13:
        return 1.3 if n % 2 == 0 else 1.8
    return 2.5 if largest <= 23 else 4.0


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
    best, best_cost = start, math.inf
    for n in range(start, 2 * start + multiple_of, multiple_of):
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


def _kernel_index(plan: _Plan, dim: int, device) -> Tensor:
    """Buffer position of each (dilated, shifted) kernel tap along ``dim``: ``(t*d - shift) mod n``."""
    k, d, lo, n = plan.kernel[dim], plan.dilation[dim], plan.shift[dim], plan.fft[dim]
    return (torch.arange(k, device=device) * d - lo) % n


def _place_kernel(weight: Tensor, plan: _Plan) -> Tensor:
    """Scatter kernel taps into the circular FFT buffer; taps that share a position add up."""
    nd = len(plan.fft)
    for i in range(nd):
        dim = weight.dim() - nd + i
        shape = list(weight.shape)
        shape[dim] = plan.fft[i]
        weight = weight.new_zeros(shape).index_add_(dim, _kernel_index(plan, i, weight.device), weight)
    return weight  # (Cout, Cin/g, *fft)


def _gather_kernel(buffer: Tensor, plan: _Plan) -> Tensor:
    """Adjoint of :func:`_place_kernel`: read each tap's position back out of the buffer."""
    nd = len(plan.fft)
    for i in range(nd):
        dim = buffer.dim() - nd + i
        buffer = buffer.index_select(dim, _kernel_index(plan, i, buffer.device))
    return buffer  # (Cout, Cin/g, *kernel)


def _rfft(x: Tensor, fft: tuple[int, ...]) -> Tensor:
    """Real spectrum of ``x`` zero-filled to ``fft``; the last dim first, on the unpadded rows only."""
    nd = len(fft)
    spectrum = torch.fft.rfft(x, n=fft[-1], dim=-1)  # (..., *sizes[:-1], fft[-1]//2+1)
    for i in range(nd - 1):
        spectrum = torch.fft.fft(spectrum, n=fft[i], dim=i - nd)
    return spectrum  # (..., *fft[:-1], fft[-1]//2+1) complex


def _fold_last(spectrum: Tensor, n: int, s: int) -> Tensor:
    """Half spectrum (length n//2+1) of a length-n signal -> half spectrum of its every-s-th sample
    (length m//2+1, m = n/s), up to the factor 1/s: ``Z[f] = sum_a Y[f + a*m]``."""
    m = n // s
    q = torch.arange(s, device=spectrum.device).unsqueeze(1) * m + torch.arange(m // 2 + 1, device=spectrum.device)
    mirrored = q > n // 2
    source = torch.where(mirrored, n - q, q).flatten()
    picked = spectrum.index_select(-1, source).unflatten(-1, (s, m // 2 + 1))  # (..., s, m//2+1)
    picked = torch.where(mirrored, picked.conj(), picked)
    return picked.sum(-2)  # (..., m//2+1)


def _tile_last(spectrum: Tensor, n: int, s: int) -> Tensor:
    """Half spectrum (length m//2+1) of a length-m signal -> half spectrum (length n//2+1, n = s*m)
    of the signal zero-stuffed by s, which is the periodic repetition ``G[q] = Gm[q mod m]``."""
    m = n // s
    r = torch.arange(n // 2 + 1, device=spectrum.device) % m
    mirrored = r > m // 2
    picked = spectrum.index_select(-1, torch.where(mirrored, m - r, r))  # (..., n//2+1)
    return torch.where(mirrored, picked.conj(), picked)


def _irfft_keep(spectrum: Tensor, fft: tuple[int, ...], stride: tuple[int, ...], keep: tuple[int, ...]) -> Tensor:
    """Samples ``j * stride`` (``j < keep``) of the real inverse transform of ``spectrum``.

    When the stride divides the length, the spectrum is aliased first so that the
    inverse has length n/s and no discarded sample is computed. Non-last dims go
    first so that the last (real) inverse only runs on kept rows.
    """
    nd = len(fft)
    scale = 1
    for i in range(nd - 1):
        dim, n, s = i - nd, fft[i], stride[i]
        if s > 1 and n % s == 0:
            spectrum = spectrum.unflatten(dim, (s, n // s)).sum(dim - 1)  # (..., n/s, ...)
            spectrum = torch.fft.ifft(spectrum, dim=dim).narrow(dim, 0, keep[i])
            scale *= s
        else:
            spectrum = torch.fft.ifft(spectrum, dim=dim)
            index = [slice(None)] * spectrum.dim()
            index[dim] = slice(0, (keep[i] - 1) * s + 1, s)
            spectrum = spectrum[tuple(index)]
    n, s = fft[-1], stride[-1]
    if s > 1 and n % s == 0:
        out = torch.fft.irfft(_fold_last(spectrum, n, s), n=n // s, dim=-1)[..., : keep[-1]]
        scale *= s
    else:
        out = torch.fft.irfft(spectrum, n=n, dim=-1)[..., : (keep[-1] - 1) * s + 1 : s]
    return out / scale if scale > 1 else out  # (..., *keep)


def _rfft_upsampled(grad: Tensor, plan: _Plan) -> Tensor:
    """Spectrum (length ``plan.fft``) of ``grad`` zero-stuffed by the stride: the adjoint of the
    strided read in :func:`_irfft_keep`."""
    nd = len(plan.fft)
    # Dims whose length the stride does not divide (circular mode only) are zero-stuffed explicitly.
    explicit = [s > 1 and n % s != 0 for n, s in zip(plan.fft, plan.stride)]
    if any(explicit):
        shape = list(grad.shape)
        index = [slice(None)] * grad.dim()
        for i, stuff in enumerate(explicit):
            if stuff:
                dim = grad.dim() - nd + i
                shape[dim] = (plan.out[i] - 1) * plan.stride[i] + 1
                index[dim] = slice(None, None, plan.stride[i])
        stuffed = grad.new_zeros(shape)
        stuffed[tuple(index)] = grad
        grad = stuffed
    stride = [1 if stuff else s for s, stuff in zip(plan.stride, explicit)]
    n, s = plan.fft[-1], stride[-1]
    spectrum = torch.fft.rfft(grad, n=n // s, dim=-1)
    if s > 1:
        spectrum = _tile_last(spectrum, n, s)
    for i in range(nd - 1):
        dim, n, s = i - nd, plan.fft[i], stride[i]
        spectrum = torch.fft.fft(spectrum, n=n // s, dim=dim)
        if s > 1:
            repeats = [1] * spectrum.dim()
            repeats[spectrum.dim() + dim] = s
            spectrum = spectrum.repeat(repeats)
    return spectrum  # (B, Cout, *fft[:-1], fft[-1]//2+1) complex


# ----------------------------------------------------------------------------- spectral products
# x: (B, G*I, *F), w: (G*O, I, *F), y: (B, G*O, *F). Cross-correlation multiplies by conj(w).


def _product(x_f: Tensor, w_f: Tensor, groups: int) -> Tensor:
    b, cin = x_f.shape[:2]
    cout, i = w_f.shape[:2]
    o = cout // groups
    freq = x_f.shape[2:]
    if i == 1:  # depthwise (o == 1) or channel multiplier: elementwise, no channel contraction
        x_g = x_f.reshape(b, groups, 1, -1)  # (B, G, 1, F)
        y_f = x_g * w_f.reshape(groups, o, -1).conj()  # (B, G, O, F)
    else:
        y_f = torch.einsum("bgif,goif->bgof", x_f.reshape(b, groups, i, -1), w_f.reshape(groups, o, i, -1).conj())
    return y_f.reshape(b, cout, *freq)


def _input_grad_product(g_f: Tensor, w_f: Tensor, groups: int) -> Tensor:
    b, cout = g_f.shape[:2]
    i = w_f.shape[1]
    o = cout // groups
    freq = g_f.shape[2:]
    g_g = g_f.reshape(b, groups, o, -1)  # (B, G, O, F)
    if i == 1:
        x_f = (g_g * w_f.reshape(groups, o, -1)).sum(2) if o > 1 else g_g[:, :, 0] * w_f.reshape(groups, -1)
    else:
        x_f = torch.einsum("bgof,goif->bgif", g_g, w_f.reshape(groups, o, i, -1))
    return x_f.reshape(b, groups * i, *freq)


def _weight_grad_product(x_f: Tensor, g_f: Tensor, groups: int, i: int) -> Tensor:
    b, cout = g_f.shape[:2]
    o = cout // groups
    freq = g_f.shape[2:]
    g_g = g_f.reshape(b, groups, o, -1).conj()  # (B, G, O, F)
    x_g = x_f.reshape(b, groups, i, -1)  # (B, G, I, F)
    if i == 1:
        w_f = (x_g * g_g).sum(0)  # (G, O, F)
    else:
        w_f = torch.einsum("bgif,bgof->goif", x_g, g_g)
    return w_f.reshape(cout, i, *freq)


class _FFTConvFunction(torch.autograd.Function):
    """Forward and backward of the (unpadded-input, circular-length) FFT correlation.

    Saves the input spectrum (for the weight gradient) and the kernel spectrum (for
    the input gradient), so backward transforms only the output gradient.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor | None, plan: _Plan) -> Tensor:
        x_f = _rfft(input, plan.fft)  # (B, Cin, *F)
        w_f = _rfft(_place_kernel(weight, plan), plan.fft)  # (Cout, Cin/g, *F)
        out = _irfft_keep(_product(x_f, w_f, plan.groups), plan.fft, plan.stride, plan.out)  # (B, Cout, *out)
        if bias is not None:
            out = out + bias.reshape(-1, *([1] * len(plan.fft)))
        need_input, need_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x_f if need_weight else None, w_f if need_input else None)
        ctx.plan = plan
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        plan: _Plan = ctx.plan
        x_f, w_f = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        nd = len(plan.fft)
        grad_input = grad_weight = grad_bias = None
        if need_input or need_weight:
            g_f = _rfft_upsampled(grad, plan)  # (B, Cout, *F)
        if need_input:
            ones = (1,) * nd
            grad_input = _irfft_keep(_input_grad_product(g_f, w_f, plan.groups), plan.fft, ones, plan.sizes)
        if need_weight:
            i = x_f.shape[1] // plan.groups
            buffer = _irfft_keep(_weight_grad_product(x_f, g_f, plan.groups, i), plan.fft, (1,) * nd, plan.fft)
            grad_weight = _gather_kernel(buffer, plan)
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
    args = _check_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if not args.batched:
        return fft_conv(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups, padding_mode)[0]
    dtype = input.dtype
    if dtype in _LOW_PRECISION:
        input, weight = input.float(), weight.float()
        bias = None if bias is None else bias.float()
    nd, pads = args.nd, args.pads
    sizes = tuple(input.shape[2:])
    circular = args.padding_mode == "circular"
    if args.padding_mode in ("reflect", "replicate") or (circular and _circular_wraps(args, sizes, weight)):
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]
        input = F.pad(input, flat, mode=args.padding_mode)  # (B, Cin, *padded)
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
