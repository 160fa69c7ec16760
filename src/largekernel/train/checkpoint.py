"""Checkpoint directories that survive crashes, double faults and corrupted files.

A checkpoint is a directory::

    model.safetensors   the model's tensors
    config.json         the TrainConfig, the model name and arguments, the dataset info
    state.json          the resumable training state (step, epoch, optimizer, EMA, RNG states, history) ...
    state.safetensors   ... whose tensors are stored bit-exactly here, referenced from state.json by key
    manifest.json       the step, and the size and sha256 of each file above; written last

Writing (:func:`save_checkpoint`): every file goes into a fresh temporary
directory ``.<name>.tmp-*`` and is fsync'd, the manifest last, then the
directory and its parent are fsync'd. Only then does rotation start: a leftover
``<name>.old`` is moved aside and deleted, ``<name>`` is renamed to
``<name>.old``, the temporary directory is renamed to ``<name>``, and
``<name>.old`` and stale temporary directories are deleted. So at every instant
the newest complete checkpoint is on disk, under one of ``<name>``,
``<name>.old`` or ``.<name>.tmp-*``, whatever crashes when (two crashes in a row
included); a failed write (a full disk) leaves the previous copies untouched.

Reading verifies each file's size and sha256 against the manifest before using
it; any mismatch, missing or unreadable file raises :class:`CheckpointError`
naming the file and what is wrong. :func:`select_checkpoint` picks the newest
verified checkpoint of a ``checkpoints/`` directory among ``last``,
``last.old``, complete temporary directories and ``best`` (what ``--resume``
uses) and says what it skipped and why. Directories written before manifests
existed (no ``manifest.json``, no ``checkpoint_format`` in ``config.json``) are
read unverified, with a warning.

Test hook (for the fault-injection tests): when the environment variable
``LARGEKERNEL_CHECKPOINT_FAULT`` is ``POINT`` or ``POINT@N``, the process exits
at once with status 86, without any cleanup as after ``kill -9``, the N-th time
(default: the first) it reaches ``POINT`` of the save path. Points
(:data:`FAULT_POINTS`): ``write:<file>`` (half of that file written),
``synced`` (the new copy complete and durable), ``trash`` (a copy being deleted,
renamed aside), ``trash_partial`` (one of its files deleted), ``to_old``
(``<name>`` renamed to ``<name>.old``), ``in_place`` (the new copy renamed to
``<name>``), ``old_removed``, ``cleaned`` (stale copies removed). Unset, it costs
one environment lookup per point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from largekernel._files import fsync_dir
from largekernel.data import DatasetInfo, dataset_info
from largekernel.train.config import TrainConfig, config_from_dict, config_to_dict

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "resolve_checkpoint", "select_checkpoint",
           "load_weights", "create_run_model", "CheckpointError", "CheckpointChoice", "FAULT_POINTS"]

_MODEL_FILE, _CONFIG_FILE, _STATE_FILE, _TENSORS_FILE = "model.safetensors", "config.json", "state.json", "state.safetensors"
_MANIFEST = "manifest.json"
_FILES = (_MODEL_FILE, _TENSORS_FILE, _STATE_FILE, _CONFIG_FILE)  # written in this order, then the manifest
_FORMAT = 2  # 1: the directories written before manifests existed
_FAULT_ENV = "LARGEKERNEL_CHECKPOINT_FAULT"
FAULT_POINTS = (*(f"write:{name}" for name in (*_FILES, _MANIFEST)), "synced", "trash", "trash_partial", "to_old",
                "in_place", "old_removed", "cleaned")
_fault_counts: dict[str, int] = {}


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt or does not fit; the message names the file and what is wrong."""


def create_run_model(cfg: TrainConfig, info: DatasetInfo | None = None) -> nn.Module:
    """``create_model(cfg.model, num_classes=, in_chans=, **cfg.model_kwargs)`` for the run's dataset."""
    from largekernel.models import create_model

    info = info or dataset_info(cfg.dataset, cfg.data_dir, **cfg.dataset_kwargs)
    return create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, **cfg.model_kwargs)


# ---------------------------------------------------------------------------------------------
# state encoding: nested dicts of tensors and JSON values <-> (JSON, flat tensor dict)


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


