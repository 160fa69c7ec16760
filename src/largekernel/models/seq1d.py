"""Small depthwise-separable residual classifiers for 1-D sequences and small images (DWNet).

The test bed of the seed papers' comparisons at CPU scale: each block is a
depthwise *spatial* convolution chosen by ``conv=`` (dense, FFT, dilated, DCLS,
FlexConv, CKConv, NIFF, SGConv, S4D — the only place the families differ), a
norm and a pointwise MLP, in a residual branch, as in ConvNeXt (Liu et al.
2022) and the DCLS / FlexConv ablations. ``dwnet1d_*`` take (B, C, L) input
(MNIST-1D is (B, 1, 40)); ``dwnet2d_*`` take (B, C, H, W) (8x8 digits, 32x32).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from largekernel.models._registry import STANDARDIZED, model_cfg, register_model
from largekernel.models.layers import (
    Classifier,
    GradCheckpointing,
    DropPath,
    _check_positive,
    _linear_rates,
    create_conv,
    create_norm,
    same_padding,
)
from largekernel.functional._fx import traced

__all__ = ["DWNet", "DWBlock", "dwnet1d_tiny", "dwnet1d_small", "dwnet2d_tiny", "dwnet2d_small"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class DWBlock(nn.Module):
    """``x + drop_path(pw2(act(pw1(norm(dwconv(x))))))`` with a depthwise spatial conv of family ``conv``.

    Shape:
        - Input: (B, C, *spatial) with ``len(spatial) == dim``
        - Output: (B, C, *spatial)
    """

    def __init__(self, channels: int, *, dim: int, conv: str = "conv", kernel_size: int = 9,
                 conv_kwargs: dict[str, Any] | None = None, norm: str = "batch", mlp_ratio: float = 2.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.dwconv = create_conv(conv, channels, channels, kernel_size, dim=dim, groups=channels,
                                  **(conv_kwargs or {}))
        self.norm = create_norm(norm, channels, dim)
        self.pw1 = _CONV[dim](channels, hidden, 1)
        self.act = nn.GELU()
        self.pw2 = _CONV[dim](hidden, channels, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))  # (B, C, *spatial)
        return x + self.drop_path(y)


class DWNet(GradCheckpointing, Classifier):
    """Stem, ``depth`` :class:`DWBlock` s of ``width`` channels, global average pool, LayerNorm, linear head.

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns pooled features).
        in_chans: input channels.
        dim: 1 for (B, C, L) sequences, 2 for (B, C, H, W) images.
        width, depth: channels and number of residual blocks.
        conv: family of the depthwise spatial convolution (see ``largekernel.models.layers.CONV_TYPES``).
        kernel_size: extent of that convolution (its ``dilated_kernel_size`` for DCLS).
        conv_kwargs: extra options for that layer (e.g. ``{"kernel_count": 8}`` for DCLS).
        norm: ``"batch"`` or ``"layer"`` after each depthwise convolution.
        mlp_ratio: hidden width of the pointwise MLP relative to ``width``.
        stem_kernel_size, stem_stride: the dense stem convolution (stride 2 halves a 32x32 input).
        drop_rate: dropout before the head; drop_path_rate: stochastic depth, linearly increasing per block.

    Shape:
        - Input: (B, in_chans, *spatial), ``len(spatial) == dim``
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, *, dim: int = 1, width: int = 32,
                 depth: int = 2, conv: str = "conv", kernel_size: int = 9,
                 conv_kwargs: dict[str, Any] | None = None, norm: str = "batch", mlp_ratio: float = 2.0,
                 stem_kernel_size: int = 3, stem_stride: int = 1, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        for value, name in ((in_chans, "in_chans"), (width, "width"), (depth, "depth"),
                            (stem_kernel_size, "stem_kernel_size"), (stem_stride, "stem_stride")):
            _check_positive(value, name)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        self.dim = dim
        self.num_classes = num_classes
        self.num_features = width
        self.stem = nn.Sequential(
            _CONV[dim](in_chans, width, stem_kernel_size, stride=stem_stride,
                       padding=same_padding(stem_kernel_size, dim=dim, stride=stem_stride)),
            create_norm(norm, width, dim),
        )
        rates = _linear_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(
            DWBlock(width, dim=dim, conv=conv, kernel_size=kernel_size, conv_kwargs=conv_kwargs, norm=norm,
                    mlp_ratio=mlp_ratio, drop_path=rate) for rate in rates))
        self.norm = nn.LayerNorm(width)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        if not traced(x) and x.dim() != self.dim + 2:
            raise ValueError(f"{type(self).__name__} with dim={self.dim} expects a {self.dim + 2}-D input "
                             f"(B, C, *spatial), got shape {tuple(x.shape)}")
        return self._blocks(self.blocks, self.stem(x))  # (B, width, *spatial')

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x.mean(dim=tuple(range(2, self.dim + 2))))  # (B, width)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)  # (B, num_classes)


default_cfgs = {
    "dwnet1d_tiny": model_cfg((1, 40), **STANDARDIZED, num_classes=10),  # MNIST-1D
    "dwnet1d_small": model_cfg((1, 40), **STANDARDIZED, num_classes=10),
    "dwnet2d_tiny": model_cfg((1, 8, 8), **STANDARDIZED, num_classes=10),  # scikit-learn digits
    "dwnet2d_small": model_cfg((1, 32, 32), **STANDARDIZED, num_classes=10),
}


def _create_dwnet(variant: dict[str, Any], **kwargs) -> DWNet:
    return DWNet(**{**variant, **kwargs})


@register_model
def dwnet1d_tiny(**kwargs) -> DWNet:
    """1-D, width 32, 2 blocks (~10k parameters with a 9-tap kernel): MNIST-1D on a CPU in seconds per epoch."""
    return _create_dwnet(dict(dim=1, width=32, depth=2), **kwargs)


@register_model
def dwnet1d_small(**kwargs) -> DWNet:
    """1-D, width 64, 4 blocks."""
    return _create_dwnet(dict(dim=1, width=64, depth=4), **kwargs)


@register_model
def dwnet2d_tiny(**kwargs) -> DWNet:
    """2-D, width 32, 2 blocks: 8x8 digits, 28x28 MNIST."""
    return _create_dwnet(dict(dim=2, width=32, depth=2, kernel_size=7), **kwargs)


@register_model
def dwnet2d_small(**kwargs) -> DWNet:
    """2-D, width 64, 4 blocks: 32x32 images (``stem_stride=2`` to halve the resolution)."""
    return _create_dwnet(dict(dim=2, width=64, depth=4, kernel_size=7), **kwargs)
