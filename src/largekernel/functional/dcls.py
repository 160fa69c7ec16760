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
  work): ``4^M`` taps per element, same scatter-add.
- ``gaussian`` (reference ``version="gauss"``, ``sigma = |SIG| + 0.27``) and
  ``triangle`` (a tent of learnable half-width ``|SIG| + 1``, reference
  ``version="max"``): the profile covers the whole box, but it is separable,
  so each element needs only its M 1-D profiles (O(count * sum(box))) and the
  dense kernel is one batched matrix product, O(count * S) multiply-adds run
  as a GEMM. Temporaries are O(count * S / box[0]): nothing for M <= 2 beyond
  the 1-D profiles, one (count, box[1] * box[2]) outer product for M = 3.
  Gaussian tails below ``tiny ** (1 / (M + 1))`` of the dtype (about 1e-13 in
  float32 2-D) are flushed to zero so that the GEMM never meets subnormal floats.
  The backward is written out (custom autograd function): about 5x faster on CPU
  than autograd through the profile formulas, and it saves only the profiles.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from largekernel.functional._args import autocast_off

__all__ = ["construct_kernel", "INTERPOLATIONS", "SIGMA_OFFSET", "WIDTH_INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "gaussian", "triangle", "bicubic")
WIDTH_INTERPOLATIONS = ("gaussian", "triangle")
# The width actually used is |SIG| + offset: it never collapses below the offset,
# and SIG's sign carries no meaning (as in the reference package).
SIGMA_OFFSET = {"gaussian": 0.27, "triangle": 1.0}
_EPS = 1e-7  # the reference's normaliser guard; kept for bit-level agreement


def _bilinear_taps(frac: Tensor) -> Tensor:
    return torch.stack((1 - frac, frac), dim=-1)  # (..., 2) at floor, floor+1


def _bicubic_taps(frac: Tensor, a: float = -0.5) -> Tensor:
    """Keys cubic convolution weights at floor-1 .. floor+2 for fractional offset ``frac``."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack((far(1 + frac), near(frac), near(1 - frac), far(2 - frac)), dim=-1)  # (..., 4)


_TAPS = {"bilinear": (_bilinear_taps, 0), "bicubic": (_bicubic_taps, -1)}  # (weights, first tap offset)


def _scatter_kernel(weight: Tensor, P: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """Compact-support profiles: scatter-add each element's taps into the dense kernel."""
    taps_fn, first = _TAPS[interpolation]
    lead, count, m = weight.shape[:-1], weight.shape[-1], len(box)
    pairs = math.prod(lead)
    values = weight.reshape(pairs, count, 1)  # (B, count, 1)
    index = torch.arange(pairs, device=weight.device).view(pairs, 1, 1).expand(pairs, count, 1)
    norm = None
    for dim, size in enumerate(box):
        pos = P[m - 1 - dim].reshape(pairs, count) + size // 2  # (B, count) in box coordinates
        base = pos.detach().floor()
        taps = taps_fn(pos - base)  # (B, count, T)
        cells = base.long().unsqueeze(-1) + torch.arange(first, first + taps.shape[-1], device=weight.device)
        inside = (cells >= 0) & (cells < size)
        taps = taps * inside
        if interpolation == "bilinear":
            norm = taps.sum(-1) if norm is None else norm * taps.sum(-1)  # (B, count)
        values = (values.unsqueeze(-1) * taps.unsqueeze(-2)).flatten(-2)  # (B, count, T^(dim+1))
        index = (index.unsqueeze(-1) * size + cells.clamp(0, size - 1).unsqueeze(-2)).flatten(-2)
    if norm is not None:
        values = values / (norm + _EPS).unsqueeze(-1)
    flat = values.new_zeros(pairs * math.prod(box))
    # Overlapping taps (two elements in one cell) must add: index_add accumulates.
    flat = flat.index_add(0, index.reshape(-1), values.reshape(-1))
    return flat.view(*lead, *box)


def _outer(profiles: list[Tensor]) -> Tensor:
    """Outer product over the last dims of (B, count, size_i) profiles: (B, count, prod(size_i))."""
    rest = profiles[0]
    for prof in profiles[1:]:
        rest = (rest.unsqueeze(-1) * prof.unsqueeze(-2)).flatten(-2)  # (B, count, prod so far)
    return rest


def _reference_separable(weight: Tensor, P: Tensor, SIG: Tensor, box: tuple[int, ...], interpolation: str) -> Tensor:
    """What :class:`_SeparableKernel` computes, from differentiable torch operations (its double backward)."""
    m, (pairs, count) = len(box), weight.shape
    width = SIG.abs() + SIGMA_OFFSET[interpolation]
    floor = math.log(torch.finfo(weight.dtype).tiny) / (m + 1)
    profiles = []
    for dim, size in enumerate(box):
        pos = P[m - 1 - dim].unsqueeze(-1) + size // 2
        offset = torch.arange(size, device=weight.device, dtype=weight.dtype) - pos
        if interpolation == "gaussian":
            expo = -0.5 * (offset / width[m - 1 - dim].unsqueeze(-1)).square()
            profiles.append(torch.where(expo > floor, expo.clamp(min=floor).exp(), 0.0))
        else:
            profiles.append((width[m - 1 - dim].unsqueeze(-1) - offset.abs()).relu())
    norm = math.prod(prof.sum(-1) for prof in profiles) + _EPS
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
        # Gaussian tails below exp(floor) are flushed to zero: products of M of them would be
        # subnormal floats, which make CPU arithmetic ~100x slower, for no visible change.
        floor = math.log(torch.finfo(weight.dtype).tiny) / (m + 1)
        profiles, offsets, sums = [], [], []
        for dim, size in enumerate(box):
            pos = P[m - 1 - dim].unsqueeze(-1) + size // 2  # (B, count, 1) in box coordinates
            sig = width[m - 1 - dim].unsqueeze(-1)
            offset = torch.arange(size, device=weight.device, dtype=weight.dtype) - pos  # (B, count, size)
            if interpolation == "gaussian":
                offset = offset / sig  # z: the Gaussian's argument
                expo = offset.square().mul_(-0.5)
                keep = expo > floor
                prof = expo.clamp_(min=floor).exp_().mul_(keep)
            else:
                prof = (sig - offset.abs()).relu_()
            profiles.append(prof)
            offsets.append(offset)
            sums.append(prof.sum(-1))  # (B, count)
        norm = math.prod(sums) + _EPS
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
        if torch.is_grad_enabled():  # create_graph=True: a differentiable function of grad and the inputs
            inputs = (weight, P, SIG)
            wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need]
            with torch.enable_grad():
                kernel = _reference_separable(weight, P, SIG, box, ctx.interpolation)
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
    with autocast_off(weight.device.type):
        kernel = _SeparableKernel.apply(weight.reshape(pairs, count), P.reshape(m, pairs, count),
                                        SIG.reshape(m, pairs, count), box, interpolation)
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
    if interpolation in WIDTH_INTERPOLATIONS:
        return _separable_kernel(weight, P, SIG, box, interpolation)
    return _scatter_kernel(weight, P, box, interpolation)
