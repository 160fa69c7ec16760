"""Batched RandAugment on float images in ``[0, 1]`` (no torchvision, no PIL at run time).

RandAugment (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced search
space", CVPR workshops 2020) applies ``num_ops`` operations, drawn uniformly at random, at a shared
magnitude. This module follows the variant of timm's ``auto_augment.py`` that the ConvNeXt and DCLS
ImageNet recipes use, ``rand-m9-mstd0.5-inc1``:

* the 15 "increasing" ops of ``_RAND_INCREASING_TRANSFORMS`` (:data:`OPS`), where a larger magnitude is
  always a stronger augmentation, with timm's level-to-argument formulas;
* per op and sample a magnitude ``~ Normal(magnitude, magnitude_std)`` clipped to ``[0, max_magnitude]``
  (``magnitude_std = inf``: uniform in ``[0, magnitude]``), a random sign for the signed ops, and each op
  applied with probability 0.5 (timm's ``AugmentOp(prob=0.5)``); ops are drawn with replacement.

Every op is batched: the pixel ops work on the whole ``(N, C, H, W)`` batch with a per-sample argument,
the geometric ops build one affine matrix per sample (PIL's ``Image.transform(..., AFFINE, ...)``
convention, as timm calls it) and resample with one ``grid_sample``. Images are floats in ``[0, 1]``
with 1 or 3 channels; ops that PIL defines on 8-bit levels (equalize, posterize, the solarize
thresholds) quantize to ``round(255 x)`` as PIL would see the image. All randomness of
:func:`rand_augment` comes from an explicit (CPU) ``torch.Generator``: the same seed gives the same
output on any device.

Deliberate differences from timm: geometric ops always resample bilinearly (timm picks bilinear or
bicubic at random, or the recipe's bicubic; ``grid_sample``'s bicubic is not PIL's), and ops act on
float values without rounding the result to 8 bits after each op.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS", "apply_op", "rand_augment"]

OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)

_SIGNED_OPS = frozenset({"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                         "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
_LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude M maps to the fraction M / 10 of each op's range
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, PIL's convert("L")


# ----------------------------------------------------------------------------------------------------------------------
# Helpers

def _check_image(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = f", dtype {x.dtype}" if isinstance(x, Tensor) else ""
        raise ValueError(f"x must be a floating-point tensor of shape (N, C, H, W) with C = 1 or 3, got {shape}{dtype}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision images are augmented in float32 (grid_sample / histograms want it) and cast back.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)  # (N,) -> (N, 1, 1, 1)


def _quantize(x: Tensor) -> Tensor:
    """The 8-bit level ``round(255 x)`` of each pixel, as a float tensor of integers in ``[0, 255]``."""
    return (x * 255).round_().clamp_(0, 255)


def _grayscale(x: Tensor) -> Tensor:
    """Luma ``(N, 1, H, W)`` of ``(N, C, H, W)``; a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)``: ``degenerate + factor (x - degenerate)``, clipped to [0, 1]."""
    return (degenerate + _per_sample(factor, x) * (x - degenerate)).clamp_(0, 1)


def _enhance_factor(level: Tensor) -> Tensor:
    # timm's _enhance_increasing_level_to_arg: 1 +- level / 10 * 0.9, kept >= 0.1.
    return (1.0 + level / _LEVEL_DENOM * 0.9).clamp_min(0.1)


def _warp(x: Tensor, matrix: Tensor, fill: float) -> Tensor:
    """Resample ``x`` (N, C, H, W) through per-sample PIL affine coefficients ``matrix`` (N, 6).

    PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` reads output pixel ``(x, y)`` (pixel centres
    at ``i + 0.5``) from input point ``(a x + b y + c, d x + e y + f)``. As PIL's bilinear filter, a point outside
    the input image is ``fill`` and a point inside reads edge-clamped neighbours (``padding_mode="border"``).
    """
    n, channels, height, width = x.shape
    a, b, c, d, e, f = matrix.unbind(1)  # (N,) each, in pixels
    # The same map in grid_sample's normalized coordinates (align_corners=False: u = 2 x / W - 1).
    theta = torch.stack([
        a, b * height / width, a + b * height / width + 2 * c / width - 1,
        d * width / height, e, d * width / height + e + 2 * f / height - 1,
    ], dim=1).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)  # (N, H, W, 2), float64
    inside = ((grid >= -1) & (grid < 1)).all(dim=-1).unsqueeze(1)  # (N, 1, H, W)
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(inside, out, torch.full((), fill, dtype=x.dtype, device=x.device))


def _affine(x: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor, fill: float) -> Tensor:
    return _warp(x, torch.stack(torch.broadcast_tensors(a, b, c, d, e, f), dim=1), fill)


# ----------------------------------------------------------------------------------------------------------------------
# Ops: (x (N, C, H, W), signed level (N,) float64 on x's device, fill) -> (N, C, H, W)

def _auto_contrast(x: Tensor, level: Tensor, fill: float) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    span = x.amax(dim=(2, 3), keepdim=True) - lo
    stretch = span > 0  # a constant channel is left unchanged, as PIL does
    return torch.where(stretch, (x - lo) / torch.where(stretch, span, torch.ones_like(span)), x)


def _equalize(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # PIL's ImageOps.equalize per sample and channel: lut[i] = (step // 2 + #pixels below i) // step with
    # step = (#pixels - #pixels in the highest occupied level) // 255; step == 0 leaves the channel unchanged.
    n, channels, height, width = x.shape
    q = _quantize(x).long().reshape(n * channels, height * width)  # (NC, HW)
    hist = torch.zeros(n * channels, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    top = hist.gather(1, q.amax(dim=1, keepdim=True))  # (NC, 1)
    step = (height * width - top) // 255  # (NC, 1)
    below = hist.cumsum(dim=1) - hist  # (NC, 256)
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return (lut.gather(1, q).to(x.dtype) / 255).view(n, channels, height, width)


def _invert(x: Tensor, level: Tensor, fill: float) -> Tensor:
    return 1 - x


def _rotate(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # PIL's Image.rotate(degrees) about the centre (W / 2, H / 2): positive degrees turn counter-clockwise.
    height, width = x.shape[2:]
    angle = -torch.deg2rad(level / _LEVEL_DENOM * 30.0)  # (N,)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2, height / 2
    return _affine(x, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, fill)


def _posterize(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # timm's _posterize_increasing_level_to_arg: keep 4 - int(level / 10 * 4) high bits of the 8-bit value.
    bits = (4 - torch.trunc(level.abs() / _LEVEL_DENOM * 4)).clamp(0, 8)
    step = _per_sample(torch.exp2(8 - bits), x)  # (N, 1, 1, 1)
    return torch.floor(_quantize(x) / step) * step / 255


def _solarize(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # timm's _solarize_increasing_level_to_arg: invert the 8-bit levels >= 256 - int(level / 10 * 256).
    threshold = _per_sample(256 - torch.trunc(level.abs() / _LEVEL_DENOM * 256), x)
    return torch.where(_quantize(x) >= threshold, 1 - x, x)


def _solarize_add(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # timm's solarize_add: add int(level / 10 * 110) 8-bit levels to the levels below 128, clipped at 255.
    add = _per_sample(torch.trunc(level.abs() / _LEVEL_DENOM * 110), x) / 255
    return torch.where(_quantize(x) < 128, (x + add).clamp_(max=1), x)


def _color(x: Tensor, level: Tensor, fill: float) -> Tensor:
    if x.shape[1] == 1:  # a gray image has no colour to change
        return x
    return _blend(_grayscale(x).expand_as(x), x, _enhance_factor(level))


def _contrast(x: Tensor, level: Tensor, fill: float) -> Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return _blend(mean.expand_as(x), x, _enhance_factor(level))


def _brightness(x: Tensor, level: Tensor, fill: float) -> Tensor:
    return _blend(torch.zeros_like(x), x, _enhance_factor(level))


def _sharpness(x: Tensor, level: Tensor, fill: float) -> Tensor:
    # Blend with PIL's SMOOTH filter, which leaves the one-pixel border (and images under 3x3) unchanged.
    n, channels, height, width = x.shape
    smooth = x.clone()
    if height >= 3 and width >= 3:
        kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
        kernel[1, 1] = 5
        kernel = (kernel / 13).view(1, 1, 3, 3)
        inner = F.conv2d(x.reshape(n * channels, 1, height, width), kernel)  # (NC, 1, H - 2, W - 2)
        smooth[:, :, 1:-1, 1:-1] = inner.view(n, channels, height - 2, width - 2)
    return _blend(smooth, x, _enhance_factor(level))


def _shear_x(x: Tensor, level: Tensor, fill: float) -> Tensor:
    s = level / _LEVEL_DENOM * 0.3  # timm's _shear_level_to_arg; PIL matrix (1, s, 0, 0, 1, 0)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(x, one, s, zero, zero, one, zero, fill)


def _shear_y(x: Tensor, level: Tensor, fill: float) -> Tensor:
    s = level / _LEVEL_DENOM * 0.3  # PIL matrix (1, 0, 0, s, 1, 0)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(x, one, zero, zero, s, one, zero, fill)


def _translate_x(x: Tensor, level: Tensor, fill: float) -> Tensor:
    pixels = level / _LEVEL_DENOM * 0.45 * x.shape[3]  # timm's translate_x_rel: PIL matrix (1, 0, px, 0, 1, 0)
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _affine(x, one, zero, pixels, zero, one, zero, fill)


def _translate_y(x: Tensor, level: Tensor, fill: float) -> Tensor:
    pixels = level / _LEVEL_DENOM * 0.45 * x.shape[2]  # PIL matrix (1, 0, 0, 0, 1, px)
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _affine(x, one, zero, zero, zero, one, pixels, fill)


_OP_FNS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _color,
    "ContrastIncreasing": _contrast,
    "BrightnessIncreasing": _brightness,
    "SharpnessIncreasing": _sharpness,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x,
    "TranslateYRel": _translate_y,
}
assert tuple(_OP_FNS) == OPS


# ----------------------------------------------------------------------------------------------------------------------
# Public API

def apply_op(x: Tensor, name: str, magnitude: Tensor | float, fill: float = 0.5) -> Tensor:
    """Apply op ``name`` of :data:`OPS` to every sample of ``x`` with its own *signed* level.

    Args:
        x: images ``(N, C, H, W)`` in ``[0, 1]``, ``C`` = 1 or 3, any float dtype and device.
        name: one of :data:`OPS`.
        magnitude: the signed level per sample, shape ``(N,)`` (or a scalar for all), in magnitude units
            (``|magnitude| <= 10`` for timm's ranges; not clipped here). Its sign is the op's direction:
            ``Rotate`` by ``magnitude / 10 * 30`` degrees (positive: counter-clockwise, as PIL), ``ShearX/Y`` by
            ``magnitude / 10 * 0.3``, ``TranslateX/YRel`` by ``magnitude / 10 * 0.45`` of the width / height, and
            ``Color/Contrast/Brightness/SharpnessIncreasing`` blend with factor ``max(0.1, 1 + magnitude / 10 * 0.9)``.
            ``PosterizeIncreasing`` (keep ``4 - int(|m| / 10 * 4)`` bits), ``SolarizeIncreasing`` (invert 8-bit levels
            ``>= 256 - int(|m| / 10 * 256)``) and ``SolarizeAdd`` (add ``int(|m| / 10 * 110) / 255`` below 128 / 255)
            ignore the sign; ``AutoContrast``, ``Equalize`` and ``Invert`` ignore ``magnitude``.
        fill: value of the pixels that geometric ops bring in from outside the image.

    Returns:
        The augmented images, same shape, dtype and device as ``x``.
    """
    _check_image(x)
    if name not in _OP_FNS:
        raise ValueError(f"name must be one of {OPS}, got {name!r}")
    n = x.shape[0]
    level = torch.as_tensor(magnitude).to(device=x.device, dtype=torch.float64)
    if level.dim() == 0:
        level = level.expand(n)
    if level.shape != (n,):
        raise ValueError(f"magnitude must be a scalar or have shape ({n},), got shape {tuple(level.shape)}")
    out = _OP_FNS[name](x.to(_work_dtype(x.dtype)), level, float(fill))
    return out.to(x.dtype)


def rand_augment(x: Tensor, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 generator: torch.Generator | None = None, max_magnitude: float = 10.0, fill: float = 0.5) -> Tensor:
    """RandAugment (timm's ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1``) on a batch, per sample.

    For each of ``num_ops`` slots every sample independently draws an op uniformly from :data:`OPS` (with
    replacement across slots), a magnitude ``~ Normal(magnitude, magnitude_std)`` clipped to ``[0, max_magnitude]``
    (``magnitude_std = 0``: exactly ``magnitude``; ``inf``: uniform in ``[0, magnitude]``), a sign (+/- with
    probability 1/2, used by the signed ops) and whether to apply the op at all (probability 1/2).

    Args:
        x: images ``(N, C, H, W)`` in ``[0, 1]``, ``C`` = 1 or 3, any float dtype and device.
        num_ops: ops per image (timm's ``n``).
        magnitude: mean magnitude in ``[0, max_magnitude]`` (timm's ``m``).
        magnitude_std: standard deviation of the per-op magnitude (timm's ``mstd``).
        generator: CPU generator all random draws come from (default: torch's global one).
        max_magnitude: upper clip of the drawn magnitudes (timm's ``mmax``, default 10).
        fill: value of the pixels that geometric ops bring in from outside the image.

    Returns:
        The augmented images clipped to ``[0, 1]``, same shape, dtype and device as ``x``; ``x`` itself when
        ``num_ops == 0``.
    """
    _check_image(x)
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be an integer >= 0, got {num_ops!r}")
    if not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be > 0, got {max_magnitude!r}")
    if not 0 <= magnitude <= max_magnitude:
        raise ValueError(f"magnitude must be in [0, max_magnitude] = [0, {max_magnitude}], got {magnitude!r}")
    if not magnitude_std >= 0:
        raise ValueError(f"magnitude_std must be >= 0, got {magnitude_std!r}")
    if not 0 <= fill <= 1:
        raise ValueError(f"fill must be in [0, 1], got {fill!r}")
    if num_ops == 0:
        return x
    n = x.shape[0]
    out = x.to(_work_dtype(x.dtype), copy=True)  # (N, C, H, W), written in place below
    signed = torch.tensor([name in _SIGNED_OPS for name in OPS])  # (len(OPS),)
    for _ in range(num_ops):
        # A fixed sequence of draws per slot (on CPU), whatever the data: reproducible on any device.
        kind = torch.randint(len(OPS), (n,), generator=generator)  # (N,)
        applied = torch.rand(n, generator=generator) < 0.5
        if math.isinf(magnitude_std):
            level = magnitude * torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            level = magnitude + magnitude_std * torch.randn(n, generator=generator, dtype=torch.float64)
        level = level.clamp(0, max_magnitude)
        negate = (torch.rand(n, generator=generator) < 0.5) & signed[kind]
        level = torch.where(negate, -level, level)
        for k, name in enumerate(OPS):
            idx = torch.nonzero(applied & (kind == k)).flatten()  # the samples that apply op k in this slot
            if idx.numel() == 0:
                continue
            idx_dev = idx.to(out.device)
            out[idx_dev] = apply_op(out.index_select(0, idx_dev), name, level[idx], fill)
    return out.clamp_(0, 1).to(x.dtype)
