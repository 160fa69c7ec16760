"""Load checkpoints written by the official repositories into largekernel's models.

- RepLKNet (DingXiaoH/RepLKNet-pytorch) into ``replknet_*``: the block modules
  keep the official names, only the transitions move (``transitions.i`` ->
  ``stages.{i+1}.downsample``). Training-time checkpoints (``large_kernel.lkb_origin``,
  ``large_kernel.small_conv``) load into ``conv="replk"``; re-parameterised ones
  (``large_kernel.lkb_reparam``, written after ``structural_reparam()``) load into
  the baked model, and the loader bakes those layers first.
- ConvNeXt (facebookresearch/ConvNeXt) and ConvNeXt-dcls (K-H-Ismail/ConvNeXt-dcls,
  Khalfaoui-Hassani et al. 2023) into ``convnext_*`` / ``convnext_*_dcls``:
  ``downsample_layers``, ``stages.i.j.dwconv``, ``pwconv1``/``pwconv2`` become
  ``stem`` / ``stages.i.downsample``, ``stages.i.blocks.j.conv_dw``, ``fc1``/``fc2``.
  ConvNeXt-dcls stores each stage's shared positions ``P`` (2, C, 1, count) in every
  block. It builds kernels with the dcls package's ``version="v0"`` (its checkpoints
  predate the package's later versions): bilinear interpolation, which
  ``interpolation="bilinear"`` reproduces for positions in the box (where the
  official training clamps them), but with the position rows in (row, column)
  order where our layers (and the package's ``v1``) take (column, row): the loader
  swaps them.

``checkpoint`` is a file written by ``torch.save`` (read with ``weights_only=True``),
a state_dict, or a dict holding one under ``"model"`` or ``"state_dict"``; a
``module.`` prefix (DistributedDataParallel) is dropped.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch
from torch import Tensor, nn

__all__ = ["convert_replknet_state_dict", "convert_convnext_state_dict", "load_replknet_checkpoint",
           "load_convnext_checkpoint"]

_REPLKNET_RULES = [
    (re.compile(r"^transitions\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (re.compile(r"\.large_kernel\.lkb_reparam\."), lambda m: ".large_kernel."),
]
_CONVNEXT_RULES = [
    (re.compile(r"^downsample_layers\.0\."), lambda m: "stem."),
    (re.compile(r"^downsample_layers\.(\d+)\."), lambda m: f"stages.{m.group(1)}.downsample."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), lambda m: f"stages.{m.group(1)}.blocks.{m.group(2)}."),
    (re.compile(r"\.dwconv\."), lambda m: ".conv_dw."),
    (re.compile(r"\.pwconv1\."), lambda m: ".fc1."),
    (re.compile(r"\.pwconv2\."), lambda m: ".fc2."),
]


def _state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path, a state_dict or a dict holding one, "
                        f"got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: not a state_dict")
        state[key.removeprefix("module.")] = value
    return state


def _rename(state: Mapping[str, Tensor], rules) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def convert_replknet_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """An official RepLKNet checkpoint's state_dict, keys renamed to ``largekernel.models.replknet.RepLKNet``'s."""
    return _rename(_state_dict(checkpoint), _REPLKNET_RULES)


def convert_convnext_state_dict(checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """An official ConvNeXt / ConvNeXt-dcls checkpoint's state_dict, keys renamed to
    ``largekernel.models.convnext.ConvNeXt``'s."""
    state = _rename(_state_dict(checkpoint), _CONVNEXT_RULES)
    # dcls v0 positions: P[0] along rows, P[1] along columns; ours: P[i] along learned dim M - 1 - i.
    return {k: v.flip(0) if k.endswith(".conv_dw.P") else v for k, v in state.items()}


def _load(model: nn.Module, state: dict[str, Tensor], strict: bool) -> nn.Module:
    # A tensor the model shares (DCLS positions of a stage) appears under several keys: they must agree.
    shared: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        shared.setdefault(id(tensor), []).append(key)
    for keys in shared.values():
        present = [k for k in keys if k in state]
        if any(not torch.equal(state[present[0]], state[k]) for k in present[1:]):
            raise ValueError(f"{present} are one shared tensor in this model but differ in the checkpoint")
    model.load_state_dict(state, strict=strict)
    return model


def load_replknet_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                             strict: bool = True) -> nn.Module:
    """Load an official RepLKNet checkpoint into ``model`` (a ``replknet_*``), in place; returns ``model``.

    Large kernels the checkpoint holds merged (``lkb_reparam``) are baked in ``model``
    first (one ``largekernel.nn.Conv2d`` each, with the layer's backend).
    """
    state = convert_replknet_state_dict(checkpoint)
    own = model.state_dict()
    for name, module in list(model.named_modules()):
        if f"{name}.weight" in state and f"{name}.weight" not in own and callable(getattr(module, "bake", None)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.bake().train(module.training))
    return _load(model, state, strict)


def load_convnext_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                             strict: bool = True) -> nn.Module:
    """Load an official ConvNeXt or ConvNeXt-dcls checkpoint into ``model`` (a ``convnext_*``), in place;
    returns ``model``."""
    return _load(model, convert_convnext_state_dict(checkpoint), strict)
