"""Signals on the transform grid: kernel placement, mirrored bins, strided reads in the frequency domain.

The FFT path (seed 003) computes a correlation as a circular one on a grid of
``geometry.grid`` samples per dim (:class:`~largekernel.functional.planner.FFTGeometry`):
the unpadded input at offset 0, kernel tap ``t`` at ``(t * dilation - shift) mod n``.
Zero padding is never materialised (the right side is the FFT's own zero-fill, the left
side a shift of the kernel) and a dilated kernel is never zero-stuffed in memory beyond
its own (small) size.

Strides are decimation in the frequency domain: the spectrum is aliased to ``n / s``
before the (smaller) inverse transform, so discarded outputs are never computed; the
adjoint (for the input gradient) is the periodic repetition of the small spectrum.
Every function here is made of differentiable torch operations.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from largekernel.functional._native import hermitian as native_hermitian
from largekernel.functional._tracing import tracing, transformed
from largekernel.functional.planner import FFTGeometry

__all__ = ["spatial_dims", "place_kernel", "gather_kernel", "mirror", "conjugate", "select", "hermitian_part",
           "hermitian_extension", "irfft_keep", "rfft_placed", "place_output", "crop", "write"]


def spatial_dims(nd: int) -> tuple[int, ...]:
    return tuple(range(-nd, 0))


def _kernel_index(geometry: FFTGeometry, device) -> list[Tensor]:
    """Grid position of each (dilated, shifted) kernel tap, ``(t*d - shift) mod n``, one index tensor per
    spatial dim, shaped to broadcast over a ``(Cout, Cin/g, *kernel)`` tensor."""
    nd = len(geometry.grid)
    index = []
    for i, (k, d, lo, n) in enumerate(zip(geometry.kernel, geometry.dilation, geometry.shift, geometry.grid)):
        position = (torch.arange(k, device=device) * d - lo) % n
        index.append(position.reshape(k, *([1] * (nd - 1 - i))))
    return index


def _wraps(geometry: FFTGeometry) -> bool:
    """Whether some dilated kernel is longer than its circular buffer (taps then share positions)."""
    return any(d * (k - 1) + 1 > n for k, d, n in zip(geometry.kernel, geometry.dilation, geometry.grid))


def place_kernel(weight: Tensor, geometry: FFTGeometry) -> Tensor:
    """Kernel taps ``(..., *kernel)`` scattered into the circular grid ``(..., *grid)``; taps that share a
    position (a kernel longer than the grid) add up.

    Usually the buffer is the kernel rotated by its shift and zero-filled, written as a few slice copies
    (an index scatter costs several times more on the large dense kernels of continuous-kernel layers).
    """
    nd = len(geometry.grid)
    lead = weight.shape[:-nd]
    if _wraps(geometry):
        flat = weight.reshape(-1, *weight.shape[-nd:])
        buffer = flat.new_zeros(flat.shape[0], *geometry.grid)
        rows = torch.arange(flat.shape[0], device=weight.device).reshape(-1, *([1] * nd))
        buffer = buffer.index_put((rows, *_kernel_index(geometry, weight.device)), flat, accumulate=True)
        return buffer.view(*lead, *geometry.grid)
    for i, (k, d) in enumerate(zip(geometry.kernel, geometry.dilation)):
        if d > 1:  # zero-stuff this dim of the (small) kernel
            shape = list(weight.shape)
            shape[i - nd] = d * (k - 1) + 1
            stuffed = weight.new_zeros(shape)
            stuffed[(..., slice(None, None, d), *([slice(None)] * (nd - 1 - i)))] = weight
            weight = stuffed
    buffer = weight.new_zeros(*lead, *geometry.grid)
    # per dim, taps [lo, extent) go to the start and taps [0, lo) wrap to the end (or, with
    # lo > extent, all of them to [n - lo, n - lo + extent)): 2**nd slice copies
    pieces = []
    for extent, lo, n in zip(weight.shape[-nd:], geometry.shift, geometry.grid):
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


def gather_kernel(buffer: Tensor, geometry: FFTGeometry) -> Tensor:
    """Adjoint of :func:`place_kernel`: each tap's grid position read back, ``(..., *grid) -> (..., *kernel)``."""
    nd = len(geometry.grid)
    if _wraps(geometry):
        return buffer[(..., *_kernel_index(geometry, buffer.device))]
    for i, (k, d, lo, n) in enumerate(zip(geometry.kernel, geometry.dilation, geometry.shift, geometry.grid)):
        dim, extent = i - nd, d * (k - 1) + 1
        if lo <= extent:
            parts = [buffer.narrow(dim, n - lo, lo), buffer.narrow(dim, 0, extent - lo)]
            buffer = torch.cat([part for part in parts if part.shape[dim]], dim)
        else:
            buffer = buffer.narrow(dim, n - lo, extent)
        if d > 1:
            buffer = buffer[(..., slice(None, None, d), *([slice(None)] * (nd - 1 - i)))]
    return buffer.contiguous()


