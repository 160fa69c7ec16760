"""Vision Transformer (Dosovitskiy et al., ICLR 2021) and the Fourier image transformer FiT (seed 003, section 2.2).

FiT is the same network with the self-attention sublayer replaced by FNet's
parameter-free Fourier mixing (:class:`largekernel.nn.FourierMix`, Lee-Thorp et
al. 2022): ``O(N log N)`` in the number of tokens instead of ``O(N^2)``. Both use
pre-norm blocks, a patch-embedding convolution, learned positional embeddings
sized for ``img_size`` and interpolated (bicubic) for other input sizes, and a
class token (``global_pool="token"``) or mean pooling (``"avg"``).

FiT defaults to mean pooling: its token FFT then runs over ``h * w`` tokens
(64, 256, 1024, 3136 at 32-224 px with 4-px patches), FFT-friendly lengths; a
class token makes them ``h * w + 1`` (257 and 3137 are prime), where the
transform is several times slower. ``global_pool="token"`` restores the class token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional._fx import call_under_fx
from largekernel.models._registry import CIFAR10_MEAN, CIFAR10_STD, model_cfg, register_model
from largekernel.models.layers import DropPath, GradCheckpointing, like_parameters
from largekernel.nn.mixing import FourierMix

__all__ = ["VisionTransformer", "vit_tiny", "vit_small", "fit_tiny", "fit_small"]

_MIXERS = ("attention", "fourier")
_POOLS = ("token", "avg")


class Attention(nn.Module):
    """Multi-head self-attention by ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads, got num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d/h)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                           dropout_p=self.attn_drop if self.training else 0.0)  # (B, h, N, d/h)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Mlp(nn.Sequential):
    """The feed-forward sublayer: Linear, GELU, Linear (dropout after each)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))


# The two steps that read the input's size are each one call under torch.fx symbolic tracing (call_under_fx), as
# torch's own functions are: the traced graph checks its input and resamples the position embeddings for the size
# it is given when it runs, as the model does.
@call_under_fx
def _checked_input(x: Tensor, in_chans: int, patch_size: int) -> Tensor:
    """``x``, refused unless it is ``(B, in_chans, H, W)`` with ``H`` and ``W`` multiples of ``patch_size``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
    if any(s % patch_size or s < patch_size for s in x.shape[-2:]):
        raise ValueError(f"input height and width must be multiples of patch_size={patch_size}, "
                         f"got {tuple(x.shape[-2:])}")
    return x


@call_under_fx
def _patch_tokens(x: Tensor, pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """The patch embeddings ``x`` ``(B, D, h, w)`` as tokens ``(B, h * w, D)`` plus the position embeddings
    ``pos_embed`` ``(1, gh * gw, D)``, made for ``grid`` ``(gh, gw)``, resampled (bicubic) to ``(h, w)``."""
    size = tuple(x.shape[-2:])
    if size != tuple(grid):
        pos = pos_embed.reshape(1, *grid, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
        pos = F.interpolate(pos, size=size, mode="bicubic", align_corners=False)  # (1, D, h, w)
        pos_embed = pos.flatten(2).transpose(1, 2)  # (1, h * w, D)
    return x.flatten(2).transpose(1, 2) + pos_embed


class Block(nn.Module):
    """Pre-norm transformer block; ``mixer`` is self-attention (ViT) or Fourier mixing (FiT)."""

    def __init__(self, dim: int, num_heads: int, mixer: str, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = Attention(dim, num_heads, attn_drop=attn_drop) if mixer == "attention" else FourierMix()
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(GradCheckpointing, nn.Module):
    """ViT / FiT classifier.

    Args:
        num_classes: classifier outputs (0: no head, ``forward`` returns pooled features).
        in_chans: input channels.
        img_size: the size the positional embeddings are made for (int or (H, W));
            other sizes (multiples of ``patch_size``) interpolate them.
        patch_size: patch (and patch-embedding stride) size.
        embed_dim, depth, num_heads, mlp_ratio: transformer sizes (``num_heads`` unused by FiT).
        mixer: ``"attention"`` (ViT) or ``"fourier"`` (FiT).
        global_pool: ``"token"`` (class token) or ``"avg"`` (mean of patch tokens, no class token).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth (linear in depth).

    Shape:
        - Input: ``(B, in_chans, H, W)`` with ``H`` and ``W`` multiples of ``patch_size``.
        - Output: ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, img_size: int | tuple[int, int] = 32,
                 patch_size: int = 4, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
                 mlp_ratio: float = 4.0, mixer: str = "attention", global_pool: str = "token",
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if mixer not in _MIXERS:
            raise ValueError(f"mixer must be one of {_MIXERS}, got {mixer!r}")
        if global_pool not in _POOLS:
            raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if len(img_size) != 2 or any(s % patch_size or s < patch_size for s in img_size):
            raise ValueError(f"img_size must be multiples of patch_size={patch_size}, got {img_size!r}")
        self.num_classes, self.in_chans, self.patch_size = num_classes, in_chans, patch_size
        self.img_size, self.mixer, self.global_pool = img_size, mixer, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if global_pool == "token" else None
        # Positional embeddings of the patch tokens only, so that they can be resized as an image.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also where built on "meta"
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mixer, mlp_ratio, drop_rate, attn_drop_rate, r)
                                      for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def get_classifier(self) -> nn.Module:
        """The classifier layer (timm's ``get_classifier``)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            raise ValueError(f"global_pool is fixed at construction ({self.global_pool!r}), got {global_pool!r}")
        self.num_classes = num_classes
        self.head = like_parameters(self, nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity())

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the final norm: ``(B, [1 +] h * w, D)``."""
        x = self.patch_embed(_checked_input(x, self.in_chans, self.patch_size))  # (B, D, h, w)
        x = _patch_tokens(x, self.pos_embed, self.grid)  # (B, h * w, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + h * w, D)
        x = self._blocks(self.blocks, self.pos_drop(x))
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _create_vit(variant: dict[str, Any], **kwargs) -> VisionTransformer:
    return VisionTransformer(**{**variant, **kwargs})


# img_size=32, patch_size=4 by default: CIFAR-10 images.
default_cfgs = {name: model_cfg((3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=1000,
                                first_conv="patch_embed")
                for name in ("vit_tiny", "vit_small", "fit_tiny", "fit_small")}


@register_model
def vit_tiny(**kwargs) -> VisionTransformer:
    """ViT-Ti: 192 wide, 12 blocks, 3 heads."""
    return _create_vit(dict(embed_dim=192, depth=12, num_heads=3, mixer="attention"), **kwargs)


@register_model
def vit_small(**kwargs) -> VisionTransformer:
    """ViT-S: 384 wide, 12 blocks, 6 heads."""
    return _create_vit(dict(embed_dim=384, depth=12, num_heads=6, mixer="attention"), **kwargs)


@register_model
def fit_tiny(**kwargs) -> VisionTransformer:
    """FiT-Ti: ViT-Ti with Fourier token mixing instead of self-attention (mean pooling, see module doc)."""
    return _create_vit(dict(embed_dim=192, depth=12, num_heads=3, mixer="fourier", global_pool="avg"), **kwargs)


@register_model
def fit_small(**kwargs) -> VisionTransformer:
    """FiT-S: ViT-S with Fourier token mixing instead of self-attention (mean pooling, see module doc)."""
    return _create_vit(dict(embed_dim=384, depth=12, num_heads=6, mixer="fourier", global_pool="avg"), **kwargs)
