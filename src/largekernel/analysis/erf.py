"""Effective receptive field of a model (RepLKNet's method).

Ding et al., "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in
CNNs" (CVPR 2022), after Luo et al. (NeurIPS 2016): the ERF is the gradient of the
centre of the last feature map with respect to the input, in absolute value,
summed over channels and averaged over images. Its *high-contribution area
ratio* at threshold ``t`` is the area of the smallest centred square (interval in
1-D) holding at least ``t`` of the ERF's total, divided by the input's area;
RepLKNet reports ``t = 0.2, 0.3, 0.5, 0.99``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from largekernel.analysis.kernels import kernel_mass_ratio

__all__ = ["effective_receptive_field", "erf_area_ratios", "ERF_THRESHOLDS"]

ERF_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def _batches(inputs: Tensor | Iterable) -> Iterable[Tensor]:
    if isinstance(inputs, Tensor):
        yield inputs
        return
    for item in inputs:
        yield item[0] if isinstance(item, (tuple, list)) else item


def _feature_fn(model: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    # classification models end in pooled logits; their spatial map is forward_features'
    forward_features = getattr(model, "forward_features", None)
    return forward_features if callable(forward_features) else model


def effective_receptive_field(model: nn.Module | Callable[[Tensor], Tensor], inputs: Tensor | Iterable,
                              *, features: Callable[[Tensor], Tensor] | None = None,
                              max_images: int | None = None) -> Tensor:
    """Mean over images of ``sum_c |d y_centre / d x_c|``, on the input grid.

    Args:
        model: the network; it is put in eval mode for the measurement and restored.
        inputs: a batch ``(B, C, *spatial)`` or an iterable of batches / ``(x, y)``
            pairs (a DataLoader). All images must share one spatial size.
        features: the function whose output's centre is measured; default
            ``model.forward_features`` when the model has it (the unpooled map),
            else ``model``. Its output must be ``(B, C', *spatial')`` with as many
            spatial dims as the input.
        max_images: stop after this many images.

    Returns:
        ``(*spatial)`` float tensor, non-negative.
    """
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    fn = features or _feature_fn(model)
    total, count = None, 0
    try:
        for batch in _batches(inputs):
            if max_images is not None:
                batch = batch[: max_images - count]
            if batch.shape[0] == 0:
                break
            if batch.dim() < 3:
                raise ValueError(f"inputs must be (B, C, *spatial), got a batch of shape {tuple(batch.shape)}")
            spatial_dims = batch.dim() - 2
            x = batch.detach().float().requires_grad_(True)
            out = fn(x)
            if out.dim() != batch.dim():
                raise ValueError(f"the feature map must be (B, C, *spatial) with {spatial_dims} spatial dims like the "
                                 f"input, got shape {tuple(out.shape)}; pass features= to choose the map")
            centre = (Ellipsis, *[s // 2 for s in out.shape[2:]])
            (grad,) = torch.autograd.grad(out[centre].sum(), x)
            contribution = grad.abs().sum(dim=1).sum(dim=0)  # (*spatial) summed over channels and images
            total = contribution if total is None else total + contribution
            count += batch.shape[0]
            if max_images is not None and count >= max_images:
                break
    finally:
        if was_training is not None:
            model.train(was_training)
    if total is None:
        raise ValueError("inputs held no images")
    return total / count


def erf_area_ratios(erf: Tensor, thresholds: Sequence[float] = ERF_THRESHOLDS,
                    log_scale: bool = False) -> dict[str, dict[str, float]]:
    """High-contribution area ratios of an ERF map (RepLKNet, Table 4).

    Args:
        erf: ``(*spatial)`` map from :func:`effective_receptive_field`.
        thresholds: shares of the total contribution.
        log_scale: apply RepLKNet's ``log10(1 + erf)`` (then rescale to max 1)
            first, as their script does; by default the raw map is used, which
            makes the ratios independent of the gradient's scale.

    Returns:
        ``{str(t): {"side": window side in pixels, "area_ratio": window area / input area}}``.
    """
    if not isinstance(erf, Tensor) or erf.dim() < 1:
        raise ValueError(f"erf must be a tensor with at least one spatial dim, got {erf!r:.60}")
    for t in thresholds:
        if not 0 < float(t) <= 1:
            raise ValueError(f"thresholds must lie in (0, 1], got {list(thresholds)}")
    data = erf.detach().to(torch.float64).clamp_min(0)
    if log_scale:
        data = torch.log10(1 + data)
        data = data / data.max().clamp_min(1e-300)
    shape = data.shape
    # the centre is s // 2; pad even axes at the end so it is also (s' - 1) // 2 of the padded map
    pad = []
    for s in reversed(shape):
        pad += [0, 1 - s % 2]
    padded = torch.nn.functional.pad(data[None], pad)[0] if any(pad) else data
    ratios, sizes = kernel_mass_ratio(padded[None], ndim=len(shape))  # (1, S)
    area = float(torch.tensor(shape).prod())
    result = {}
    for t in thresholds:
        index = int((ratios[0] >= float(t) - 1e-9).to(torch.int8).argmax())
        side = sizes[index]
        covered = 1.0
        for s in shape:
            covered *= min(side, s)
        result[str(t)] = {"side": int(side), "area_ratio": covered / area}
    return result
