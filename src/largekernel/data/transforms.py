"""Batched tensor augmentations (no torchvision): crop with padding, random resized crop, flip, random
erasing, normalisation, mixup / cutmix (RandAugment: :mod:`largekernel.data.randaugment`).

Every function works on a whole batch ``(N, C, *size)`` at once and draws its
randomness from an explicit ``torch.Generator`` so that a training run, and a
resumed one, sees exactly the same augmented batches. Mixup is Zhang et al.
(2018), CutMix is Yun et al. (2019); the batch-level mixing with one ``lambda``
per batch and an optional switch between the two follows timm's ``Mixup``. The
random resized crop draws its boxes as torchvision's ``RandomResizedCrop`` (ten
tries, then a centre crop) and random erasing is Zhong et al. (2020) as timm's
``RandomErasing`` (``mode="pixel"``: normal noise on the normalised input).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Normalize", "random_crop", "random_resized_crop", "random_flip", "random_erasing", "mixup_cutmix",
           "one_hot"]


class Normalize:
    """Per-channel ``(x - mean) / std`` on a batch ``(N, C, *size)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """``x * std + mean``: back to the loader's pixel range (``[0, 1]`` for images)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return self.mean.to(x.device, x.dtype).view(shape), self.std.to(x.device, x.dtype).view(shape)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every spatial side of ``x`` by ``padding`` and crop back to the input size at a random offset per sample.

    Shape: ``(N, C, *size) -> (N, C, *size)``; works for 1-D (a random shift) and 2-D inputs.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    spatial = x.shape[2:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"random_crop expects a batch (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    xp = F.pad(x, [padding] * (2 * len(spatial)))  # (N, C, *(size + 2 padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, len(spatial)), generator=generator).to(x.device)
    # gather, not advanced indexing + permute: the result has the standard contiguous strides, so the weight
    # gradients of a first convolution have them too (DDP's gradient buckets compare strides exactly).
    cols = offsets[:, -1:] + torch.arange(spatial[-1], device=x.device)  # (N, W)
    if len(spatial) == 2:
        rows = offsets[:, 0:1] + torch.arange(spatial[0], device=x.device)  # (N, H)
        xp = xp.gather(2, rows[:, None, :, None].expand(n, c, spatial[0], xp.shape[-1]))  # (N, C, H, W + 2 padding)
    return xp.gather(-1, cols.view(n, 1, *[1] * (len(spatial) - 1), -1).expand(n, c, *spatial))  # (N, C, *size)


def _check_range(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    if len(value) != 2 or not low < value[0] <= value[1]:
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max, got {tuple(value)}")
    return float(value[0]), float(value[1])


def _log_uniform(n: int, ratio: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))


def resized_crop_boxes(n: int, size: tuple[int, int], scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                       attempts: int = 10) -> torch.Tensor:
    """Crop boxes ``(n, 4)`` as ``(top, left, height, width)`` for images of ``size = (H, W)``, drawn as
    torchvision's ``RandomResizedCrop``: an area fraction uniform in ``scale`` and an aspect ratio (w / h)
    log-uniform in ``ratio``; the first of ``attempts`` draws that fits the image, else a centre crop of the
    image clamped to ``ratio``."""
    scale, ratio = _check_range("scale", scale), _check_range("ratio", ratio)
    height, width = size
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator,
                                                                     dtype=torch.float64))
    aspect = _log_uniform(n * attempts, ratio, generator).view(n, attempts)
    w = torch.round(torch.sqrt(target * aspect)).long()  # (n, attempts)
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1)  # the first attempt that fits (0 when none does)
    h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    # No attempt fits: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    fb_w, fb_h = width, height
    if in_ratio < ratio[0]:
        fb_h = int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w = int(round(height * ratio[1]))
    found = fits.any(dim=1)
    h = torch.where(found, h, torch.full_like(h, fb_h))
    w = torch.where(found, w, torch.full_like(w, fb_w))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).long(), torch.full_like(h, (height - fb_h) // 2))
    left = torch.where(found, (u[:, 1] * (width - w + 1)).long(), torch.full_like(w, (width - fb_w) // 2))
    return torch.stack([top, left, h, w], dim=1)


def random_resized_crop(x: torch.Tensor, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                        size: Sequence[int] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random box per sample (:func:`resized_crop_boxes`) and resize it bilinearly to ``size`` (default: the
    input's), ``(N, C, H, W) -> (N, C, *size)``: one ``grid_sample`` for the whole batch.

    Sampling points are those of ``F.interpolate(crop, size, mode="bilinear", align_corners=False)``; where that
    clamps to the crop's border (upsampling, the outermost half pixel) this reads the neighbouring image pixel
    instead. No antialiasing: a crop much larger than ``size`` is sampled, not averaged.
    """
    if x.dim() != 4:
        raise ValueError(f"random_resized_crop expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, height, width = x.shape
    out_h, out_w = (height, width) if size is None else (int(size[0]), int(size[1]))
    boxes = resized_crop_boxes(n, (height, width), scale, ratio, generator).to(x.device, torch.float64)
    top, left, h, w = boxes.unbind(1)
    # Output pixel centres in [-1, 1] map affinely onto the box (align_corners=False convention).
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    dtype = x.dtype if x.is_floating_point() else torch.float32
    grid = F.affine_grid(theta.to(dtype), [n, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erasing(x: torch.Tensor, p: float = 0.25, scale: Sequence[float] = (0.02, 1 / 3),
                   ratio: Sequence[float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None,
                   attempts: int = 10) -> torch.Tensor:
    """With probability ``p`` per sample, fill one random box with standard normal noise (per pixel and channel),
    ``(N, C, H, W)``; meant for normalised inputs (timm's ``RandomErasing(mode="pixel")``).

    The box covers a fraction of the image uniform in ``scale`` with an aspect ratio (h / w) log-uniform in
    ``ratio``; of ``attempts`` draws the first strictly smaller than the image is used (none: not erased).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if x.dim() != 4:
        raise ValueError(f"random_erasing expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    scale, ratio = _check_range("scale", scale), _check_range("ratio", ratio)
    n, c, height, width = x.shape
    erase = torch.rand(n, generator=generator) < p  # (N,)
    target = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator,
                                                                                 dtype=torch.float64))
    aspect = _log_uniform(n * attempts, ratio, generator).view(n, attempts)
    h = torch.round(torch.sqrt(target * aspect)).long()
    w = torch.round(torch.sqrt(target / aspect)).long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1)
    h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top, left = (u[:, 0] * (height - h + 1)).long(), (u[:, 1] * (width - w + 1)).long()
    chosen = torch.nonzero(erase & fits.any(dim=1)).flatten().tolist()
    if not chosen:
        return x
    x = x.clone()
    for i in chosen:  # a box per erased sample: its noise only (a batch-sized draw would dominate)
        t, l, hh, ww = int(top[i]), int(left[i]), int(h[i]), int(w[i])
        noise = torch.randn(c, hh, ww, generator=generator, dtype=torch.float32)
        x[i, :, t:t + hh, l:l + ww] = noise.to(x.device, x.dtype)
    return x


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reverse the last (width / time) axis of each sample with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p == 0.0:
        return x
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < p  # (N,)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def one_hot(y: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets ``(N, num_classes)``: ``1 - s + s / K`` on the label, ``s / K`` elsewhere."""
    off = label_smoothing / num_classes
    out = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
    return out.scatter_(1, y.view(-1, 1), 1.0 - label_smoothing + off)


def mixup_cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the batch with its reverse: mixup (blend) or cutmix (paste a box), one ``lambda ~ Beta(alpha, alpha)`` per batch.

    Returns the mixed inputs and soft targets ``(N, num_classes)``. With both
    alphas positive, cutmix is chosen with probability ``switch_prob``; the
    whole batch is mixed with probability ``prob``. For cutmix ``lambda`` is
    corrected to the exact area of the (clipped) box, as in the paper.
    """
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    targets = one_hot(y, num_classes, label_smoothing)
    # Beta samples come from NumPy seeded by the torch generator: torch's gamma takes no generator.
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    x_rev = x.flip(0)
    if use_cutmix:
        x = x.clone()
        spatial = x.shape[2:]
        cut = math.sqrt(1.0 - lam) if len(spatial) == 2 else 1.0 - lam
        slices, area = [], 1
        for size in spatial:
            length = int(size * cut)
            centre = int(rng.integers(0, size))
            lo, hi = max(centre - length // 2, 0), min(centre + length // 2, size)
            slices.append(slice(lo, hi))
            area *= hi - lo
        x[(slice(None), slice(None), *slices)] = x_rev[(slice(None), slice(None), *slices)]
        lam = 1.0 - area / math.prod(spatial)
    else:
        x = x * lam + x_rev * (1.0 - lam)
    return x, targets * lam + targets.flip(0) * (1.0 - lam)
