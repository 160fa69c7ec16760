"""RepLKNet (Ding, Zhang, Han and Ding, "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel
Design in CNNs", CVPR 2022) with a choice of large-kernel convolution.

The official network (DingXiaoH/RepLKNet-pytorch, ``replknet.py``): a stem of
four conv-BN-ReLU (3x3 stride 2, depthwise 3x3, 1x1, depthwise 3x3 stride 2),
four stages of (RepLK block, ConvFFN block) pairs, between stages a transition
(1x1 conv-BN-ReLU, depthwise 3x3 stride 2 conv-BN-ReLU), then BatchNorm, global
average pooling and a linear head.

- RepLK block: ``x + drop_path(pw2(relu(large_kernel(pw1(prelkb_bn(x))))))``, ``pw1``
  conv-BN-ReLU, ``pw2`` conv-BN, ``large_kernel`` depthwise (``conv="replk"``: the
  large kernel and a parallel 5x5, each with its BatchNorm).
- ConvFFN block: ``x + drop_path(pw2(gelu(pw1(preffn_bn(x)))))``, ``pw1``/``pw2`` 1x1 conv-BN.

As in timm, stage ``i > 0`` starts with the transition before it
(``stages.i.downsample``); inside the blocks the official module names are kept,
so :func:`largekernel.models.official.load_replknet_checkpoint` only moves the
transitions. Seed 003 (Table 3) runs RepLKNet-31B's large kernels by FFT:
``create_model("replknet_31b", conv_kwargs={"backend": "fft"})``, or
``largekernel.bake`` the trained model (one merged kernel per layer) and
``largekernel.convert`` its large kernels to ``"fft"`` (docs/models.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import Tensor, nn

from largekernel.models._registry import IMAGENET_MEAN, IMAGENET_STD, model_cfg, register_model
from largekernel.models.layers import (
    REPARAM_TYPES,
    DropPath,
    Stage,
    StagedClassifier,
    _check_positive,
    _linear_rates,
    create_conv,
)

__all__ = ["RepLKNet", "RepLKBlock", "ConvFFN", "replknet_31b", "replknet_31l", "replknet_xl"]


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
             relu: bool = False) -> nn.Sequential:
    """RepLKNet's ``conv_bn`` / ``conv_bn_relu``: a bias-free conv (``conv``), ``bn`` and optionally ``nonlinear``."""
    layers = [("conv", nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)),
              ("bn", nn.BatchNorm2d(out_chs))]
    if relu:
        layers.append(("nonlinear", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


class RepLKBlock(nn.Module):
    """Pre-BN, 1x1 expansion to ``dw_channels``, depthwise large kernel, ReLU, 1x1 back; residual.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, dw_channels: int, kernel_size: int, *, conv: str = "replk",
                 conv_kwargs: dict[str, Any] | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = _conv_bn(channels, dw_channels, 1, relu=True)
        # The re-parameterised families end in their own BatchNorms, which carry the bias.
        self.large_kernel = create_conv(conv, dw_channels, dw_channels, kernel_size, dim=2, groups=dw_channels,
                                        bias=conv not in REPARAM_TYPES, **(conv_kwargs or {}))
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = _conv_bn(dw_channels, channels, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw1(self.prelkb_bn(x))  # (B, dw_channels, H, W)
        y = self.pw2(self.lk_nonlinear(self.large_kernel(y)))  # (B, C, H, W)
        return x + self.drop_path(y)


class ConvFFN(nn.Module):
    """Pre-BN, 1x1 conv-BN to ``hidden`` channels, GELU, 1x1 conv-BN back; residual.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, hidden: int, *, drop_path: float = 0.0) -> None:
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = _conv_bn(channels, hidden, 1)
        self.nonlinear = nn.GELU()
        self.pw2 = _conv_bn(hidden, channels, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))  # (B, C, H, W)
        return x + self.drop_path(y)


