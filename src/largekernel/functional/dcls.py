"""DCLS kernel construction: place ``count`` weights at real-valued positions in a dense box.

Dilated Convolution with Learnable Spacings (Khalfaoui-Hassani, Pellegrini and
Masquelier, ICLR 2023, arXiv:2112.03740; seeds 001 and 004) and its Gaussian
version ("Dilated convolution with learnable spacings: beyond bilinear
interpolation", Khalfaoui-Hassani et al. 2023). Each kernel element ``k`` of each
(out, in) pair has a weight ``w_k``, a position ``p_k`` (one coordinate per
learned dimension) and, for the wide interpolations, a width ``sigma_k``; the
dense kernel is the sum over elements of ``w_k`` times an interpolation profile
centred at ``p_k`` and normalised over the box. Overlapping elements add.

Conventions (those of the official ``dcls`` package, so that its checkpoints
load unchanged):

- ``P`` has shape ``(M, *lead, count)``; ``P[i]`` is the coordinate along box
  dimension ``M - 1 - i`` (x first: ``P[0]`` moves along the last, fastest
  kernel dimension), measured from the box centre ``size // 2``.
- Profiles are products of 1-D profiles, normalised by their sum over the box
  plus ``1e-7`` (so an element half outside the box keeps its total mass, and
  one entirely outside vanishes), except ``bicubic``, which has no positive
  normaliser and simply drops the taps outside the box.

Interpolations and their cost per (out, in) pair, with ``S = prod(box)``:

- ``bilinear`` (reference ``version="v1"``): ``2^M`` taps per element, written
  by one scatter-add: O(count * 2^M) time and temporaries, plus the dense kernel.
- ``bicubic`` (Keys, a = -0.5; the alternative the DCLS paper names as future
  work): ``4^M`` taps per element, same scatter-add. Both lay the taps out
  ``(T, ..., T, elements)``, so each pass runs along the elements; under
  ``torch.compile`` both run as two opaque operators (the scatter and its
  closed-form backward) instead of ~150 traced operations per layer.
- ``gaussian`` (reference ``version="gauss"``, ``sigma = |SIG| + 0.27``) and
  ``triangle`` (a tent of learnable half-width ``|SIG| + 1``, reference
  ``version="max"``): the profile covers the whole box, but it is separable,
  so each element needs only its M 1-D profiles (O(count * sum(box))) and the
  dense kernel is one batched matrix product, O(count * S) multiply-adds run
  as a GEMM. Temporaries are O(count * S / box[0]): nothing for M <= 2 beyond
  the 1-D profiles, one (count, box[1] * box[2]) outer product for M = 3.
  Each Gaussian profile is built relative to its own peak (the peaks' product
  moves into the normaliser's guard, so the kernel is the reference's), and taps
  below ``tiny ** (1 / (M + 2))`` of the peak (about 3e-8 in float32 3-D) are
  flushed to zero, so that the GEMM never meets subnormal floats, even for an
  element far outside the box along one dimension (before 2026-12-08 the
  tails were flushed below an absolute level: such an element vanished where
  the reference keeps up to ~0.3 % of its weight in 3-D).
  The backward is written out (custom autograd function): about 5x faster on CPU
  than autograd through the profile formulas, and it saves only the profiles.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from largekernel.functional._args import autocast_off, own_nodes
from largekernel.functional._tracing import OPAQUE, batched, compiling, define_op, library_op, transformed

__all__ = ["construct_kernel", "INTERPOLATIONS", "SIGMA_OFFSET", "WIDTH_INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "gaussian", "triangle", "bicubic")
WIDTH_INTERPOLATIONS = ("gaussian", "triangle")
# The width actually used is |SIG| + offset: it never collapses below the offset,
# and SIG's sign carries no meaning (as in the reference package).
SIGMA_OFFSET = {"gaussian": 0.27, "triangle": 1.0}
_EPS = 1e-7  # the reference's normaliser guard; kept for bit-level agreement


def _bilinear_taps(frac: Tensor) -> Tensor:
    return torch.stack((1 - frac, frac))  # (2, ...) at floor, floor+1


def _bicubic_taps(frac: Tensor, a: float = -0.5) -> Tensor:
    """Keys cubic convolution weights at floor-1 .. floor+2 for fractional offset ``frac``."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack((far(1 + frac), near(frac), near(1 - frac), far(2 - frac)))  # (4, ...)


