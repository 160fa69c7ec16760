"""UniRepLKNet (Ding, Zhang, Yue, Zhang, Gong, Han and Ding, "UniRepLKNet: A Universal Perception
Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series and Image Recognition", CVPR 2024).

The official network (AILab-CVC/UniRepLKNet, ``unireplknet.py``): a stem of two
3x3 stride-2 convs (LayerNorm, GELU between), 3x3 stride-2 conv + LayerNorm
downsampling, and blocks

    x + drop_path(gamma * BN(fc2(GRN(GELU(fc1(SE(BN(dwconv(x)))))))))

where ``dwconv`` is a 13x13 dilated re-parameterised convolution
(:class:`largekernel.nn.reparam.DilatedReparamConv2d`, ``conv="dilated_reparam"``)
in the large-kernel blocks and a plain depthwise 3x3 in the others (stage 1 and
every second or third block of stage 3), SE is squeeze-and-excitation with
ratio 1/4 and GRN the global response normalisation of ConvNeXt V2. ``conv``
chooses the family of the large-kernel blocks only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.models._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg, register_model
from largekernel.models.layers import (
    DropPath,
    LayerNormChannelsFirst,
    Stage,
    StagedClassifier,
    _check_positive,
    _linear_rates,
    _trunc_normal_init,
    create_conv,
)

__all__ = ["UniRepLKNet", "UniRepLKNetBlock", "unireplknet_t", "unireplknet_s"]

# Blocks with kernels below this size are plain depthwise convolutions (the official rule).
_LARGE = 7
_T_KERNELS = ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13))
_S_KERNELS = ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13))


class _SqueezeExcite(nn.Module):
    """SENet's channel gate: ``x * sigmoid(up(relu(down(mean(x)))))``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.up(F.relu(self.down(x.mean(dim=(2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * torch.sigmoid(gate)


class _GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channels-last input: ``(gamma * N(x) + 1) * x + beta``, ``N`` the spatial
    L2 norm of each channel divided by its mean over channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return (self.gamma * n + 1) * x + self.beta


class UniRepLKNetBlock(nn.Module):
    """Depthwise conv, BN, SE, channels-last MLP with GRN, BN, layer scale; residual.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, kernel_size: int, *, conv: str = "dilated_reparam",
                 conv_kwargs: dict[str, Any] | None = None, ffn_ratio: float = 4.0,
                 ls_init_value: float | None = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(ffn_ratio * channels)
        if kernel_size >= _LARGE:
            self.conv_dw = create_conv(conv, channels, channels, kernel_size, dim=2, groups=channels, bias=False,
                                       **(conv_kwargs or {}))
        else:
            self.conv_dw = create_conv("conv", channels, channels, kernel_size, dim=2, groups=channels, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.se = _SqueezeExcite(channels, channels // 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.grn = _GlobalResponseNorm(hidden)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        self.gamma = nn.Parameter(torch.full((channels,), ls_init_value)) if ls_init_value else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.se(self.norm(self.conv_dw(x))).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.fc2(self.grn(self.act(self.fc1(y))))  # (B, H, W, C)
        y = self.norm2(y.permute(0, 3, 1, 2))  # (B, C, H, W)
        if self.gamma is not None:
            y = y * self.gamma.view(-1, 1, 1)
        return x + self.drop_path(y)


class UniRepLKNet(StagedClassifier):
    """UniRepLKNet: two-conv stem (stride 4), four stages, global pool, LayerNorm, linear head.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        depths, dims: blocks and channels per stage.
        kernel_sizes: per stage, one kernel size for every block or a tuple with one per block
            (blocks below 7 are plain depthwise convolutions).
        conv: family of the large-kernel blocks' convolutions (``largekernel.models.layers.CONV_TYPES``).
        conv_kwargs: options for that layer.
        ffn_ratio, ls_init_value: MLP expansion, layer-scale init (None: no layer scale).
        drop_rate, drop_path_rate: dropout before the head; stochastic depth growing linearly with depth.

    Shape:
        - Input: (B, in_chans, H, W), total stride 32
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, depths: Sequence[int] = (3, 3, 18, 3),
                 dims: Sequence[int] = (80, 160, 320, 640),
                 kernel_sizes: Sequence[int | Sequence[int]] = _T_KERNELS, conv: str = "dilated_reparam",
                 conv_kwargs: dict[str, Any] | None = None, ffn_ratio: float = 4.0,
                 ls_init_value: float | None = 1e-6, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_chans, "in_chans")
        if not len(depths) == len(dims) == len(kernel_sizes):
            raise ValueError(f"depths, dims and kernel_sizes must have the same length, got {tuple(depths)}, "
                             f"{tuple(dims)} and {tuple(kernel_sizes)}")
        per_block = [(k,) * d if isinstance(k, int) else tuple(k) for k, d in zip(kernel_sizes, depths)]
        for i, (ks, d) in enumerate(zip(per_block, depths)):
            if len(ks) != d:
                raise ValueError(f"kernel_sizes[{i}] must be an int or {d} ints (depths[{i}]), got {ks}")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
                                  LayerNormChannelsFirst(dims[0] // 2, eps=1e-6), nn.GELU(),
                                  nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
                                  LayerNormChannelsFirst(dims[0], eps=1e-6))
        rates = _linear_rates(drop_path_rate, sum(depths))
        stages, prev, start = [], dims[0], 0
        for i, (ks, chs) in enumerate(zip(per_block, dims)):
            downsample = (nn.Sequential(nn.Conv2d(prev, chs, 3, stride=2, padding=1),
                                        LayerNormChannelsFirst(chs, eps=1e-6))
                          if i > 0 else nn.Identity())
            stages.append(Stage(downsample, [
                UniRepLKNetBlock(chs, k, conv=conv, conv_kwargs=conv_kwargs, ffn_ratio=ffn_ratio,
                                 ls_init_value=ls_init_value, drop_path=rate)
                for k, rate in zip(ks, rates[start:start + len(ks)])]))
            prev, start = chs, start + len(ks)
        self.stages = nn.Sequential(*stages)
        self._build_head(dims, num_classes, drop_rate)
        self.apply(_trunc_normal_init)


def _create_unireplknet(variant: dict[str, Any], **kwargs) -> UniRepLKNet:
    return UniRepLKNet(**{**variant, **kwargs})


default_cfgs = {name: model_cfg((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, crop_pct=0.875,
                                pool_size=(7, 7), first_conv="stem.0")
                for name in __all__ if name.startswith("unireplknet_")}


@register_model
def unireplknet_t(**kwargs) -> UniRepLKNet:
    return _create_unireplknet(dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640), kernel_sizes=_T_KERNELS),
                               **kwargs)


@register_model
def unireplknet_s(**kwargs) -> UniRepLKNet:
    return _create_unireplknet(dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), kernel_sizes=_S_KERNELS),
                               **kwargs)