class RepLKNet(StagedClassifier):
    """RepLKNet: conv-BN-ReLU stem (stride 4), four stages of RepLK/ConvFFN pairs, BatchNorm, pool, head.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        depths: (RepLK, ConvFFN) pairs per stage.
        dims: channels per stage.
        kernel_sizes: the large kernel of each stage (31, 29, 27, 13 for 31B/31L).
        small_kernel: the parallel kernel of ``conv="replk"`` (5; ``None``: none, as RepLKNet-XL).
        dw_ratio: depthwise channels per block channel (1.5 in XL).
        ffn_ratio: ConvFFN expansion.
        conv: family of the large-kernel convolutions (``largekernel.models.layers.CONV_TYPES``).
        conv_kwargs: options for that layer (e.g. ``{"backend": "fft"}``).
        drop_rate, drop_path_rate: dropout before the head; stochastic depth growing linearly with depth.

    Shape:
        - Input: (B, in_chans, H, W), total stride 32 (224 -> 7x7 features)
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, depths: Sequence[int] = (2, 2, 18, 2),
                 dims: Sequence[int] = (128, 256, 512, 1024), kernel_sizes: Sequence[int] = (31, 29, 27, 13),
                 small_kernel: int | None = 5, dw_ratio: float = 1.0, ffn_ratio: float = 4.0, conv: str = "replk",
                 conv_kwargs: dict[str, Any] | None = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_chans, "in_chans")
        if not len(depths) == len(dims) == len(kernel_sizes):
            raise ValueError(f"depths, dims and kernel_sizes must have the same length, got {tuple(depths)}, "
                             f"{tuple(dims)} and {tuple(kernel_sizes)}")
        conv_kwargs = dict(conv_kwargs or {})
        if conv == "replk":
            conv_kwargs.setdefault("small_kernel", small_kernel)
        width = dims[0]
        self.stem = nn.Sequential(_conv_bn(in_chans, width, 3, stride=2, relu=True),
                                  _conv_bn(width, width, 3, groups=width, relu=True),
                                  _conv_bn(width, width, 1, relu=True),
                                  _conv_bn(width, width, 3, stride=2, groups=width, relu=True))
        rates = _linear_rates(drop_path_rate, sum(depths))
        stages, prev, start = [], width, 0
        for i, (depth, chs, kernel) in enumerate(zip(depths, dims, kernel_sizes)):
            # The official transition between stages opens the next one here.
            downsample = (nn.Sequential(_conv_bn(prev, chs, 1, relu=True),
                                        _conv_bn(chs, chs, 3, stride=2, groups=chs, relu=True))
                          if i > 0 else nn.Identity())
            blocks = []
            for rate in rates[start:start + depth]:
                blocks.append(RepLKBlock(chs, int(chs * dw_ratio), kernel, conv=conv, conv_kwargs=conv_kwargs,
                                         drop_path=rate))
                blocks.append(ConvFFN(chs, int(chs * ffn_ratio), drop_path=rate))
            stages.append(Stage(downsample, blocks))
            prev, start = chs, start + depth
        self.stages = nn.Sequential(*stages)
        self._build_head(dims, num_classes, drop_rate, norm_map=True)


def _create_replknet(variant: dict[str, Any], **kwargs) -> RepLKNet:
    return RepLKNet(**{**variant, **kwargs})


default_cfgs = {name: model_cfg((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, crop_pct=0.875,
                                pool_size=(7, 7), first_conv="stem.0.conv")
                for name in __all__ if name.startswith("replknet_")}


@register_model
def replknet_31b(**kwargs) -> RepLKNet:
    return _create_replknet(dict(depths=(2, 2, 18, 2), dims=(128, 256, 512, 1024), kernel_sizes=(31, 29, 27, 13),
                                 small_kernel=5), **kwargs)


@register_model
def replknet_31l(**kwargs) -> RepLKNet:
    return _create_replknet(dict(depths=(2, 2, 18, 2), dims=(192, 384, 768, 1536), kernel_sizes=(31, 29, 27, 13),
                                 small_kernel=5), **kwargs)


@register_model
def replknet_xl(**kwargs) -> RepLKNet:
    return _create_replknet(dict(depths=(2, 2, 18, 2), dims=(256, 512, 1024, 2048), kernel_sizes=(27, 27, 27, 13),
                                 small_kernel=None, dw_ratio=1.5), **kwargs)
