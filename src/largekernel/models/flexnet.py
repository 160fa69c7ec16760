"""FlexNet and CKResNet image models, and CKCNN / FlexTCN causal sequence models.

FlexNet (Romero, Bruintjes et al., "FlexConv: Continuous Kernel Convolutions with
Differentiable Kernel Sizes", ICLR 2022) is a residual network *without pooling
or striding*: every block is ``conv -> norm -> ReLU -> dropout -> conv -> norm``
plus a shortcut, then ReLU, with continuous-kernel convolutions whose (learned)
extent can reach the whole input. CKResNet is the same network with CKConv
layers (no mask). CKCNN (Romero et al., "CKConv: Continuous Kernel Convolution
for Sequential Data", ICLR 2022) is the 1-D causal version that classifies from
the last time step; with FlexConv layers it is the FlexTCN of the FlexConv paper.

Kernels are sized from the first input by default (``kernel_size=None``: the
whole image, or the whole sequence for causal models); use
:func:`largekernel.nn.flexconv.set_resolution` to evaluate at another resolution.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from largekernel.models._registry import CIFAR10_MEAN, CIFAR10_STD, STANDARDIZED, model_cfg, register_model
from largekernel.models.layers import GradCheckpointing, create_norm, like_parameters
from largekernel.functional._fx import traced
from largekernel.nn.flexconv import CKConv1d, CKConv2d, CKConv3d, FlexConv1d, FlexConv2d, FlexConv3d

__all__ = ["FlexNet", "FlexBlock", "flexnet_tiny", "flexnet_small", "ckresnet_tiny", "ckresnet_small",
           "ckcnn_tiny", "ckcnn_small", "flextcn_tiny", "flextcn_small"]

_LAYERS = {
    "flexconv": {1: FlexConv1d, 2: FlexConv2d, 3: FlexConv3d},
    "ckconv": {1: CKConv1d, 2: CKConv2d, 3: CKConv3d},
}
_POINTWISE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _conv(conv: str, dim: int, cin: int, cout: int, kernel_size, causal: bool, conv_kwargs: dict) -> nn.Module:
    return _LAYERS[conv][dim](cin, cout, kernel_size, causal=causal, **conv_kwargs)


class FlexBlock(nn.Module):
    """FlexNet's residual block: ``relu(norm(conv(drop(relu(norm(conv(x)))))) + shortcut(x))``.

    The shortcut is a 1x1 convolution when the width changes, the identity otherwise.

    Shape:
        - Input: (B, in_channels, *spatial)
        - Output: (B, out_channels, *spatial)
    """

    def __init__(self, in_channels: int, out_channels: int, *, dim: int, conv: str, kernel_size=None,
                 causal: bool = False, conv_kwargs: dict | None = None, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        kw = conv_kwargs or {}
        self.conv1 = _conv(conv, dim, in_channels, out_channels, kernel_size, causal, kw)
        self.norm1 = create_norm(norm, out_channels, dim)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _conv(conv, dim, out_channels, out_channels, kernel_size, causal, kw)
        self.norm2 = create_norm(norm, out_channels, dim)
        self.act = nn.ReLU()
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else _POINTWISE[dim](in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop(self.act(self.norm1(self.conv1(x))))  # (B, out, *spatial)
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))  # (B, out, *spatial)


class FlexNet(GradCheckpointing, nn.Module):
    """Stem continuous conv, ``depth`` :class:`FlexBlock` s of ``width`` channels, pooling, linear head.

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns pooled features).
        in_chans: input channels.
        dim: 1 for (B, C, L) sequences, 2 for images, 3 for volumes.
        width, depth: channels and number of residual blocks.
        conv: ``"flexconv"`` (FlexNet, FlexTCN) or ``"ckconv"`` (CKResNet, CKCNN).
        kernel_size: kernel grid size of every continuous layer (None: sized from the first input).
        causal: (1-D) causal convolutions; the head then reads the last time step.
        conv_kwargs: options of every continuous layer (``kernel_net``, ``kernel_net_kwargs``,
            ``mask_init``, ``backend`` ...).
        norm: ``"batch"`` or ``"layer"``.
        dropout: inside each block; drop_rate: before the head.
        pool: ``"mean"`` (global average) or ``"last"`` (last position; default for causal models).

    Shape:
        - Input: (B, in_chans, *spatial), ``len(spatial) == dim``
        - Output: (B, num_classes)
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, *, dim: int = 2, width: int = 32, depth: int = 4,
                 conv: str = "flexconv", kernel_size=None, causal: bool = False,
                 conv_kwargs: dict[str, Any] | None = None, norm: str = "batch", dropout: float = 0.0,
                 drop_rate: float = 0.0, pool: str | None = None) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
        if conv not in _LAYERS:
            raise ValueError(f"conv must be one of {tuple(_LAYERS)}, got {conv!r}")
        for value, name in ((in_chans, "in_chans"), (width, "width"), (depth, "depth")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        pool = pool or ("last" if causal else "mean")
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {pool!r}")
        self.dim = dim
        self.num_classes = num_classes
        self.num_features = width
        self.pool = pool
        kw = dict(conv_kwargs or {})
        self.stem = nn.Sequential(_conv(conv, dim, in_chans, width, kernel_size, causal, kw),
                                  create_norm(norm, width, dim), nn.ReLU())
        self.blocks = nn.Sequential(*(FlexBlock(width, width, dim=dim, conv=conv, kernel_size=kernel_size,
                                                causal=causal, conv_kwargs=kw, norm=norm, dropout=dropout)
                                      for _ in range(depth)))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        nn.init.kaiming_normal_(head.weight)  # as the reference's output layer
        nn.init.zeros_(head.bias)
        return head

    def no_weight_decay(self) -> set[str]:
        # Mask and window parameters carry optimizer marks (no decay) from their layers.
        return set()

    def get_classifier(self) -> nn.Module:
        """The classifier layer (timm's ``get_classifier``)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way head (0: identity, pooled features out). ``global_pool``, timm's keyword:
        None or ``"avg"`` (the network pools by averaging)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool must be None or 'avg' ({type(self).__name__} pools by averaging), got "
                             f"{global_pool!r}")
        self.num_classes = num_classes
        self.head = like_parameters(self, self._new_head(num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        if not traced(x) and x.dim() != self.dim + 2:
            raise ValueError(f"{type(self).__name__} with dim={self.dim} expects a {self.dim + 2}-D input "
                             f"(B, C, *spatial), got shape {tuple(x.shape)}")
        return self._blocks(self.blocks, self.stem(x))  # (B, width, *spatial)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.pool == "last":
            x = x.flatten(2)[:, :, -1]  # (B, width)
        else:
            x = x.mean(dim=tuple(range(2, self.dim + 2)))  # (B, width)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# 2-D nets: CIFAR-10 images; 1-D causal nets: MNIST-1D sequences.
default_cfgs = {
    **{name: model_cfg((3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
       for name in ("flexnet_tiny", "flexnet_small", "ckresnet_tiny", "ckresnet_small")},
    **{name: model_cfg((1, 40), **STANDARDIZED, num_classes=10)
       for name in ("ckcnn_tiny", "ckcnn_small", "flextcn_tiny", "flextcn_small")},
}


def _create_flexnet(variant: dict[str, Any], **kwargs) -> FlexNet:
    conv_kwargs = {**variant.pop("conv_kwargs", {}), **kwargs.pop("conv_kwargs", {})}
    return FlexNet(**{**variant, **kwargs, "conv_kwargs": conv_kwargs})


_SMALL_NET = {"kernel_net_kwargs": {"hidden_channels": 16}}


@register_model
def flexnet_tiny(**kwargs) -> FlexNet:
    """FlexNet, 2-D, width 16, 2 blocks, 16-unit MAGNets: 8x8 digits on a CPU in seconds per epoch."""
    return _create_flexnet(dict(dim=2, width=16, depth=2, conv="flexconv", conv_kwargs=_SMALL_NET), **kwargs)


@register_model
def flexnet_small(**kwargs) -> FlexNet:
    """FlexNet, 2-D, width 32, 4 blocks, 32-unit MAGNets."""
    return _create_flexnet(dict(dim=2, width=32, depth=4, conv="flexconv"), **kwargs)


@register_model
def ckresnet_tiny(**kwargs) -> FlexNet:
    """CKResNet (FlexNet without masks), 2-D, width 16, 2 blocks, 16-unit SIRENs."""
    return _create_flexnet(dict(dim=2, width=16, depth=2, conv="ckconv", conv_kwargs=_SMALL_NET), **kwargs)


@register_model
def ckresnet_small(**kwargs) -> FlexNet:
    """CKResNet, 2-D, width 32, 4 blocks."""
    return _create_flexnet(dict(dim=2, width=32, depth=4, conv="ckconv"), **kwargs)


@register_model
def ckcnn_tiny(**kwargs) -> FlexNet:
    """CKCNN: causal 1-D CKConv (SIREN) residual net, width 16, 2 blocks; reads the last step (MNIST-1D)."""
    return _create_flexnet(dict(dim=1, in_chans=1, width=16, depth=2, conv="ckconv", causal=True,
                                conv_kwargs=_SMALL_NET), **kwargs)


@register_model
def ckcnn_small(**kwargs) -> FlexNet:
    """CKCNN, width 32, 4 blocks."""
    return _create_flexnet(dict(dim=1, in_chans=1, width=32, depth=4, conv="ckconv", causal=True), **kwargs)


@register_model
def flextcn_tiny(**kwargs) -> FlexNet:
    """FlexTCN: CKCNN with causal FlexConv (MAGNet + mask) layers, width 16, 2 blocks."""
    return _create_flexnet(dict(dim=1, in_chans=1, width=16, depth=2, conv="flexconv", causal=True,
                                conv_kwargs=_SMALL_NET), **kwargs)


@register_model
def flextcn_small(**kwargs) -> FlexNet:
    """FlexTCN, width 32, 4 blocks."""
    return _create_flexnet(dict(dim=1, in_chans=1, width=32, depth=4, conv="flexconv", causal=True), **kwargs)
