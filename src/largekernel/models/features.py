"""Backbones for detection and segmentation: a model's feature maps, in timm's ``features_only`` convention.

A model that can serve as a backbone declares ``feature_info``, timm's list of
dicts (``num_chs``, ``reduction``, ``module``), one per feature map it offers,
in forward order, and computes its features by running its top-level children
in order (``stem``, then ``stages``, ...), each ``nn.Sequential`` child
stage by stage. :class:`FeatureListNet` keeps the children up to the last map
asked for, under their original names (a classifier's state dict loads into
it with ``strict=False``), and returns the maps at ``out_indices``: what
``timm.create_model(name, features_only=True, out_indices=...)`` returns.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["FeatureListNet"]


class FeatureListNet(nn.Module):
    """The feature maps of ``model`` listed by ``model.feature_info`` at ``out_indices``.

    Args:
        model: a model with ``feature_info`` (see the module docstring); its modules are reused, not copied.
        out_indices: positions in ``model.feature_info`` (negative counts from the end); default all.

    Attributes:
        feature_info: the entries of ``model.feature_info`` at ``out_indices``, in that order.

    Shape:
        - Input: what ``model`` takes, (B, C, *spatial)
        - Output: a list with one (B, num_chs, *spatial / reduction) tensor per index
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(f"{type(model).__name__} declares no feature_info, so it offers no feature maps")
        count = len(info)
        if out_indices is None:
            out_indices = tuple(range(count))
        if isinstance(out_indices, int) or not all(isinstance(i, int) and -count <= i < count for i in out_indices):
            raise ValueError(f"out_indices must be a sequence of ints in [-{count}, {count}) for "
                             f"{type(model).__name__}'s {count} feature maps, got {out_indices!r}")
        self.out_indices = tuple(i % count for i in out_indices)
        self.feature_info = [dict(info[i]) for i in self.out_indices]
        self._wanted = {info[i]["module"]: i for i in self.out_indices}
        remaining = set(self._wanted)
        for name, child in model.named_children():
            if not remaining:
                break
            if isinstance(child, nn.Sequential):
                keep = []
                for sub, module in child.named_children():
                    if not remaining:
                        break
                    keep.append(module)
                    remaining.discard(f"{name}.{sub}")
                child = nn.Sequential(*keep)
            remaining.discard(name)
            self.add_module(name, child)
        if remaining:
            raise ValueError(f"feature_info of {type(model).__name__} names modules that are not top-level children "
                             f"or their direct Sequential entries: {sorted(remaining)}")

    def channels(self) -> list[int]:
        """Channels of each returned map (timm's ``feature_info.channels()``)."""
        return [f["num_chs"] for f in self.feature_info]

    def reduction(self) -> list[int]:
        """Total stride of each returned map relative to the input (timm's ``feature_info.reduction()``)."""
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        found: dict[int, Tensor] = {}
        for name, child in self.named_children():
            if isinstance(child, nn.Sequential):
                for sub, module in child.named_children():
                    x = module(x)
                    if f"{name}.{sub}" in self._wanted:
                        found[self._wanted[f"{name}.{sub}"]] = x
            else:
                x = child(x)
            if name in self._wanted:
                found[self._wanted[name]] = x
        return [found[i] for i in self.out_indices]
