"""Two real channels as one complex signal: the channel-pair packing of the CPU FFT paths.

Channel ``p`` and channel ``h + p`` of the *same sample* (``h = ceil(C / 2)``) travel as
``z = x_p + i x_(h+p)``: one complex transform does the work of two real ones, and with
torch's MKL backend on the CPU complex transforms over half the channels cost less than
``rfftn`` + ``irfftn`` over all of them for 2-D and 3-D grids (docs/fft_conv.md). Pairs
never cross samples, so a sample's output never depends on another sample's values
(NaN, infinities and huge values included), as with torch's convolution.

The two channels have different kernels. With ``Z = fftn(z)`` and Hermitian kernel
spectra ``W1``, ``W2`` (real kernels), the spectra of the two channels are
``X1 = (Z + conj Zm) / 2`` and ``X2 = (Z - conj Zm) / 2i`` (``Zm = Z[-k]``, the mirrored
bin), so the packed output spectrum ``W1 X1 + i W2 X2`` is

    Y = A Z + D conj(Zm),   A = (W1 + W2) / 2,   D = (W1 - W2) / 2,

whose inverse transform is ``y1 + i y2`` (:func:`mirror_product`). The adjoint, with the
packed output gradient's transform ``G``, is ``conj(A) G + conj(D) conj(Gm)``, and the
kernels' gradient spectra ``X_c conj(G_c)`` are the Hermitian parts of ``(U + V) / 2`` and
``(U - V) / 2`` with ``U = sum_b Z conj(G)``, ``V = sum_b Z Gm`` (:func:`mirror_grad`).
With ``per`` outputs per channel (a channel multiplier) every output has its own ``A``,
``D`` and gradient sums.

Each step runs as one native pass where the C kernels are available
(:mod:`largekernel.functional._native`), else as torch operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from largekernel.functional._native import mirror_grad as native_mirror_grad
from largekernel.functional._native import mirror_product as native_mirror_product
from largekernel.functional._native import pack_pairs as native_pack_pairs
from largekernel.functional._native import unpack_pairs as native_unpack_pairs
from largekernel.functional._native import available as native_available
from largekernel.functional._grid import mirror, spatial_dims, write

__all__ = ["pack_pairs", "unpack_pairs", "pair_kernels", "mirror_product", "mirror_grad"]


def pack_pairs(first: Tensor, second: Tensor, grid: tuple[int, ...], start: tuple[int, ...] | None = None) -> Tensor:
    """Real ``first`` ``(B, n, *size)`` and ``second`` ``(B, n2, *size)`` (``n2 <= n``) -> complex ``(B, n, *grid)``:
    ``first + i second`` at ``start`` (default the origin) of a zero grid (missing second members are zero)."""
    nd = len(grid)
    batch, n = first.shape[:2]
    n2 = second.shape[1]
    size = tuple(first.shape[-nd:])
    start = (0,) * nd if start is None else tuple(start)
    if size == tuple(grid) and n2 == n and not native_available(first):
        return torch.complex(first, second)
    complex_dtype = torch.complex64 if first.dtype == torch.float32 else torch.complex128
    z = torch.empty(batch, n, *grid, dtype=complex_dtype, device=first.device)
    if native_pack_pairs(first, second, z, start):
        return z
    parts = torch.view_as_real(z)
    parts.zero_()
    region = (..., *(slice(a, a + k) for a, k in zip(start, size)))
    parts[region + (0,)] = first
    parts[:, :n2][region + (1,)] = second
    return z


def unpack_pairs(z: Tensor, first: Tensor, second: Tensor, start: tuple[int, ...], bias_first: Tensor | None = None,
                 bias_second: Tensor | None = None) -> None:
    """Inverse of :func:`pack_pairs` on the region ``start:start + size`` of ``z`` ``(B, n, *grid)``: the real parts
    into ``first`` ``(B, n, *size)``, the imaginary parts into ``second`` ``(B, n2, *size)`` (any strides, e.g. a
    channel block of a larger output), plus the per-channel biases."""
    if native_unpack_pairs(z, first, second, start, bias_first, bias_second):
        return
    nd = len(start)
    size = first.shape[-nd:]
    parts = torch.view_as_real(z)[(..., *(slice(a, a + k) for a, k in zip(start, size)), slice(None))]
    n2 = second.shape[1]
    write(first, parts[..., 0], bias_first)
    write(second, parts[:, :n2, ..., 1], bias_second)


def pair_kernels(spectra: Tensor, pairs: int) -> tuple[Tensor, Tensor]:
    """``A = (W1 + W2) / 2`` and ``D = (W1 - W2) / 2`` per channel pair from the per-channel kernel spectra
    ``(C, per, *grid)``: ``(pairs, per, *grid)`` each; a channel without partner gets ``A = W1``, ``D = 0``."""
    first, second = spectra[:pairs], spectra[pairs:]
    n2 = second.shape[0]
    a = first.clone()
    d = torch.zeros_like(first)
    a[:n2] = 0.5 * (first[:n2] + second)
    d[:n2] = 0.5 * (first[:n2] - second)
    return a, d


def mirror_product(z: Tensor, a: Tensor, d: Tensor) -> Tensor:
    """``Y = A Z + D conj(Z[-k])``: ``z`` ``(B, n, *grid)``, ``a``, ``d`` ``(n, per, *grid)`` -> ``(B, n, per, *grid)``."""
    if native_available(z):
        y = torch.empty(z.shape[0], *a.shape, dtype=z.dtype, device=z.device)
        if native_mirror_product(z, a, d, y):
            return y
    zm = mirror(z, spatial_dims(z.dim() - 2)).conj()
    return a * z.unsqueeze(2) + d * zm.unsqueeze(2)


def mirror_grad(z: Tensor | None, g: Tensor, a: Tensor, d: Tensor, need_input: bool,
                need_sums: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The adjoint of :func:`mirror_product` for the packed output gradient's transform ``g`` ``(B, n, per, *grid)``:
    ``gx = sum_o conj(A) G + conj(D) conj(Gm)`` ``(B, n, *grid)`` (if ``need_input``) and the kernel-gradient sums
    ``U = sum_b Z conj(G)``, ``V = sum_b Z Gm`` ``(n, per, *grid)`` (if ``need_sums``; ``z`` the saved spectrum)."""
    batch, n, per = g.shape[:3]
    grid = g.shape[3:]
    gx = torch.empty(batch, n, *grid, dtype=g.dtype, device=g.device) if need_input else None
    u = torch.empty(n, per, *grid, dtype=g.dtype, device=g.device) if need_sums else None
    v = torch.empty_like(u) if need_sums else None
    if native_mirror_grad(z if need_sums else None, g, a, d, gx, u, v):
        return gx, u, v
    gm = mirror(g, spatial_dims(len(grid)))
    if need_input:
        torch.sum(a.conj() * g + d.conj() * gm.conj(), dim=2, out=gx)
    if need_sums:
        torch.sum(z.unsqueeze(2) * g.conj(), dim=0, out=u)
        torch.sum(z.unsqueeze(2) * gm, dim=0, out=v)
    return gx, u, v