def _bilinear_slopes(frac: Tensor) -> Tensor:
    return torch.stack((-torch.ones_like(frac), torch.ones_like(frac)))  # d taps / d frac


def _bicubic_slopes(frac: Tensor, a: float = -0.5) -> Tensor:
    def near(x):  # d/dx of _bicubic_taps' near
        return (3 * (a + 2) * x - 2 * (a + 3)) * x

    def far(x):
        return (3 * a * x - 10 * a) * x + 8 * a

    return torch.stack((far(1 + frac), near(frac), -near(1 - frac), -far(2 - frac)))


# interpolation: (tap weights, their derivative in the fractional offset, first tap's offset from the floor)
_TAPS = {"bilinear": (_bilinear_taps, _bilinear_slopes, 0), "bicubic": (_bicubic_taps, _bicubic_slopes, -1)}


def _outer(profiles: list[Tensor]) -> Tensor:
    """Outer product over the last dims of (B, count, size_i) profiles: (B, count, prod(size_i))."""
    rest = profiles[0]
    for prof in profiles[1:]:
        rest = (rest.unsqueeze(-1) * prof.unsqueeze(-2)).flatten(-2)  # (B, count, prod so far)
    return rest


def _gaussian_floor(dtype: torch.dtype, m: int) -> float:
    """The log of the smallest Gaussian tap kept, relative to its profile's peak, in ``m`` box dimensions: a
    product of ``m`` kept taps and the normaliser's factor (:func:`_gaussian_guard`) stays a normal float."""
    return math.log(torch.finfo(dtype).tiny) / (m + 2)


def _gaussian_peak(pos: Tensor, sig: Tensor, size: int) -> Tensor:
    """The largest exponent ``-(i - pos)^2 / (2 sig^2)`` of a Gaussian profile over the cells ``i`` of a box
    dimension (at the cell nearest ``pos``), ``(B, count, 1)``; finite for an infinite position (whose profile is
    zero)."""
    nearest = pos.round().clamp(0, size - 1)
    return ((nearest - pos) / sig).square().mul(-0.5).clamp(min=torch.finfo(pos.dtype).min)


def _gaussian_guard(log_peaks: Tensor, floor: float) -> Tensor:
    """The normaliser's guard for Gaussian profiles scaled to peak 1: the reference normalises
    ``prod(profiles) / (prod(sums) + eps)``; divided through by the peaks' product ``exp(log_peaks)`` that is
    ``prod(scaled) / (prod(scaled sums) + eps / exp(log_peaks))``. Where that guard exceeds ``exp(-floor)`` the
    element weighs less than ``exp(floor)`` of its weight (an element far outside the box): infinite, so that
    it contributes exactly zero (and gets a zero gradient) where the guard would overflow."""
    log_guard = math.log(_EPS) - log_peaks
    return torch.where(log_guard > -floor, math.inf, log_guard.clamp(max=-floor).exp())


