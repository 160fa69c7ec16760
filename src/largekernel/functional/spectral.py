"""Filters defined on the frequency grid, and the transforms around them.

NIFF (seed 000) defines a depthwise filter directly on the frequency grid of its input,
as large as the input; FNet / FiT (seed 003) mix tokens by a Fourier transform. Their
layers (:mod:`largekernel.nn.niff`, :mod:`largekernel.nn.mixing`) build the filter and
call these functions, which run through the same spectral products as every FFT
convolution of the library (:mod:`largekernel.functional._spectral`): real transforms,
or channel pairs packed as complex signals on the CPU, in cache-sized channel blocks,
with the planner's choice (:func:`~largekernel.functional.planner.plan_filter`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from largekernel.functional._args import ConvArgumentError, autocast_off, conv_memory_format
from largekernel.functional._grid import spatial_dims
from largekernel.functional._product import spectral_product
from largekernel.functional._spectral import pointwise
from largekernel.functional._tracing import compiling, refuse_torchscript_onnx, tracing, transformed
from largekernel.functional.planner import plan_filter
from largekernel.functional._fx import call_under_fx

__all__ = ["spectral_filter", "to_spectrum", "to_spatial", "spectral_pointwise", "fourier_mix"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@call_under_fx
def spectral_filter(input: Tensor, filter: Tensor, *, mixing: Tensor | None = None, bias: Tensor | None = None,
                    out_start: tuple[int, ...] | None = None, out_size: tuple[int, ...] | None = None) -> Tensor:
    """Circular convolution of ``input`` by filters given on the frequency grid.

    ``filter``: ``(C * m, *grid)`` complex in FFT order (DC first), the spectra of real kernels
    (Hermitian: ``W[-k] = conj(W[k])``), or their real and imaginary parts as a real ``(C * m, *grid, 2)`` tensor
    (``torch.view_as_real``'s layout: what keeps a ``torch.compile`` graph free of complex tensors, for which
    inductor generates no code); channel ``c`` of ``input`` ``(B, C, *size)`` (``size <= grid``,
    zero-filled to the grid) is filtered by filters ``c * m .. c * m + m - 1``. Then an optional real
    ``mixing`` ``(out, C * m)`` across channels, then ``bias`` per output channel. The result is the region
    ``out_start : out_start + out_size`` of the grid (default: the input's own region):
    ``Re(ifftn(W * fftn(x)))`` there, with gradients of every order for input, filter, mixing and bias.
    """
    parts = isinstance(filter, Tensor) and not filter.is_complex()
    if not isinstance(filter, Tensor) or (parts and not (filter.is_floating_point() and filter.dim() >= 3
                                                         and filter.shape[-1] == 2)):
        raise ConvArgumentError(f"filter must be complex (a spectrum) or its real and imaginary parts, a floating "
                                f"point (filters, *grid, 2) tensor, got "
                                f"{getattr(filter, 'dtype', type(filter).__name__)} of shape "
                                f"{tuple(getattr(filter, 'shape', ()))}")
    nd = filter.dim() - 1 - parts
    if not isinstance(input, Tensor) or input.dim() != nd + 2:
        raise ConvArgumentError(f"input must be a (batch, channels, *spatial) tensor with {nd} spatial dims to match "
                                f"filter (filters, *grid{', 2' if parts else ''}), got "
                                f"{getattr(input, 'shape', type(input).__name__)}")
    batch, channels = input.shape[:2]
    grid, size = tuple(filter.shape[1:nd + 1]), tuple(input.shape[2:])
    if filter.shape[0] % channels:
        raise ConvArgumentError(f"filter must hold a multiple of the input's {channels} channels, got "
                                f"{filter.shape[0]} filters")
    if any(n > g for n, g in zip(size, grid)):
        raise ConvArgumentError(f"input size {size} must fit in the filter grid {grid}")
    out_start = (0,) * nd if out_start is None else tuple(out_start)
    out_size = size if out_size is None else tuple(out_size)
    if any(a < 0 or a + n > g for a, n, g in zip(out_start, out_size, grid)):
        raise ConvArgumentError(f"out_start {out_start} + out_size {out_size} must lie within the grid {grid}")
    dtype = input.dtype
    if batch == 0:  # nothing to transform (MKL rejects empty transforms): an empty output, still in the graph
        out_channels = filter.shape[0] if mixing is None else mixing.shape[0]
        empty = input.new_zeros(0, out_channels, *out_size)
        return empty + sum(0 * t.real.sum() for t in (input, filter, mixing, bias) if t is not None)
    with autocast_off(input.device.type):
        x = input.float() if dtype in _LOW_PRECISION else input
        real = x.dtype
        filter = filter.to(real if parts else torch.complex64 if real == torch.float32 else torch.complex128)
        mixing = None if mixing is None else mixing.to(real)
        bias = None if bias is None else bias.to(real)
        geometry = plan_filter(batch, channels, filter.shape[0], grid, size, out_start, out_size,
                               input.device.type, real, mixing is not None)
        y = spectral_product(x, filter, bias, geometry, mixing)
    return y.to(dtype)


class _GradientInFormat(torch.autograd.Function):
    """The identity, whose backward lays the gradient out in ``memory_format``: torch's convolutions give a
    channels-last input's gradient channels-last, and the transform's backward gives it contiguous."""

    @staticmethod
    def forward(ctx, x: Tensor, memory_format: torch.memory_format) -> Tensor:
        ctx.memory_format = memory_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.contiguous(memory_format=ctx.memory_format), None  # differentiable: any order of derivative


def _gradient_in_format(x: Tensor) -> Tensor:
    """``x``, its gradient laid out as ``x`` is (:class:`_GradientInFormat`) where that is channels-last. Not under
    torch.func's transforms (the Function has no batching rule) nor while an export records (torch operations
    only): the gradient's values are the same, its layout only is not kept there."""
    layout = conv_memory_format(x)
    if layout is torch.contiguous_format or not (x.requires_grad and torch.is_grad_enabled()) or transformed(x) \
            or (tracing() and not compiling()):
        return x
    return _GradientInFormat.apply(x, layout)


