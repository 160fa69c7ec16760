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
bin), so the packed output spectrum is

    Y = W1 X1 + W2 (i X2),

whose inverse transform is ``y1 + i y2`` (:func:`mirror_product`; one pass reads ``Z``, its
mirror and both kernel spectra, nothing is precomputed per pair). The adjoint, with the
packed output gradient's transform ``G``, is ``conj(W1) G1 + conj(W2) (i G2)`` (``G``'s two
members' parts, split the same way), and the kernels' gradient spectra ``X_c conj(G_c)``
are the Hermitian parts of ``(U + V) / 2`` and ``(U - V) / 2`` with ``U = sum_b Z conj(G)``,
``V = sum_b Z Gm``, computed in the same pass (:func:`mirror_grad`). With ``per`` outputs
per channel (a channel multiplier) every output has its own kernel spectra and gradient sums.

Each step runs as one native pass where the C kernels are available
(:mod:`largekernel.functional._native`), else as torch operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from largekernel.functional._native import mirror_grad as native_mirror_grad
from largekernel.functional._native import mirror_product as native_mirror_product
from largekernel.functional._native import pack_pairs as native_pack_pairs
from largekernel.functional._native import unpack_pairs as native_unpack_pairs
from largekernel.functional._native import available as native_available
from largekernel.functional._grid import mirror, spatial_dims, write
from largekernel.functional._tracing import symbolic

__all__ = ["pack_pairs", "unpack_pairs", "mirror_product", "mirror_grad"]


def pack_pairs(first: Tensor, second: Tensor, grid: tuple[int, ...], start: tuple[int, ...] | None = None) -> Tensor:
    """Real ``first`` ``(B, n, *size)`` and ``second`` ``(B, n2, *size)`` (``n2 <= n``) -> complex ``(B, n, *grid)``:
    ``first + i second`` at ``start`` (default the origin) of a zero grid (missing second members are zero)."""
    nd = len(grid)
    batch, n = first.shape[:2]
    n2 = second.shape[1]
    size = tuple(first.shape[-nd:])
    start = (0,) * nd if start is None else tuple(start)
    if symbolic(size):  # a recorded graph's sizes: zero padding (slice copies would compare them to the grid)
        pads = [p for a, k, g in zip(reversed(start), reversed(size), reversed(grid)) for p in (a, g - a - k)]
        if n2 < n:
            second = F.pad(second, [0, 0] * nd + [0, n - n2])
        return torch.complex(F.pad(first, pads), F.pad(second, pads))
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


def _member_spectra(z: Tensor) -> tuple[Tensor, Tensor]:
    """``X1 = (Z + conj Zm) / 2`` and ``i X2 = (Z - conj Zm) / 2`` of packed spectra ``(B, n, *grid)``."""
    zm = mirror(z, spatial_dims(z.dim() - 2)).conj()
    return 0.5 * (z + zm), 0.5 * (z - zm)


def _partners(w1: Tensor, w2: Tensor) -> Tensor:
    """``w2`` ``(n2, per, *grid)`` zero-filled to ``w1``'s ``n`` pairs (an odd channel count's last channel has no
    partner)."""
    missing = w1.shape[0] - w2.shape[0]
    return torch.cat([w2, w2.new_zeros(missing, *w2.shape[1:])]) if missing else w2


def mirror_product(z: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """``Y = W1 X1 + W2 (i X2)``: ``z`` ``(B, n, *grid)``, the first members' kernel spectra ``w1`` ``(n, per,
    *grid)``, the second members' ``w2`` ``(n2, per, *grid)`` (``n2 <= n``) -> ``(B, n, per, *grid)``."""
    if native_available(z):
        y = torch.empty(z.shape[0], *w1.shape, dtype=z.dtype, device=z.device)
        if native_mirror_product(z, w1, w2, y):
            return y
    x1, ix2 = _member_spectra(z)
    return w1 * x1.unsqueeze(2) + _partners(w1, w2) * ix2.unsqueeze(2)


def mirror_grad(z: Tensor | None, g: Tensor, w1: Tensor, w2: Tensor, need_input: bool, s1: Tensor | None = None,
                s2: Tensor | None = None) -> Tensor | None:
    """The adjoint of :func:`mirror_product` for the packed output gradient's transform ``g`` ``(B, n, per, *grid)``:
    returns ``gx = sum_o conj(W1) G1 + conj(W2) (i G2)`` ``(B, n, *grid)`` (if ``need_input``; ``G1``, ``i G2`` the
    members' parts of ``g``); given ``s1``, ``s2`` ``(n, per, *grid)`` (contiguous), fills them with the two
    members' kernel-gradient sums ``(U + V) / 2`` and ``(U - V) / 2``, ``U = sum_b Z conj(G)``, ``V = sum_b Z Gm``
    (``z`` the saved spectrum)."""
    batch, n, per = g.shape[:3]
    grid = g.shape[3:]
    gx = torch.empty(batch, n, *grid, dtype=g.dtype, device=g.device) if need_input else None
    if native_mirror_grad(z if s1 is not None else None, g, w1, w2, gx, s1, s2):
        return gx
    if need_input:
        g1, ig2 = _member_spectra(g.flatten(1, 2))
        shape = (batch, n, per, *grid)
        torch.sum(w1.conj() * g1.view(shape) + _partners(w1, w2).conj() * ig2.view(shape), dim=2, out=gx)
    if s1 is not None:
        gm = mirror(g, spatial_dims(len(grid)))
        u = torch.sum(z.unsqueeze(2) * g.conj(), dim=0)
        v = torch.sum(z.unsqueeze(2) * gm, dim=0)
        torch.mul(u + v, 0.5, out=s1)
        torch.mul(u - v, 0.5, out=s2)
    return gx
