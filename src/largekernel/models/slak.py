"""SLaK (Liu, Chen, Chen, Atashgahi, Yin, Kou, Shen, Pechenizkiy, Wang and Mocanu, "More ConvNets
in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity", ICLR 2023).

The official network (VITA-Group/SLaK, ``models/SLaK.py``) is ConvNeXt with each
7x7 depthwise convolution replaced by a decomposed large kernel
(:class:`largekernel.nn.reparam.SLaKConv2d`, ``conv="slak"``): an M x 5 and a
5 x M kernel and a 5x5 one, each with its BatchNorm, M = 51, 49, 47, 13 over the
four stages, and widths scaled by 1.3 (``--width_factor 1.3``). The paper also
trains the kernels sparse (dynamic sparsity, 40 %); that is a training
technique, not part of the architecture, and is not reproduced here: these are
the dense networks. Blocks are :class:`largekernel.models.convnext.ConvNeXtBlock`.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from largekernel.models._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg, register_model
from largekernel.models.convnext import _Stage
from largekernel.models.layers import (
    REPARAM_TYPES,
    LayerNormChannelsFirst,
    StagedClassifier,
    _check_positive,
    _linear_rates,
    _trunc_normal_init,
)

__all__ = ["SLaK", "slak_tiny", "slak_small"]


class SLaK(StagedClassifier):
    """SLaK: ConvNeXt's patchify stem, four stages of ConvNeXt blocks with per-stage large kernels, head.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        depths, dims: blocks and channels per stage (before ``width_factor``).
        width_factor: channel multiplier (1.3 in the paper; channels are ``int(dim * width_factor)``).
        kernel_sizes: M of each stage (51, 49, 47, 13).
        small_kernel: N, the strips' width and the small kernel (5), for ``conv="slak"``.
        conv: family of the depthwise convolutions (``largekernel.models.layers.CONV_TYPES``).
        conv_kwargs: options for that layer.
        ls_init_value: layer-scale init (None: no layer scale).
        drop_rate, drop_path_rate: dropout before the head; stochastic depth growing linearly with depth.

    Shape:
        - Input: (B, in_chans, H, W) with H, W >= 32
        - Output: (B, num_classes)
    """

    min_input_size = 32

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), width_factor: float = 1.3,
                 kernel_sizes: Sequence[int] = (51, 49, 47, 13), small_kernel: int = 5, conv: str = "slak",
                 conv_kwargs: dict[str, Any] | None = None, ls_init_value: float | None = 1e-6,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_chans, "in_chans")
        if not len(depths) == len(dims) == len(kernel_sizes):
            raise ValueError(f"depths, dims and kernel_sizes must have the same length, got {tuple(depths)}, "
                             f"{tuple(dims)} and {tuple(kernel_sizes)}")
        dims = [int(d * width_factor) for d in dims]
        conv_kwargs = dict(conv_kwargs or {})
        if conv == "slak":
            conv_kwargs.setdefault("small_kernel", small_kernel)
        if conv in REPARAM_TYPES:
            conv_kwargs.setdefault("bias", False)  # the branches' BatchNorms carry the bias
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNormChannelsFirst(dims[0], eps=1e-6))
        rates = _linear_rates(drop_path_rate, sum(depths))
        stages, prev, start = [], dims[0], 0
        for i, (depth, chs, kernel) in enumerate(zip(depths, dims, kernel_sizes)):
            stages.append(_Stage(prev, chs, depth, downsample=i > 0, drop_path=rates[start:start + depth], conv=conv,
                                 kernel_size=kernel, conv_kwargs=conv_kwargs, ls_init_value=ls_init_value))
            prev, start = chs, start + depth
        self.stages = nn.Sequential(*stages)
        self._build_head(dims, num_classes, drop_rate)
        self.apply(_trunc_normal_init)


def _create_slak(variant: dict[str, Any], **kwargs) -> SLaK:
    return SLaK(**{**variant, **kwargs})


default_cfgs = {name: model_cfg((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, crop_pct=0.875,
                                pool_size=(7, 7), first_conv="stem.0")
                for name in __all__ if name.startswith("slak_")}


@register_model
def slak_tiny(**kwargs) -> SLaK:
    return _create_slak(dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)), **kwargs)


@register_model
def slak_small(**kwargs) -> SLaK:
    return _create_slak(dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)), **kwargs)