def to_spectrum(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """``rfftn`` of ``x`` over its last ``len(grid)`` dims on ``grid`` (zero-filled): ``(..., *grid[:-1],
    grid[-1] // 2 + 1)`` complex; half precision is transformed in float32. A channels-last ``x`` gets a
    channels-last gradient, as from torch's convolutions (:func:`_gradient_in_format`)."""
    refuse_torchscript_onnx("a spectrum (NIFF's output='spectrum' and Spectrum inputs)")
    x = _gradient_in_format(x)
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    return torch.fft.rfftn(x, s=grid, dim=spatial_dims(len(grid)))


def to_spatial(spectrum: Tensor, grid: tuple[int, ...]) -> Tensor:
    """The real signal on ``grid`` whose half spectrum is ``spectrum`` (``irfftn``)."""
    return torch.fft.irfftn(spectrum, s=grid, dim=spatial_dims(len(grid)))


def spectral_pointwise(spectrum: Tensor, weight: Tensor) -> Tensor:
    """A real ``(out, in)`` matrix across the channels of a complex spectrum ``(B, in, *freq)``."""
    return pointwise(spectrum, weight.to(spectrum.real.dtype))


@call_under_fx
def fourier_mix(x: Tensor, token_dim: int = -2, hidden_dim: int = -1) -> Tensor:
    """FNet's mixing ``Re(fft2(x))`` over ``(token_dim, hidden_dim)``; same shape as ``x``, and its dtype for a
    real ``x`` (half precision is transformed in float32); a complex ``x`` gives the real part's dtype."""
    if x.shape[token_dim] == 0 or x.shape[hidden_dim] == 0:
        raise ConvArgumentError(f"fourier_mix needs non-empty token (dim {token_dim}) and hidden (dim {hidden_dim}) "
                                f"axes, got shape {tuple(x.shape)}")
    if x.numel() == 0:  # an empty batch: nothing to transform (MKL rejects empty transforms)
        return x.clone()
    refuse_torchscript_onnx("fourier_mix (FourierMix, FNet and FiT's token mixing)")
    dtype = x.dtype
    if dtype in _LOW_PRECISION:
        x = x.float()
    if x.is_complex():
        return torch.fft.fft2(x, dim=(token_dim, hidden_dim)).real
    if transformed(x):  # torch.func, forward-mode AD: the Function's operations, differentiated
        return _real_part_of_fft2(x, token_dim, hidden_dim).to(dtype)
    return _FourierMix.apply(x, token_dim, hidden_dim).to(dtype)


def _real_part_of_fft2(x: Tensor, token_dim: int, hidden_dim: int) -> Tensor:
    """``Re(fft2(x))`` of a real ``x`` from the one-sided transform (half the work of a complex one):
    ``Re X[k1, D - k2] = Re X[-k1, k2]`` gives the hidden axis' other half."""
    if tracing() and not compiling():
        # An exported program: the two-sided transform. With a symbolic D, the half's bounds below are a guard that
        # torch's shape solver cannot prove, and it would fix D's parity.
        return torch.fft.fft2(x, dim=(token_dim, hidden_dim)).real
    half = torch.fft.rfft2(x, dim=(token_dim, hidden_dim)).real  # hidden frequencies 0 .. D // 2
    rest = half.narrow(hidden_dim, 1, (x.shape[hidden_dim] - 1) // 2)  # 1 .. (D - 1) // 2, for D - 1 .. D // 2 + 1
    rest = rest.flip((token_dim, hidden_dim)).roll(1, token_dim)  # k1 -> -k1 (mod N), k2 -> D - k2
    return torch.cat((half, rest), hidden_dim)


class _FourierMix(torch.autograd.Function):
    """``Re(F x)`` for real ``x``, ``F`` the 2-D DFT: ``Re F`` is a real symmetric matrix (the DFT matrix is
    symmetric), so the backward is the same map applied to the gradient (and so is every higher derivative)."""

    @staticmethod
    def forward(ctx, x: Tensor, token_dim: int, hidden_dim: int) -> Tensor:
        ctx.dims = token_dim, hidden_dim
        return _real_part_of_fft2(x, token_dim, hidden_dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _FourierMix.apply(grad, *ctx.dims), None, None
