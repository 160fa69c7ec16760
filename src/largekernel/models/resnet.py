"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition") with a choice of spatial convolution.

CIFAR-style ``resnet20/44/56`` (three stages of 16/32/64 channels, 3x3 stem) and
ImageNet-style ``resnet18/50`` (7x7 stride-2 stem and max-pool, or the 3x3
``stem="small"`` for 32x32 and smaller inputs). Every 3x3 convolution of the
residual blocks comes from the layer factory (``conv=``), as in the DCLS
paper's ResNet experiments; stems, 1x1 convolutions and shortcuts stay dense.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from largekernel.models._registry import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    model_cfg,
    register_model,
)
from largekernel.models.layers import Backbone, Classifier, _check_positive, create_conv
from largekernel.functional._fx import traced

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet20", "resnet44", "resnet56", "resnet18", "resnet50"]


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """Two spatial convolutions with BatchNorm and a residual connection.

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, out_chs, ceil(H / stride), ceil(W / stride)) for odd ``kernel_size``
    """

    expansion = 1

    def __init__(self, in_chs: int, chs: int, stride: int = 1, *, conv: str = "conv", kernel_size: int = 3,
                 conv_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        conv_kwargs = conv_kwargs or {}
        self.conv1 = create_conv(conv, in_chs, chs, kernel_size, dim=2, stride=stride, bias=False, **conv_kwargs)
        self.bn1 = nn.BatchNorm2d(chs)
        self.conv2 = create_conv(conv, chs, chs, kernel_size, dim=2, bias=False, **conv_kwargs)
        self.bn2 = nn.BatchNorm2d(chs)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_chs, chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))  # (B, chs, H / stride, W / stride)
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, spatial convolution (carrying the stride), 1x1 expand by 4, residual connection.

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, 4 chs, ceil(H / stride), ceil(W / stride)) for odd ``kernel_size``
    """

    expansion = 4

    def __init__(self, in_chs: int, chs: int, stride: int = 1, *, conv: str = "conv", kernel_size: int = 3,
                 conv_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        out_chs = chs * self.expansion
        self.conv1 = nn.Conv2d(in_chs, chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.conv2 = create_conv(conv, chs, chs, kernel_size, dim=2, stride=stride, bias=False,
                                 **(conv_kwargs or {}))
        self.bn2 = nn.BatchNorm2d(chs)
        self.conv3 = nn.Conv2d(chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_chs, out_chs, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))  # (B, chs, H, W)
        y = self.act(self.bn2(self.conv2(y)))  # (B, chs, H / stride, W / stride)
        y = self.bn3(self.conv3(y))  # (B, 4 chs, H / stride, W / stride)
        return self.act(y + self.shortcut(x))


class ResNet(Backbone, Classifier):
    """Stem, stages of residual blocks (the first block of each stage after the first has stride 2), pool, head.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage; widths: base channels per stage.
        stem: ``"imagenet"`` (7x7 stride 2 + 3x3 max-pool, total stride 4) or ``"small"`` (3x3 stride 1).
        conv, kernel_size, conv_kwargs: the family, extent and options of the blocks' spatial convolutions.
        drop_rate: dropout before the head.

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, block: str = "basic",
                 layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 stem: str = "imagenet", stem_width: int | None = None, conv: str = "conv", kernel_size: int = 3,
                 conv_kwargs: dict[str, Any] | None = None, drop_rate: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_chans, "in_chans")
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise ValueError(f"block must be one of {tuple(blocks)}, got {block!r}")
        if len(layers) != len(widths):
            raise ValueError(f"layers and widths must have the same length, got {tuple(layers)} and {tuple(widths)}")
        block_cls = blocks[block]
        stem_width = stem_width or widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        elif stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        stages = []
        chs = stem_width
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stage = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(block_cls(chs, width, stride, conv=conv, kernel_size=kernel_size,
                                       conv_kwargs=conv_kwargs))
                chs = width * block_cls.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        # timm's backbone metadata: the stem's activation, then one feature map per stage (the ImageNet stem
        # strides 2 and max-pools 2 more; every stage after the first strides 2). See largekernel.models.features.
        first = 4 if stem == "imagenet" else 1
        self.feature_info = [dict(num_chs=stem_width, reduction=first // 2 or 1, module="stem.2")]
        self.feature_info += [dict(num_chs=width * block_cls.expansion, reduction=first * 2 ** i, module=f"stages.{i}")
                              for i, width in enumerate(widths)]
        self.num_classes = num_classes
        self.num_features = chs
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def _check_input(self, x: Tensor) -> None:
        if not traced(x) and x.dim() != 4:
            raise ValueError(f"ResNet expects (B, C, H, W) input, got shape {tuple(x.shape)}")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))  # (B, num_features)
        return x if pre_logits else self.head(x)  # (B, num_classes)


default_cfgs = {
    **{name: model_cfg((3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
       for name in ("resnet20", "resnet44", "resnet56")},
    **{name: model_cfg((3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, crop_pct=0.875,
                       pool_size=(7, 7)) for name in ("resnet18", "resnet50")},
}


def _create_resnet(variant: dict[str, Any], **kwargs) -> ResNet:
    return ResNet(**{**variant, **kwargs})


def _cifar(depth: int) -> dict[str, Any]:
    # CIFAR ResNets have 6n + 2 layers: three stages of n basic blocks.
    n = (depth - 2) // 6
    return dict(num_classes=10, block="basic", layers=(n, n, n), widths=(16, 32, 64), stem="small")


@register_model
def resnet20(**kwargs) -> ResNet:
    """CIFAR ResNet-20 (0.27M parameters), 32x32 inputs."""
    return _create_resnet(_cifar(20), **kwargs)


@register_model
def resnet44(**kwargs) -> ResNet:
    return _create_resnet(_cifar(44), **kwargs)


@register_model
def resnet56(**kwargs) -> ResNet:
    return _create_resnet(_cifar(56), **kwargs)


@register_model
def resnet18(**kwargs) -> ResNet:
    return _create_resnet(dict(block="basic", layers=(2, 2, 2, 2)), **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return _create_resnet(dict(block="bottleneck", layers=(3, 4, 6, 3)), **kwargs)