def _scatter_taps(P: Tensor, box: tuple[int, ...], interpolation: str, slopes: bool = False):
    """Per box dimension, for the ``N`` elements of ``P`` ``(M, *lead, count)``: the taps ``(T, N)`` (zero outside
    the box; differentiable in ``P``), their derivative in the position (with ``slopes``, else None) and the cells
    they fall on (clamped into the box). Taps first, elements last: every pass runs along the elements."""
    taps_fn, slopes_fn, first = _TAPS[interpolation]
    m = len(box)
    for dim, size in enumerate(box):
        pos = P[m - 1 - dim].reshape(-1) + size // 2  # (N) in box coordinates
        base = pos.detach().floor()
        if interpolation == "bilinear":
            # On a whole cell the profile has a kink; the slope is the one from above (as torch's grid_sample),
            # except on the box's last cell, where that slope is zero (the normalised profile stays on the cell
            # beyond it): there it is the one from below, so an element clamped to either edge can move back in.
            base = torch.where(pos.detach() == size - 1, base - 1, base)
        frac = pos - base
        taps = taps_fn(frac)  # (T, N)
        cells = base.long() + torch.arange(first, first + taps.shape[0], device=P.device).unsqueeze(-1)
        inside = (cells >= 0) & (cells < size)
        yield taps * inside, slopes_fn(frac.detach()) * inside if slopes else None, cells.clamp(0, size - 1)


def _flat_index(cells: list[Tensor], box: tuple[int, ...], count: int) -> Tensor:
    """Index of every tap combination in the flat ``(pairs * prod(box))`` kernel: ``(T, ..., T, N)``, one tap axis
    per box dimension (the first slowest), ``N = pairs * count`` elements."""
    n = cells[0].shape[-1]
    index = torch.arange(n, device=cells[0].device) // count  # the element's (out, in) pair
    for cell, size in zip(cells, box):
        index = index.unsqueeze(-2) * size + cell  # (..., T, N)
    return index


def _tap_products(taps: list[Tensor]) -> Tensor:
    """``(T, ..., T, N)``: the product of one tap per box dimension, for every combination."""
    out = taps[0]
    for tap in taps[1:]:
        out = out.unsqueeze(-2) * tap
    return out


def _scatter_parts(weight: Tensor, P: Tensor, box: tuple[int, ...], interpolation: str, slopes: bool = False):
    """Compact-support profiles: scatter-add each element's taps into the dense kernel (differentiable torch
    operations). Returns the kernel and what :func:`_scatter_backward` reuses: per box dimension the taps and
    (with ``slopes``) their slopes, ``(T, N)``, and the flat index of every tap combination ``(T, ..., T, N)``."""
    lead, count = weight.shape[:-1], weight.shape[-1]
    taps, slope, cells = zip(*_scatter_taps(P, box, interpolation, slopes))
    index = _flat_index(list(cells), box, count)
    values = _tap_products(list(taps)) * weight.reshape(-1)  # (T, ..., T, N)
    if interpolation == "bilinear":
        values = values / (math.prod([t.sum(0) for t in taps]) + _EPS)
    flat = values.new_zeros(math.prod(lead) * math.prod(box))
    # Overlapping taps (two elements in one cell) must add: index_add accumulates.
    flat = flat.index_add(0, index.reshape(-1), values.reshape(-1))
    return flat.view(*lead, *box), list(taps), list(slope), index


