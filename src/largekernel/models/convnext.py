"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s") with a choice of depthwise convolution.

timm's names and sizes (``convnext_atto`` ... ``convnext_base``), plus the DCLS
paper's variants (Khalfaoui-Hassani et al. 2023, seed 001): the 7x7 depthwise
convolutions replaced by 2-D DCLS ones of dilated kernel size 17 and kernel
count 34 (tiny) or 40 (small, base), positions shared by the blocks of a stage.

``patch_size`` sets the stem's stride (4 as in the paper; 1 or 2 for 8x8 or
32x32 inputs): the total stride is ``patch_size * 8``, so the input side must
be at least that.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from largekernel.models._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg, register_model
from largekernel.models.layers import (
    Backbone,
    Classifier,
    DropPath,
    LayerNormChannelsFirst,
    _check_positive,
    _linear_rates,
    _trunc_normal_init,
    create_conv,
)
from largekernel.functional._fx import traced
from largekernel import optim

__all__ = [
    "ConvNeXt",
    "ConvNeXtBlock",
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_atto_dcls",
    "convnext_tiny_dcls",
    "convnext_small_dcls",
    "convnext_base_dcls",
]


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * mlp(norm(dwconv(x))))``, the MLP applied channels-last.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, *, conv: str = "conv", kernel_size: int = 7,
                 conv_kwargs: dict[str, Any] | None = None, mlp_ratio: float = 4.0,
                 ls_init_value: float | None = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * channels)
        self.conv_dw = create_conv(conv, channels, channels, kernel_size, dim=2, groups=channels,
                                   **(conv_kwargs or {}))
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(torch.full((channels,), ls_init_value)) if ls_init_value else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.fc2(self.act(self.fc1(self.norm(y))))  # (B, H, W, C)
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))  # (B, C, H, W)


class _Stage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, *, downsample: bool, drop_path: Sequence[float],
                 **block_kwargs) -> None:
        super().__init__()
        self.downsample = (nn.Sequential(LayerNormChannelsFirst(in_chs, eps=1e-6),
                                         nn.Conv2d(in_chs, out_chs, 2, stride=2))
                           if downsample or in_chs != out_chs else nn.Identity())
        self.blocks = nn.Sequential(*(ConvNeXtBlock(out_chs, drop_path=rate, **block_kwargs) for rate in drop_path))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(Backbone, Classifier):
    """ConvNeXt: patchify stem, four stages of :class:`ConvNeXtBlock`, global pool, LayerNorm, linear head.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        depths, dims: blocks and channels per stage.
        conv: family of the depthwise convolutions (``largekernel.models.layers.CONV_TYPES``).
        kernel_size: their extent (the DCLS ``dilated_kernel_size``).
        conv_kwargs: options for that layer (e.g. ``{"kernel_count": 34}``).
        share_positions: with ``conv="dcls"``, one position tensor per stage (DCLS paper).
        patch_size: stem stride (4 for 224x224; 1 or 2 for small images).
        ls_init_value: layer-scale init (None: no layer scale).
        drop_rate, drop_path_rate: dropout before the head; stochastic depth growing linearly with depth.

    Shape:
        - Input: (B, in_chans, H, W) with H, W >= 8 * patch_size
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), conv: str = "conv", kernel_size: int = 7,
                 conv_kwargs: dict[str, Any] | None = None, share_positions: bool = False, patch_size: int = 4,
                 mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_chans, "in_chans")
        _check_positive(patch_size, "patch_size")
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims must have the same length, got {tuple(depths)} and {tuple(dims)}")
        if share_positions and conv != "dcls":
            raise ValueError(f"share_positions=True needs conv='dcls', got conv={conv!r}")
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.patch_size = patch_size
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size),
                                  LayerNormChannelsFirst(dims[0], eps=1e-6))
        flat = _linear_rates(drop_path_rate, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths))]
        stages = []
        prev = dims[0]
        for i, (depth, width) in enumerate(zip(depths, dims)):
            stages.append(_Stage(prev, width, depth, downsample=i > 0, drop_path=flat[starts[i]:starts[i] + depth], conv=conv,
                                 kernel_size=kernel_size, conv_kwargs=conv_kwargs, mlp_ratio=mlp_ratio,
                                 ls_init_value=ls_init_value))
            prev = width
        self.stages = nn.Sequential(*stages)
        # timm's backbone metadata: one feature map per stage (largekernel.models.features).
        self.feature_info = [dict(num_chs=width, reduction=patch_size * 2 ** i, module=f"stages.{i}")
                             for i, width in enumerate(dims)]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_trunc_normal_init)
        if share_positions:
            for stage in self.stages:
                if len(stage.blocks) > 1:
                    optim.share_positions(block.conv_dw for block in stage.blocks)

    def _check_input(self, x: Tensor) -> None:
        minimum = self.patch_size * 2 ** (len(self.stages) - 1)
        if not traced(x) and (x.dim() != 4 or min(x.shape[-2:]) < minimum):
            raise ValueError(f"ConvNeXt with patch_size={self.patch_size} expects (B, C, H, W) with H, W >= "
                             f"{minimum}, got shape {tuple(x.shape)}")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.norm(x.mean(dim=(2, 3))))  # (B, C)
        return x if pre_logits else self.head(x)  # (B, num_classes)


# Made for ImageNet (224 x 224, the 0.875 center crop of timm's convnext cfgs); patch_size=1 or 2 serves small images.
default_cfgs = {name: model_cfg((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, crop_pct=0.875,
                                pool_size=(7, 7))
                for name in __all__ if name.startswith("convnext_")}


def _create_convnext(variant: dict[str, Any], **kwargs) -> ConvNeXt:
    merged = {**variant, **kwargs}
    # Layer options merge key by key, so that e.g. interpolation="gaussian" keeps the variant's kernel_count.
    merged["conv_kwargs"] = {**variant.get("conv_kwargs", {}), **(kwargs.get("conv_kwargs") or {})}
    return ConvNeXt(**merged)


def _dcls(kernel_count: int) -> dict[str, Any]:
    """The DCLS paper's replacement: 17x17 box, ``kernel_count`` elements, positions shared per stage."""
    return dict(conv="dcls", kernel_size=17, share_positions=True, conv_kwargs={"kernel_count": kernel_count})


@register_model
def convnext_atto(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)), **kwargs)


@register_model
def convnext_femto(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)), **kwargs)


@register_model
def convnext_pico(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)), **kwargs)


@register_model
def convnext_nano(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)), **kwargs)


@register_model
def convnext_tiny(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)), **kwargs)


@register_model
def convnext_small(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)), **kwargs)


@register_model
def convnext_base(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)), **kwargs)


@register_model
def convnext_atto_dcls(**kwargs) -> ConvNeXt:
    """CPU-sized DCLS ConvNeXt: atto sizes with the tiny recipe (box 17, 34 elements, shared positions)."""
    return _create_convnext(dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_dcls(34)), **kwargs)


@register_model
def convnext_tiny_dcls(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_dcls(34)), **kwargs)


@register_model
def convnext_small_dcls(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_dcls(40)), **kwargs)


@register_model
def convnext_base_dcls(**kwargs) -> ConvNeXt:
    return _create_convnext(dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_dcls(40)), **kwargs)