# ---------------------------------------------------------------------------------------------
# writing


def _fault(point: str) -> None:
    """The test hook of the module docstring: exit here when ``LARGEKERNEL_CHECKPOINT_FAULT`` names ``point``."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != point:
        return
    _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if _fault_counts[point] == int(nth or 1):
        os._exit(86)


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to the new file ``path`` (created with the user's umask) durably; return its manifest entry."""
    with open(path, "xb") as f:
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        _fault(f"write:{path.name}")
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode()


def _discard(path: Path, parent: Path) -> None:
    """Delete directory ``path``: first renamed out of the way (atomic), so a crash mid-delete leaves no
    partial checkpoint under a checkpoint's name."""
    trash = parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    fsync_dir(parent)
    _fault("trash")
    for i, file in enumerate(sorted(trash.iterdir())):
        file.unlink()
        if i == 0:
            _fault("trash_partial")
    trash.rmdir()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: TrainConfig, info: DatasetInfo,
                    state: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint directory ``path`` durably, keeping a complete copy on disk at every instant; return it.

    ``model`` is the plain module (not a DDP wrapper); ``state`` is any nested
    dict of tensors and JSON values (optimizer state dict, RNG states, ...);
    its ``step`` is recorded in the manifest. An ``OSError`` while writing (a
    full disk) names the file and leaves the previous checkpoint as it was.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.mkdir(tmp)  # the user's umask applies, as to every other output
    name = tmp
    try:
        # clone(): safetensors refuses tensors sharing storage (tied weights). Non-tensor entries
        # (modules' get_extra_state()) go to state.json.
        model_state = model.state_dict()
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()
                   if isinstance(v, torch.Tensor)}
        state = {**(state or {}), "model_extra_state": {k: v for k, v in model_state.items() if k not in weights}}
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode(state, tensors, "state")
        from largekernel import __version__

        meta = {
            "train_config": config_to_dict(cfg),
            "model": {"name": cfg.model, "kwargs": {"num_classes": info.num_classes, "in_chans": info.in_chans,
                                                    **cfg.model_kwargs}},
            "dataset_info": {"num_classes": info.num_classes, "in_chans": info.in_chans,
                             "input_size": list(info.input_size), "dims": info.dims},
            "largekernel_version": __version__,
            "checkpoint_format": _FORMAT,
        }
        contents = {_MODEL_FILE: save_safetensors(weights), _TENSORS_FILE: save_safetensors(tensors),
                    _STATE_FILE: _json_bytes(encoded), _CONFIG_FILE: _json_bytes(meta)}
        files = {}
        for file in _FILES:
            name = tmp / file
            files[file] = _write_file(name, contents[file])
        name = tmp / _MANIFEST
        _write_file(name, _json_bytes({"format": _FORMAT, "step": state.get("step"), "files": files}))
        name = tmp
        fsync_dir(tmp)
        fsync_dir(parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            kept = f"; {path} is unchanged" if path.exists() else ""
            raise OSError(err.errno, f"could not write checkpoint file {name}: {err.strerror or err}{kept}") from err
        raise
    _fault("synced")
    # From here on the new checkpoint is complete on disk: each step below leaves a complete copy.
    old = path.with_name(path.name + ".old")
    if old.exists():
        _discard(old, parent)
    if path.exists():
        os.rename(path, old)
        fsync_dir(parent)
        _fault("to_old")
    os.rename(tmp, path)
    fsync_dir(parent)
    _fault("in_place")
    if old.exists():
        _discard(old, parent)
        _fault("old_removed")
    for stale in [*parent.glob(f".{path.name}.tmp-*"), *parent.glob(f".{old.name}.trash-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    _fault("cleaned")
    return path


# ---------------------------------------------------------------------------------------------
# verifying and reading


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None


def _manifest(ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's manifest, structurally checked; None for a directory of the format before manifests."""
    path = ckpt / _MANIFEST
    if not path.exists():
        if not ckpt.is_dir():
            raise CheckpointError(f"{ckpt}: not a checkpoint directory")
        config = ckpt / _CONFIG_FILE
        meta = _read_json(config) if config.is_file() else None
        if isinstance(meta, dict) and "train_config" in meta and "checkpoint_format" not in meta:
            return None
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete (a write was interrupted) or damaged")
    manifest = _read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(files, dict) or set(files) != set(_FILES)
            or not all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
                       for e in files.values())):
        raise CheckpointError(f"{path}: expected {{'files': {{name: {{'bytes', 'sha256'}}}}}} for {list(_FILES)}, "
                              f"got {str(manifest)[:200]}")
    return manifest


def _verify(ckpt: Path) -> dict[str, Any] | None:
    """Check every file of ``ckpt`` against its manifest (size, then sha256); return the manifest."""
    manifest = _manifest(ckpt)
    if manifest is None:
        return None
    for name, entry in manifest["files"].items():
        file = ckpt / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {_MANIFEST})")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes, expected {entry['bytes']} (truncated or overwritten)")
        digest = _sha256(file)
        if digest != entry["sha256"]:
            raise CheckpointError(f"{file}: sha256 {digest[:16]}... differs from {entry['sha256'][:16]}... recorded "
                                  f"in {_MANIFEST} (the file is corrupted)")
    return manifest


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None


