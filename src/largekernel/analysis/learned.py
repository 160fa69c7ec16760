"""What learnable-extent layers learned: DCLS positions and FlexConv mask sizes.

DCLS (Khalfaoui-Hassani et al., "Dilated Convolution with Learnable Spacings",
ICLR 2023): each kernel element has a real-valued position ``P`` inside the
``dilated_kernel_size`` box; the histogram of positions per stage shows how far
from the centre the network chose to look, and how that changes during training.
FlexConv (Romero et al., "FlexConv: Continuous Kernel Convolutions with
Differentiable Kernel Sizes", ICLR 2022): a learned Gaussian mask crops each
layer's continuous kernel; its extent is the kernel size the layer asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from largekernel.analysis.kernels import _stage_of

__all__ = ["dcls_positions", "position_histograms", "position_evolution", "flexconv_mask_extents"]


def _is_dcls(module: nn.Module) -> bool:
    return isinstance(getattr(module, "P", None), Tensor) and hasattr(module, "dilated_kernel_size")


def dcls_positions(model: nn.Module) -> dict[str, Tensor]:
    """Learned positions of every DCLS layer: ``{name: (ndim, N)}``.

    Positions are in taps relative to the centre of the ``dilated_kernel_size``
    box (the official ``dcls`` convention: tap ``P + dilated_kernel_size // 2``);
    ``N = out * in/groups * kernel_count``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: module.P.detach().reshape(module.P.shape[0], -1).clone()  # (ndim, N)
            for name, module in model.named_modules() if _is_dcls(module)}


def _limits(model: nn.Module) -> tuple[float, ...] | None:
    for module in model.modules():
        if _is_dcls(module):
            return tuple(float(k) / 2 for k in module.dilated_kernel_size)
    return None


def position_histograms(model_or_positions: nn.Module | dict[str, Tensor], bins: int = 31,
                        limits: Sequence[float] | None = None, density: bool = True) -> dict[str, dict]:
    """Histogram (1-D) or 2-D histogram of DCLS positions, pooled per stage.

    Args:
        model_or_positions: a model, or the output of :func:`dcls_positions`.
        bins: bins per spatial axis.
        limits: half-width of the histogram range per axis, in taps; default half
            the model's ``dilated_kernel_size`` (or the largest |position|).
        density: normalise so the histogram integrates to 1 (a density per tap).

    Returns:
        ``{stage: {"edges": [edges per axis], "counts": Tensor (bins,) or (bins, bins),
        "num_positions": int, "mean_abs": [mean |offset| per axis]}}``.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if isinstance(model_or_positions, nn.Module):
        positions = dcls_positions(model_or_positions)
        limits = limits if limits is not None else _limits(model_or_positions)
    else:
        positions = model_or_positions
    if not positions:
        return {}
    stages: dict[str, list[Tensor]] = {}
    for name, pos in positions.items():
        stages.setdefault(_stage_of(name), []).append(pos.to(torch.float64))
    if limits is None:
        limits = [max(float(p.abs().max()) for p in positions.values()) or 1.0]
    ndim = next(iter(positions.values())).shape[0]
    limits = list(limits) * ndim if len(limits) == 1 else list(limits)
    result = {}
    for stage, parts in stages.items():
        pos = torch.cat(parts, dim=1)  # (ndim, N)
        edges = [torch.linspace(-lim, lim, bins + 1, dtype=torch.float64) for lim in limits]
        if ndim == 1:
            counts, _ = torch.histogram(pos[0], bins=edges[0], density=density)
        else:
            counts, _ = torch.histogramdd(pos[:2].T.contiguous(), bins=edges[:2], density=density)
        result[stage] = {"edges": [e.tolist() for e in edges[: min(ndim, 2)]], "counts": counts,
                         "num_positions": int(pos.shape[1]), "mean_abs": pos.abs().mean(dim=1).tolist()}
    return result


def position_evolution(checkpoint_dirs: Sequence[str | Path], bins: int = 31) -> list[dict]:
    """DCLS position histograms of a sequence of checkpoints (e.g. one per epoch).

    Each checkpoint directory is loaded with ``largekernel.train.load_checkpoint``.

    Returns:
        One dict per checkpoint: ``{"checkpoint": path, "epoch": int | None,
        "histograms": position_histograms(model)}``.
    """
    from largekernel.train import load_checkpoint

    evolution = []
    for path in checkpoint_dirs:
        model, _, state = load_checkpoint(path)
        epoch = state.get("epoch") if isinstance(state, dict) else None
        evolution.append({"checkpoint": str(path), "epoch": epoch, "histograms": position_histograms(model, bins)})
    return evolution


def flexconv_mask_extents(model: nn.Module) -> list[dict]:
    """Learned kernel extent of every FlexConv layer (the size its Gaussian mask keeps).

    Returns:
        One dict per layer: ``name``, ``stage``, ``extent`` (taps per spatial axis,
        from the layer's ``effective_kernel_size()``) and ``max_extent`` (its
        ``kernel_size``, the largest it can grow to).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = []
    for name, module in model.named_modules():
        size_fn = getattr(module, "effective_kernel_size", None)
        if not callable(size_fn):
            continue
        with torch.no_grad():
            extent = size_fn()
        extent = extent.tolist() if isinstance(extent, Tensor) else extent
        extent = [float(e) for e in (extent if isinstance(extent, (list, tuple)) else [extent])]
        max_extent = getattr(module, "kernel_size", None)
        max_extent = [int(m) for m in max_extent] if isinstance(max_extent, (list, tuple)) else max_extent
        rows.append({"name": name, "stage": _stage_of(name), "extent": extent, "max_extent": max_extent})
    return rows
