"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + ``state.json`` (+ ``state.safetensors``).

``state.json`` holds the resumable training state (step, epoch, optimizer
hyper-parameters and state, EMA, RNG states, history); every tensor inside it
is stored bit-exactly in ``state.safetensors`` and referenced from the JSON by
key. A checkpoint is written into a temporary directory and then renamed into
place; the previous version is kept as ``<name>.old`` until the new one is in
place, so a crash at any moment leaves a complete checkpoint that
:func:`resolve_checkpoint` finds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from largekernel.data import DatasetInfo, dataset_info
from largekernel.train.config import TrainConfig, config_from_dict, config_to_dict

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "resolve_checkpoint", "create_run_model"]

_MODEL_FILE, _CONFIG_FILE, _STATE_FILE, _TENSORS_FILE = "model.safetensors", "config.json", "state.json", "state.safetensors"


def create_run_model(cfg: TrainConfig, info: DatasetInfo | None = None) -> nn.Module:
    """``create_model(cfg.model, num_classes=, in_chans=, **cfg.model_kwargs)`` for the run's dataset."""
    from largekernel.models import create_model

    info = info or dataset_info(cfg.dataset, cfg.data_dir, **cfg.dataset_kwargs)
    return create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, **cfg.model_kwargs)


def _encode(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """JSON-ready copy of ``obj`` with each tensor moved into ``tensors`` and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        # Optimizer state is keyed by int parameter ids: keep the key types.
        return {"__items__": [[k, _encode(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint state (at {prefix!r})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: TrainConfig, info: DatasetInfo,
                    state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint directory ``path`` atomically and return it.

    ``model`` is the plain module (not a DDP wrapper); ``state`` is any nested
    dict of tensors and JSON values (optimizer state dict, RNG states, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates it private; a checkpoint is an ordinary output directory
    try:
        # clone(): safetensors refuses tensors sharing storage (tied weights). Non-tensor entries
        # (modules' get_extra_state(), e.g. a FlexConv grid size) go to state.json.
        model_state = model.state_dict()
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()
                   if isinstance(v, torch.Tensor)}
        save_file(weights, str(tmp / _MODEL_FILE))
        state = {**(state or {}), "model_extra_state": {k: v for k, v in model_state.items() if k not in weights}}
        from largekernel import __version__

        _write_json(tmp / _CONFIG_FILE, {
            "train_config": config_to_dict(cfg),
            "model": {"name": cfg.model, "kwargs": {"num_classes": info.num_classes, "in_chans": info.in_chans,
                                                    **cfg.model_kwargs}},
            "dataset_info": {"num_classes": info.num_classes, "in_chans": info.in_chans,
                             "input_size": list(info.input_size), "dims": info.dims},
            "largekernel_version": __version__,
        })
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(state, tensors, "state")
        save_file(tensors, str(tmp / _TENSORS_FILE))
        _write_json(tmp / _STATE_FILE, encoded)
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``: itself, ``path/checkpoints/last`` for a run directory,
    or the ``.old`` copy left by a write interrupted between its two renames."""
    path = Path(path)
    for candidate in (path, path / "checkpoints" / "last"):
        if (candidate / _MODEL_FILE).is_file() and (candidate / _CONFIG_FILE).is_file():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if not candidate.exists() and (old / _MODEL_FILE).is_file() and (old / _CONFIG_FILE).is_file():
            return old
    raise FileNotFoundError(f"{path}: no checkpoint found; expected a directory with {_MODEL_FILE} and "
                            f"{_CONFIG_FILE}, or a run directory with checkpoints/last")


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    ema: bool = False) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run directory) and return ``(model, cfg, state)``.

    ``state`` is the saved training state (``step``, ``epoch``, ``history``,
    ``optimizer``, ``ema``, ``rng``, ...) with tensors on the CPU. With
    ``ema=True`` the model gets the EMA weights (``ValueError`` when the run had
    no EMA). The model is returned in eval mode on ``device``.
    """
    weights, cfg, info, state = read_checkpoint(path)
    if ema:
        if not state.get("ema"):
            raise ValueError(f"ema=True but the checkpoint {path} has no EMA weights (ema_decay was None)")
        weights = state["ema"]
    model = create_run_model(cfg, info)
    model.load_state_dict(weights)
    return model.to(device).eval(), cfg, state


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], TrainConfig, DatasetInfo, dict[str, Any]]:
    """The raw contents of a checkpoint: ``(model state_dict, cfg, dataset info, training state)``, on the CPU.

    The state_dict holds the tensors of ``model.safetensors`` and the modules' non-tensor extra state.
    """
    ckpt = resolve_checkpoint(path)
    with open(ckpt / _CONFIG_FILE) as f:
        meta = json.load(f)
    cfg = config_from_dict(meta["train_config"])
    i = meta["dataset_info"]
    info = DatasetInfo(i["num_classes"], i["in_chans"], tuple(i["input_size"]), i["dims"])
    state: dict[str, Any] = {}
    if (ckpt / _STATE_FILE).is_file():
        with open(ckpt / _STATE_FILE) as f:
            state = _decode(json.load(f), load_file(str(ckpt / _TENSORS_FILE)))
    weights: dict[str, Any] = {**load_file(str(ckpt / _MODEL_FILE)), **state.pop("model_extra_state", {})}
    return weights, cfg, info, state