def _scatter_kernel(weight: Tensor, P: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """The dense kernel of :func:`_scatter_parts` (:func:`_scatter_backward` is its gradient in closed form, for
    torch.compile)."""
    return _scatter_parts(weight, P, box, interpolation)[0]


def _scatter_backward(grad: Tensor, weight: Tensor, P: Tensor, taps: list[Tensor], slopes: list[Tensor],
                      index: Tensor, interpolation: str) -> tuple[Tensor, Tensor]:
    """The gradients of :func:`_scatter_kernel` in ``weight`` and ``P`` for the kernel's gradient ``grad``, in
    closed form, from the forward's taps, slopes and index (:func:`_scatter_parts` with ``slopes``): a gather of
    ``grad`` at the taps, and per dimension its contraction with the other dimensions' taps (times the taps'
    slopes for ``P``; the bilinear normaliser adds its own term)."""
    m = len(taps)
    g = grad.reshape(-1)[index]  # (T, ..., T, N): the gradient at every tap

    def along(dim: int) -> Tensor:  # (T, N): g times the other dimensions' taps, summed over them
        out = g
        for other in range(m):
            if other != dim:
                out = out * taps[other].view(*[1] * other, -1, *[1] * (m - 1 - other), g.shape[-1])
        axes = [j for j in range(m) if j != dim]
        return out.sum(axes) if axes else out

    alongs = [along(dim) for dim in range(m)]
    spread = (alongs[0] * taps[0]).sum(0)  # (N): g times the tap products, summed
    w = weight.reshape(-1)
    if interpolation == "bilinear":
        sums = [tap.sum(0) for tap in taps]
        norm = math.prod(sums) + _EPS
    else:
        sums, norm = None, 1.0
    scale = w / norm
    through_norm = scale * spread / norm  # (N): minus d loss / d norm, norm = prod(sums) + eps
    grad_P = P.new_empty(m, w.shape[0])
    for dim in range(m):
        d_taps = scale * alongs[dim]  # (T, N)
        if sums is not None:
            d_taps = d_taps - through_norm * math.prod([sums[j] for j in range(m) if j != dim])
        grad_P[m - 1 - dim] = (d_taps * slopes[dim]).sum(0)
    return (spread / norm).view(weight.shape), grad_P.view(P.shape)


def _reference_separable(weight: Tensor, P: Tensor, SIG: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """What :class:`_SeparableKernel` computes, from differentiable torch operations (its double backward)."""
    m, (pairs, count) = len(box), weight.shape
    width = SIG.abs() + SIGMA_OFFSET[interpolation]
    floor = _gaussian_floor(weight.dtype, m)
    profiles, log_peaks = [], 0.0
    for dim, size in enumerate(box):
        pos = P[m - 1 - dim].unsqueeze(-1) + size // 2
        offset = torch.arange(size, device=weight.device, dtype=weight.dtype) - pos
        if interpolation == "gaussian":
            sig = width[m - 1 - dim].unsqueeze(-1)
            expo = -0.5 * (offset / sig).square()
            peak = _gaussian_peak(pos.detach(), sig.detach(), size)  # a constant: the kernel does not depend on it
            expo = expo - peak
            log_peaks = log_peaks + peak.squeeze(-1)
            profiles.append(torch.where(expo > floor, expo.clamp(min=floor).exp(), 0.0))
        else:
            profiles.append((width[m - 1 - dim].unsqueeze(-1) - offset.abs()).relu())
    norm = profiles[0].sum(-1)
    for prof in profiles[1:]:  # (a loop: Dynamo traces no math.prod of tensors)
        norm = norm * prof.sum(-1)
    norm = norm + (_gaussian_guard(log_peaks, floor) if interpolation == "gaussian" else _EPS)
    rest = _outer(profiles[1:]) if m > 1 else weight.new_ones(pairs, count, 1)
    return torch.bmm(((weight / norm).unsqueeze(-1) * profiles[0]).transpose(1, 2), rest)


class _SeparableKernel(torch.autograd.Function):
    """Whole-box separable profiles combined by one batched matmul, with an analytic backward.

    Autograd through the element-wise profile formulas saved every intermediate
    and ran about twice as many passes over the (B, count, size) profiles; the
    closed-form backward below is ~5x faster on CPU (profiled) and keeps only the
    profiles and their normalised offsets. With ``create_graph=True`` the backward
    differentiates :func:`_reference_separable` instead, so every order of derivative works.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, P: Tensor, SIG: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
        # weight (B, count); P, SIG (M, B, count), P[i] along box dim M-1-i
        m, (pairs, count) = len(box), weight.shape
        width = SIG.abs() + SIGMA_OFFSET[interpolation]
        # Gaussian profiles relative to their peaks (the peaks' product moves into the normaliser's guard), their
        # tails below exp(floor) of the peak flushed to zero: products of M of them would be subnormal floats,
        # which make CPU arithmetic ~100x slower, for no visible change. The backward's formulas hold for the
        # scaled profiles as they do for the reference's (the kernel does not depend on the peaks: constants).
        floor = _gaussian_floor(weight.dtype, m)
        profiles, offsets, sums, log_peaks = [], [], [], 0.0
        for dim, size in enumerate(box):
            pos = P[m - 1 - dim].unsqueeze(-1) + size // 2  # (B, count, 1) in box coordinates
            sig = width[m - 1 - dim].unsqueeze(-1)
            offset = torch.arange(size, device=weight.device, dtype=weight.dtype) - pos  # (B, count, size)
            if interpolation == "gaussian":
                offset = offset / sig  # z: the Gaussian's argument
                peak = _gaussian_peak(pos, sig, size)
                expo = torch.addcmul(peak.neg(), offset, offset, value=-0.5)  # -z^2 / 2 - peak
                log_peaks = log_peaks + peak.squeeze(-1)
                keep = expo > floor
                prof = expo.clamp_(min=floor).exp_().mul_(keep)
            else:
                prof = (sig - offset.abs()).relu_()
            profiles.append(prof)
            offsets.append(offset)
            sums.append(prof.sum(-1))  # (B, count)
        norm = math.prod(sums) + (_gaussian_guard(log_peaks, floor) if interpolation == "gaussian" else _EPS)
        scale = weight / norm  # (B, count)
        rest = _outer(profiles[1:]) if m > 1 else weight.new_ones(pairs, count, 1)
        kernel = torch.bmm((scale.unsqueeze(-1) * profiles[0]).transpose(1, 2), rest)  # (B, box[0], prod(box[1:]))
        ctx.box, ctx.interpolation = box, interpolation
        ctx.save_for_backward(weight, P, SIG, width, norm, scale, *sums, *profiles, *offsets)
        return kernel

    @staticmethod
    def backward(ctx, grad: Tensor):
        box, m = ctx.box, len(ctx.box)
        weight, P, SIG, width, norm, scale, *saved = ctx.saved_tensors
        # create_graph=True, or batched gradients (the rows written below are not batched): a differentiable
        # function of grad and the inputs
        if torch.is_grad_enabled() or batched(grad):
            with torch.enable_grad():
                inputs = own_nodes(weight, P, SIG)
                wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need]
                kernel = _reference_separable(*inputs, box, ctx.interpolation)
                grads = iter(torch.autograd.grad(kernel, wanted, grad, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None)
        sums, profiles, offsets = saved[:m], saved[m:2 * m], saved[2 * m:]
        pairs, count = weight.shape
        # kernel = first^T @ rest with first = scale * profiles[0], rest = outer(profiles[1:])
        rest = _outer(profiles[1:]) if m > 1 else weight.new_ones(pairs, count, 1)
        d_first = torch.bmm(rest, grad.transpose(1, 2))  # (B, count, box[0])
        d_profiles = [d_first * scale.unsqueeze(-1)]
        d_scale = (d_first * profiles[0]).sum(-1)  # (B, count)
        if m > 1:
            d_rest = torch.bmm(scale.unsqueeze(-1) * profiles[0], grad).view(pairs, count, *box[1:])
            for dim in range(1, m):
                prod = d_rest
                for other in range(1, m):
                    if other != dim:
                        shape = [box[other] if j == other else 1 for j in range(1, m)]
                        prod = prod * profiles[other].view(pairs, count, *shape)
                axes = [1 + j for j in range(1, m) if j != dim]
                d_profiles.append(prod.sum(axes) if axes else prod)  # (B, count, box[dim])
        # scale = weight / norm, norm = prod(sums) + eps, sums[dim] = profiles[dim].sum(-1)
        d_weight = d_scale / norm
        d_norm = -d_scale * scale / norm
        grad_P, grad_width = torch.empty_like(width), torch.empty_like(width)
        for dim in range(m):
            row = m - 1 - dim
            # (of a list: torch.compile cannot pass a generator to math.prod)
            others = math.prod([sums[i] for i in range(m) if i != dim]) if m > 1 else 1.0
            d_prof = d_profiles[dim] + (d_norm * others).unsqueeze(-1)  # (B, count, box[dim])
            prof, offset = profiles[dim], offsets[dim]
            if ctx.interpolation == "gaussian":
                # d prof / d pos = prof z / sig, d prof / d sig = prof z^2 / sig
                t = d_prof * prof * offset
                grad_P[row] = t.sum(-1) / width[row]
                grad_width[row] = (t * offset).sum(-1) / width[row]
            else:
                # d prof / d pos = sign(i - pos), d prof / d sig = 1, where the tent is positive
                active = d_prof * (prof > 0)
                grad_P[row] = (active * offset.sign()).sum(-1)
                grad_width[row] = active.sum(-1)
        return d_weight, grad_P, grad_width * SIG.sign(), None, None


def _separable_kernel(weight: Tensor, P: Tensor, SIG: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """Whole-box profiles: per-dimension 1-D profiles combined by one batched matmul."""
    lead, count, m = weight.shape[:-1], weight.shape[-1], len(box)
    pairs = math.prod(lead)
    # In the parameters' precision, as the scatter path is: under autocast the forward's matmul would return a
    # half-precision kernel whose gradient the float32 backward cannot take; the convolution casts the kernel.
    # (torch.func's transforms and forward-mode AD: the reference's operations, which torch batches and
    # differentiates forwards; the Function defines neither.)
    construct = _reference_separable if transformed(weight, P, SIG) else _SeparableKernel.apply
    with autocast_off(weight.device.type):
        kernel = construct(weight.reshape(pairs, count), P.reshape(m, pairs, count), SIG.reshape(m, pairs, count),
                           box, interpolation)
    return kernel.view(*lead, *box)


def _check(weight: Tensor, P: Tensor, SIG: Tensor | None, box: tuple[int, ...], interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if any(not isinstance(s, int) or s < 1 for s in box):
        raise ValueError(f"dilated_kernel_size must contain ints >= 1, got {box!r}")
    if weight.dim() < 2:
        raise ValueError(f"weight must have shape (*lead, count) with at least one lead dim, got {tuple(weight.shape)}")
    expected = (len(box), *weight.shape)
    if tuple(P.shape) != expected:
        raise ValueError(f"P must have shape {expected} (len(dilated_kernel_size), *weight.shape), "
                         f"got {tuple(P.shape)}")
    if interpolation in WIDTH_INTERPOLATIONS:
        if SIG is None:
            raise ValueError(f"interpolation={interpolation!r} needs SIG of shape {expected}, got None")
        if tuple(SIG.shape) != expected:
            raise ValueError(f"SIG must have the shape of P, {expected}, got {tuple(SIG.shape)}")


def construct_kernel(
    weight: Tensor,
    P: Tensor,
    SIG: Tensor | None = None,
    *,
    dilated_kernel_size: Sequence[int],
    interpolation: str = "bilinear",
) -> Tensor:
    """The dense DCLS kernel: weights placed at positions ``P`` in a ``dilated_kernel_size`` box.

    Args:
        weight: ``(*lead, count)`` element weights (``lead`` is ``(out, in/groups)``
            for a convolution kernel, plus the dense dimensions of N-MD layers).
        P: ``(M, *lead, count)`` positions, ``P[i]`` along box dimension ``M-1-i``,
            relative to the box centre ``size // 2``.
        SIG: like ``P``; widths for ``gaussian`` (``|SIG| + 0.27``) and
            ``triangle`` (``|SIG| + 1``); ignored otherwise.
        dilated_kernel_size: the box, ``M`` ints.
        interpolation: one of ``bilinear``, ``gaussian``, ``triangle``, ``bicubic``.

    Returns:
        ``(*lead, *dilated_kernel_size)``, differentiable in ``weight``, ``P`` and ``SIG``.

    Example:
        >>> w, p = torch.ones(1, 1, 1), torch.tensor([0.5, -1.0]).view(2, 1, 1, 1)
        >>> construct_kernel(w, p, dilated_kernel_size=(3, 3))[0, 0]  # x = +0.5, y = -1 from the centre
        tensor([[0.0000, 0.5000, 0.5000],
                [0.0000, 0.0000, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    box = tuple(dilated_kernel_size)
    _check(weight, P, SIG, box, interpolation)
    if weight.dtype in (torch.float16, torch.bfloat16):
        # Built in float32, returned in the parameters' precision: in half precision ``P + size // 2`` loses the
        # position's fraction near the box's far edge (an element moved out of the box, or its normalised taps
        # jumped), float16's smallest normal number flushed Gaussian tails below 4 % of the peak, and the
        # normaliser's guard (1e-7) underflowed, so a profile outside the box gave 0 / 0.
        parts = (weight.float(), P.float(), None if SIG is None else SIG.float())
        return construct_kernel(*parts, dilated_kernel_size=box, interpolation=interpolation).to(weight.dtype)
    if interpolation in WIDTH_INTERPOLATIONS:
        return _separable_kernel(weight, P, SIG, box, interpolation)
    return _scatter_entry(weight, P, box, interpolation)


def _scatter_entry(weight: Tensor, P: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """``torch.compile``: one opaque operator each way (below). Otherwise (eager, ``torch.export``, ONNX,
    ``torch.jit.trace``) :func:`_scatter_kernel`'s torch operations, differentiated by autograd."""
    if compiling():
        return _FORWARD_OP(weight, P, list(box), interpolation)[0]
    return _scatter_kernel(weight, P, box, interpolation)


# ----------------------------------------------------------------------------- torch.compile: opaque operators
# Inductor's compile time grows with the graph's size (its Python passes, then one C++ build per kernel): the
# scatter construction, traced, added about 150 operations per layer, 16 s of the 62 s a converted ConvNeXt-atto
# took to compile (docs/deploy.md). As two operators it costs the graph one call each way and runs the eager code.
# The forward also returns the taps, their slopes and the flat index, which the closed-form backward would
# otherwise compute again (about half its time).


def _scatter_op(weight: Tensor, P: Tensor, box: list[int], interpolation: str) -> list[Tensor]:
    """The kernel, then what its backward reuses instead of computing again: the flat index, and per box dimension
    the taps and their slopes."""
    kernel, taps, slopes, index = _scatter_parts(weight, P, tuple(box), interpolation, True)
    return [kernel, index, *taps, *slopes]


def _scatter_op_backward(grad: Tensor, weight: Tensor, P: Tensor, index: Tensor, taps: list[Tensor],
                         slopes: list[Tensor], interpolation: str) -> list[Tensor]:
    return list(_scatter_backward(grad, weight, P, taps, slopes, index, interpolation))


def _scatter_setup(ctx, inputs, output) -> None:
    weight, P, _, ctx.interpolation = inputs
    ctx.save_for_backward(weight, P, *output[1:])


def _scatter_autograd(ctx, grads: list[Tensor]):
    weight, P, index, *parts = ctx.saved_tensors
    m = len(parts) // 2
    d_weight, d_P = _BACKWARD_OP(grads[0], weight, P, index, parts[:m], parts[m:], ctx.interpolation)
    return d_weight, d_P, None, None


if OPAQUE:
    _forward_op = define_op("dcls_scatter_kernel", _scatter_op)
    _forward_op.register_fake(_scatter_op)  # the same code on fake tensors gives every output's shape
    _forward_op.register_autograd(_scatter_autograd, setup_context=_scatter_setup)
    _backward_op = define_op("dcls_scatter_kernel_backward", _scatter_op_backward)
    _backward_op.register_fake(lambda grad, weight, P, index, taps, slopes, interpolation: [
        torch.empty_like(weight), torch.empty_like(P)])
    _FORWARD_OP, _BACKWARD_OP = library_op("dcls_scatter_kernel"), library_op("dcls_scatter_kernel_backward")
