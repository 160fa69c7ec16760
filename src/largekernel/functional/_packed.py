"""Two real signals as one complex one: the batch-pair packing of the CPU FFT paths.

For a real kernel (a Hermitian spectrum ``w``), ``ifftn(w * fftn(x_a + i x_b))`` is
``y_a + i y_b``: one complex transform over half the batch does the work of two real
ones. With torch's MKL backend on the CPU that is 1.2-2.3x cheaper than ``rfftn`` +
``irfftn`` over the whole batch for 2-D and 3-D grids, the packing copies included
(``irfftn`` runs a complex pass and a copy before its real one), and 1.4x dearer in 1-D
(measured on the reference CPU, torch 2.13; docs/spectral.md). CUDA is not measured,
so it keeps real transforms.

Backward without conjugating anything large: packing the gradient pair swapped,
``g_b + i g_a = i conj(g_a + i g_b)``, makes its *unnormalised inverse* transform
``q = i conj(G)`` (``G`` the forward transform of the unswapped pair). Then a
correlation's kernel gradient ``sum conj(X) G`` is ``i conj(sum X q)`` and a convolution's
input gradient ``ifftn(v G)`` is ``i conj(fftn(q conj(v)) / N)``: the pair swapped back.
Sums over the packed pairs carry cross terms ``i (conj X_a G_b - conj X_b G_a)``, which
are anti-Hermitian: they vanish in the real part of an inverse transform and in a
Hermitian symmetrisation.

Also here, for the packed and the real-FFT paths alike: :func:`channel_blocks`, the
cache-sized channel ranges that elementwise (depthwise) spectral products run in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from largekernel.functional import _native

__all__ = ["packs", "pack", "unpack", "channel_sums", "channel_blocks", "packed_bytes"]

# Where the packed path runs: device types, and the fewest spatial dims (1-D is faster real).
PACKED_DEVICES = {"cpu"}
PACKED_MIN_NDIM = 2
# Bytes per channel block (:func:`channel_blocks`), measured best on the reference CPU: the packed paths'
# signal (about one core's L2 cache), and the real-FFT paths' input and output spectra together (their
# transforms run more rows per call); devices that use blocks.
BLOCK_BYTES = 2 ** 21
REAL_BLOCK_BYTES = 2 ** 23
BLOCK_DEVICES = {"cpu"}


def packs(device: torch.device, nd: int, batch: int) -> bool:
    """Whether ``nd``-D transforms of a batch of ``batch`` on ``device`` run on packed batch pairs (a batch
    of one keeps real transforms: nothing to pair)."""
    return batch > 1 and device.type in PACKED_DEVICES and nd >= PACKED_MIN_NDIM


def pack(x: Tensor, grid: tuple[int, ...], start: tuple[int, ...], swap: bool = False) -> Tensor:
    """Real ``(B, C, *size)`` -> complex ``(ceil(B/2), C, *grid)``: sample ``b`` as the real part of ``b``, sample
    ``ceil(B/2) + b`` as its imaginary part (the other way round with ``swap``), placed at ``start`` in a zero
    grid (an odd batch's last pair is completed with zeros)."""
    nd = len(grid)
    batch, size = x.shape[0], tuple(x.shape[-nd:])
    half = (batch + 1) // 2
    first, second = x[:half], x[half:]
    if size == grid and batch % 2 == 0:
        return torch.complex(second, first) if swap else torch.complex(first, second)
    buf = x.new_zeros(half, *x.shape[1:-nd], *grid, 2)
    region = (..., *(slice(s, s + n) for s, n in zip(start, size)))
    buf[region + (int(swap),)] = first
    buf[:batch - half][region + (1 - int(swap),)] = second
    return torch.view_as_complex(buf)


def unpack(z: Tensor, batch: int, start: tuple[int, ...], size: tuple[int, ...], bias: Tensor | None = None,
           swap: bool = False, out: Tensor | None = None) -> Tensor:
    """Inverse of :func:`pack` on the region ``start:start + size`` of a packed complex signal, plus ``bias``
    (per channel); into ``out`` (any strides, e.g. a channel block of a larger output) or a new contiguous
    tensor."""
    half = z.shape[0]
    if out is None:
        out = torch.empty(batch, *z.shape[1:-len(size)], *size, dtype=z.real.dtype, device=z.device)
    if _native.unpack(z, batch, start, size, bias, swap, out):  # one read of z (else two strided copies)
        return out
    parts = torch.view_as_real(z)[(..., *(slice(s, s + n) for s, n in zip(start, size)), slice(None))]
    pairs = ((out[:half], parts[..., int(swap)]), (out[half:], parts[:batch - half, ..., 1 - int(swap)]))
    with torch.no_grad():  # called inside autograd Functions; tracing (torch.export) may run them with grad on
        for dst, src in pairs:
            if bias is None:
                dst.copy_(src)
            else:
                torch.add(src, bias.view(-1, *([1] * len(size))), out=dst)
    return out


def channel_sums(q: Tensor, out: Tensor) -> Tensor:
    """Per channel, the sum over both samples of every pair and the whole grid of the signal whose *unnormalised*
    transform is ``q`` (``(ceil(B/2), C, *grid)`` complex): its DC bin, real plus imaginary part, summed over the
    pairs; written into ``out`` ``(C,)`` (a bias gradient without a pass over the output gradient)."""
    nd = q.dim() - 2
    dc = torch.view_as_real(q[(slice(None), slice(None)) + (0,) * nd])  # (ceil(B/2), C, 2)
    return torch.sum(dc, dim=(0, 2), out=out)


def packed_bytes(batch: int, grid: tuple[int, ...], itemsize: int) -> int:
    """Bytes of one channel's packed signal: ``ceil(batch / 2)`` complex grids of ``2 * itemsize``-byte values."""
    return (batch + 1) // 2 * math.prod(grid) * 2 * itemsize


def channel_blocks(channels: int, bytes_per_channel: int, device: torch.device, real: bool = False) -> list[slice]:
    """Channel ranges of about :data:`BLOCK_BYTES` each (:data:`REAL_BLOCK_BYTES` with ``real``; one range off
    :data:`BLOCK_DEVICES`).

    An elementwise (depthwise) spectral product treats channels independently, so transform, product and
    inverse transform can run block by block: each block's intermediates stay in cache and its buffers are
    recycled by the allocator, where whole-activation intermediates would each make a trip to memory (and,
    with glibc, often fault fresh pages in). Measured on the reference CPU (docs/fft_conv.md): NIFF's packed
    training step (8 x 96 x 56 x 56) 17-23 -> 14-15 ms; real-FFT depthwise 1-D forward+backward (8 x 256 x 2048,
    kernel 2048) 55 -> 33 ms. CUDA is not measured, so it runs one block.
    """
    if device.type not in BLOCK_DEVICES:
        return [slice(0, channels)]
    budget = REAL_BLOCK_BYTES if real else BLOCK_BYTES
    step = max(1, min(channels, budget // max(1, bytes_per_channel)))
    return [slice(c, min(c + step, channels)) for c in range(0, channels, step)]