@dataclass(frozen=True, eq=False)
class CheckpointChoice:
    """A verified checkpoint: its directory and step, what was skipped to pick it and why, and its contents
    (``weights``: the model state_dict; ``state``: the training state, tensors on the CPU)."""

    path: Path
    step: int | None
    weights: dict[str, Any] = field(repr=False)
    cfg: TrainConfig = field(repr=False)
    info: DatasetInfo = field(repr=False)
    state: dict[str, Any] = field(repr=False)
    skipped: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: which checkpoint, and why this one."""
        why = "the newest verified checkpoint"
        if self.skipped:
            why += "; skipped " + "; ".join(self.skipped)
        return f"{self.path} (step {self.step}): {why}"


def _read(ckpt: Path, require: tuple[str, ...] = (), skipped: tuple[str, ...] = ()) -> CheckpointChoice:
    """Verify and decode checkpoint directory ``ckpt``; ``require``: keys its training state must hold."""
    if _verify(ckpt) is None:
        warnings.warn(f"{ckpt}: written without checksums (by an older largekernel), so it is read unverified",
                      stacklevel=3)
    config = ckpt / _CONFIG_FILE
    meta = _read_json(config)
    try:
        cfg = config_from_dict(meta["train_config"])
        i = meta["dataset_info"]
        info = DatasetInfo(int(i["num_classes"]), int(i["in_chans"]), tuple(i["input_size"]), int(i["dims"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config}: not a training configuration ({type(err).__name__}: {err})") from None
    state_file = ckpt / _STATE_FILE
    encoded = _read_json(state_file)
    tensors = _load_tensors(ckpt / _TENSORS_FILE)
    try:
        state = _decode(encoded, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{state_file}: refers to tensors not in {_TENSORS_FILE} ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_file}: expected a JSON object, got {type(state).__name__}")
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"{state_file}: no {', '.join(map(repr, missing))}; expected the training state "
                              "written by largekernel train")
    extra = state.pop("model_extra_state", {})
    step = state.get("step")
    return CheckpointChoice(ckpt, step if isinstance(step, int) else None, {**_load_tensors(ckpt / _MODEL_FILE), **extra},
                            cfg, info, state, skipped)


def _candidates(directory: Path, names: tuple[str, ...]) -> list[tuple[Path, bool]]:
    """``(dir, is_temporary)`` for every copy of each checkpoint name in ``directory``, in preference order."""
    found = []
    for name in names:
        found += [(directory / name, False), (directory / f"{name}.old", False)]
        found += [(p, True) for p in sorted(directory.glob(f".{name}.tmp-*"))]
    return [(p, tmp) for p, tmp in found if p.exists()]


def _step_of(ckpt: Path) -> int | None:
    """The step a candidate claims, for ordering only (verification decides whether it is used)."""
    try:
        step = _read_json(ckpt / _MANIFEST if (ckpt / _MANIFEST).exists() else ckpt / _STATE_FILE).get("step")
    except (CheckpointError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def select_checkpoint(directory: str | os.PathLike, names: tuple[str, ...] = ("last", "best"),
                      require: tuple[str, ...] = ()) -> CheckpointChoice | None:
    """The newest verified checkpoint among ``names`` in ``directory`` (e.g. a run's ``checkpoints/``).

    Candidates are each name, its ``.old`` copy and its complete temporary
    directories, newest step first (``last`` before ``best`` at equal steps; those
    whose step cannot be read before all, as they may be the newest); the first
    whose files verify and decode (and whose state holds ``require``) is
    returned with the reasons the ones tried before were skipped. Returns None when
    there is no candidate at all, or only temporary directories a crash left
    incomplete (no checkpoint was ever completed); raises :class:`CheckpointError`
    listing every candidate and its defect when none can be used.
    """
    directory = Path(directory)
    found = _candidates(directory, names) if directory.is_dir() else []
    steps = [_step_of(ckpt) for ckpt, _ in found]
    order = sorted(range(len(found)), key=lambda i: (steps[i] is not None, -(steps[i] or 0), i))
    skipped, unusable = [], False
    for i in order:
        ckpt, temporary = found[i]
        if temporary and not (ckpt / _MANIFEST).exists():
            continue  # a write that never completed: not a checkpoint, nothing lost
        try:
            return _read(ckpt, require, tuple(skipped))
        except CheckpointError as err:
            skipped.append(str(err))
            unusable = True
    if unusable:
        raise CheckpointError(f"{directory}: no usable checkpoint: " + "; ".join(skipped))
    return None


def resolve_checkpoint(path: str | os.PathLike) -> CheckpointChoice:
    """The checkpoint meant by ``path``: the verified directory itself, or for a run directory the newest verified
    checkpoint of its ``checkpoints/``; when ``path`` itself is gone after an interrupted rotation, its newest
    verified ``.old`` or temporary copy. Raises ``FileNotFoundError`` when there is none, :class:`CheckpointError`
    when ``path`` is a corrupt checkpoint (never a silent substitute for one the caller named)."""
    path = Path(path)
    if any((path / name).exists() for name in (_MANIFEST, *_FILES)):
        return _read(path)
    for directory, names in ((path / "checkpoints", ("last", "best")), (path, ("last", "best")),
                             (path.parent, (path.name,))):
        if directory.is_dir() and not path.is_file():
            choice = select_checkpoint(directory, names)
            if choice is not None:
                if choice.path.name not in ("last", path.name) or choice.skipped:
                    warnings.warn(f"{path}: using {choice.describe()}", stacklevel=3)
                return choice
    raise FileNotFoundError(f"{path}: no checkpoint found; expected a checkpoint directory (with {_MANIFEST}, "
                            f"{_MODEL_FILE}, {_CONFIG_FILE}) or a run directory with checkpoints/last")


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    ema: bool = False) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint (or run directory) and return ``(model, cfg, state)``.

    Every file is verified first (:class:`CheckpointError` names a corrupt one).
    ``state`` is the saved training state (``step``, ``epoch``, ``history``,
    ``optimizer``, ``ema``, ``rng``, ...) with tensors on the CPU. With
    ``ema=True`` the model gets the EMA weights (``ValueError`` when the run had
    no EMA). The model is returned in eval mode on ``device``.
    """
    c = resolve_checkpoint(path)
    weights = c.weights
    if ema:
        if not c.state.get("ema"):
            raise ValueError(f"ema=True but the checkpoint {c.path} has no EMA weights (ema_decay was None)")
        weights = c.state["ema"]
    model = create_run_model(c.cfg, c.info)
    load_weights(model, weights, c.path / (_TENSORS_FILE if ema else _MODEL_FILE))
    return model.to(device).eval(), c.cfg, c.state


def load_weights(model: nn.Module, weights: dict[str, Any], source: Path) -> None:
    """``model.load_state_dict(weights)``; a mismatch raises :class:`CheckpointError` naming ``source``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{source}: does not fit model {type(model).__name__} "
                              f"({' '.join(line.strip() for line in first)[:400]})") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], TrainConfig, DatasetInfo, dict[str, Any]]:
    """The verified contents of a checkpoint: ``(model state_dict, cfg, dataset info, training state)``, on the CPU.

    The state_dict holds the tensors of ``model.safetensors`` and the modules' non-tensor extra state.
    """
    c = resolve_checkpoint(path)
    return c.weights, c.cfg, c.info, c.state