def mirror(spectrum: Tensor, dims) -> Tensor:
    """``Y[-k]`` (modulo the length) over ``dims``: the bin that Hermitian symmetry pairs with ``k``."""
    dims = tuple(dims)
    if not dims:
        return spectrum
    return torch.roll(torch.flip(spectrum, dims), (1,) * len(dims), dims)


def hermitian_part(spectrum: Tensor, nd: int, scale: float = 1.0, conj: bool = False) -> Tensor:
    """``scale * (Y[k] + conj(Y[-k])) / 2`` over the last ``nd`` dims (full grids): the spectrum of
    ``scale * Re(ifftn(Y))``, conjugated with ``conj``. Overwrites a contiguous ``spectrum`` (one native pass)."""
    if native_hermitian(spectrum, nd, scale, conj):
        return spectrum
    part = (0.5 * scale) * (spectrum + mirror(spectrum, spatial_dims(nd)).conj())
    return part.conj_physical_() if conj else part


def hermitian_extension(half: Tensor, grid: tuple[int, ...]) -> Tensor:
    """The full Hermitian spectrum ``(..., *grid)`` whose half (last dim ``n // 2 + 1``) is ``half``."""
    nd, n = len(grid), grid[-1]
    rest = torch.arange(n // 2 + 1, n, device=half.device)
    other = select(mirror(half, range(-nd, -1)).conj(), -1, n - rest)  # bins n//2+1 .. n-1
    return torch.cat([half, other], dim=-1)


def conjugate(z: Tensor) -> Tensor:
    """The complex conjugate of ``z`` as a tensor of its own, from operations that torch.func batches and
    differentiates forwards under ``vmap``: there the lazy ``conj()`` view fails an assertion in torch
    ("!this_view_meta->has_fw_view()") and ``conj_physical`` has no batching rule (a slow loop, and a warning).
    Where the result is read once (``torch.where``, a product) the view would have been resolved anyway."""
    return torch.complex(z.real, z.imag.neg())


def select(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """``t.index_select(dim, index)`` (a 1-D ``index``), whose backward (an ``index_add``) is the faster one in eager
    mode. Where ``torch.compile`` records torch.func's transforms, advanced indexing instead: there inductor
    compiles that backward wrongly once the gradient is batched by ``vmap`` (an ``index_add`` into zeros expanded
    over the batch, which gives every sample the sum of all samples' gradients: torch 2.13; 2.14.1 compiles it
    right)."""
    if tracing() and transformed():
        return t[(slice(None),) * (dim % t.dim()) + (index,)]
    return t.index_select(dim, index)


def _fold_last(spectrum: Tensor, n: int, s: int, nd: int) -> Tensor:
    """Half spectrum (last dim n//2+1) of a real signal of last-dim length n -> half spectrum of its
    every-s-th sample (m//2+1, m = n/s), up to the factor 1/s: ``Z[f] = sum_a Y[f + a*m]``."""
    m = n // s
    q = torch.arange(s, device=spectrum.device).unsqueeze(1) * m + torch.arange(m // 2 + 1, device=spectrum.device)
    mirrored = q > n // 2
    source = torch.where(mirrored, n - q, q).flatten()
    picked = select(spectrum, -1, source).unflatten(-1, (s, m // 2 + 1))  # (..., s, m//2+1)
    swapped = conjugate(mirror(picked.movedim(-2, 0), range(-nd, -1))).movedim(0, -2)
    return torch.where(mirrored, swapped, picked).sum(-2)  # (..., m//2+1)


def _tile_last(spectrum: Tensor, n: int, s: int, nd: int) -> Tensor:
    """Half spectrum (last dim m//2+1) of a real signal of last-dim length m -> half spectrum (n//2+1,
    n = s*m) of the signal zero-stuffed by s, the periodic repetition ``G[q] = Gm[q mod m]``."""
    m = n // s
    r = torch.arange(n // 2 + 1, device=spectrum.device) % m
    mirrored = r > m // 2
    picked = select(spectrum, -1, torch.where(mirrored, m - r, r))  # (..., n//2+1)
    return torch.where(mirrored, conjugate(mirror(picked, range(-nd, -1))), picked)


def irfft_keep(spectrum: Tensor, geometry: FFTGeometry, keep: tuple[int, ...] | None = None,
               stride: tuple[int, ...] | None = None, start: tuple[int, ...] | None = None) -> Tensor:
    """Samples ``start + j * stride`` (``j < keep``) of the real inverse transform of a half ``spectrum``
    on ``geometry.grid`` (defaults: the geometry's output).

    Where the stride divides the length, the spectrum is aliased first so that the
    inverse has length n/s and no discarded sample is computed.
    """
    grid, nd = geometry.grid, len(geometry.grid)
    keep = geometry.out if keep is None else keep
    stride = geometry.stride if stride is None else stride
    start = geometry.out_start if start is None else start
    scale, lengths, steps = 1, [], []
    for i, (n, s, a) in enumerate(zip(grid, stride, start)):
        decimate = s > 1 and n % s == 0 and a == 0
        if decimate and i < nd - 1:
            dim = i - nd
            spectrum = spectrum.unflatten(dim, (s, n // s)).sum(dim - 1)  # (..., n/s, ...)
        elif decimate:
            spectrum = _fold_last(spectrum, n, s, nd)  # (..., n/s//2+1)
        scale *= s if decimate else 1
        lengths.append(n // s if decimate else n)
        steps.append(1 if decimate else s)
    out = torch.fft.irfftn(spectrum, s=lengths, dim=spatial_dims(nd))  # (..., *lengths)
    out = out[(..., *(slice(a, a + (k - 1) * step + 1, step) for a, k, step in zip(start, keep, steps)))]
    return out / scale if scale > 1 else out


def rfft_placed(grad: Tensor, geometry: FFTGeometry) -> Tensor:
    """Half spectrum on ``geometry.grid`` of ``grad`` (the output gradient) put back where
    :func:`irfft_keep` read the output: the adjoint of that strided, offset read."""
    nd, grid = len(geometry.grid), geometry.grid
    if any(geometry.out_start):
        return torch.fft.rfftn(place_output(grad, geometry), dim=spatial_dims(nd))
    # Dims whose length the stride does not divide (circular mode only) are zero-stuffed explicitly.
    explicit = [s > 1 and n % s != 0 for n, s in zip(grid, geometry.stride)]
    if any(explicit):
        shape = list(grad.shape[:-nd]) + [(k - 1) * s + 1 if e else k
                                          for k, s, e in zip(geometry.out, geometry.stride, explicit)]
        stuffed = grad.new_zeros(shape)
        stuffed[(..., *(slice(None, None, s) if e else slice(None) for s, e in zip(geometry.stride, explicit)))] = grad
        grad = stuffed
    stride = [1 if e else s for s, e in zip(geometry.stride, explicit)]
    spectrum = torch.fft.rfftn(grad, s=[n // s for n, s in zip(grid, stride)], dim=spatial_dims(nd))
    if stride[-1] > 1:
        spectrum = _tile_last(spectrum, grid[-1], stride[-1], nd)
    repeats = [1] * (spectrum.dim() - nd) + [*stride[:-1], 1]
    if any(r > 1 for r in repeats):
        spectrum = spectrum.repeat(repeats)
    return spectrum  # (..., *grid[:-1], grid[-1]//2+1) complex


def place_output(values: Tensor, geometry: FFTGeometry) -> Tensor:
    """``values`` (stride 1) at ``geometry.out_start`` of a zero grid."""
    nd = len(geometry.grid)
    buffer = values.new_zeros(*values.shape[:-nd], *geometry.grid)
    buffer[(..., *(slice(a, a + k) for a, k in zip(geometry.out_start, geometry.out)))] = values
    return buffer


def crop(values: Tensor, size: tuple[int, ...], start: tuple[int, ...] | None = None) -> Tensor:
    """The region ``start:start + size`` of the last ``len(size)`` dims (a view)."""
    start = (0,) * len(size) if start is None else start
    return values[(..., *(slice(a, a + n) for a, n in zip(start, size)))]


def write(dst: Tensor, src: Tensor, bias: Tensor | None = None) -> None:
    """``dst[...] = src + bias`` (per channel, dim 1) in one pass; ``dst`` may be a strided view (a channel block
    of a larger output). Under ``torch.compile``, which cannot trace a strided ``out=``, as a copy and an add."""
    with torch.no_grad():  # called inside autograd Functions; tracing (torch.export) may run them with grad on
        if bias is None:
            dst.copy_(src)
        elif torch.compiler.is_compiling():
            dst.copy_(src).add_(bias.view(-1, *([1] * (src.dim() - 2))))
        else:
            torch.add(src, bias.view(-1, *([1] * (src.dim() - 2))), out=dst)
