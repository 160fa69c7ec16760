"""Batched tensor augmentations (no torchvision): crop with padding, flip, normalisation, mixup / cutmix.

Every function works on a whole batch ``(N, C, *size)`` at once and draws its
randomness from an explicit ``torch.Generator`` so that a training run, and a
resumed one, sees exactly the same augmented batches. Mixup is Zhang et al.
(2018), CutMix is Yun et al. (2019); the batch-level mixing with one ``lambda``
per batch and an optional switch between the two follows timm's ``Mixup``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Normalize", "random_crop", "random_flip", "mixup_cutmix", "one_hot"]


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
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = self.mean.to(x.device, x.dtype).view(shape)
        std = self.std.to(x.device, x.dtype).view(shape)
        return (x - mean) / std

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
    n = x.shape[0]
    xp = F.pad(x, [padding] * (2 * len(spatial)))  # (N, C, *(size + 2 padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, len(spatial)), generator=generator).to(x.device)
    batch = torch.arange(n, device=x.device)
    if len(spatial) == 1:
        cols = offsets[:, 0:1] + torch.arange(spatial[0], device=x.device)  # (N, L)
        return xp[batch[:, None], :, cols].permute(0, 2, 1)  # (N, L, C) -> (N, C, L)
    rows = offsets[:, 0:1] + torch.arange(spatial[0], device=x.device)  # (N, H)
    cols = offsets[:, 1:2] + torch.arange(spatial[1], device=x.device)  # (N, W)
    out = xp[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)  # (N, C, H, W)


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
