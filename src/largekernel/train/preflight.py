"""Checks of a run against this machine, the registries and the file system, before any data or model loads.

:class:`~largekernel.train.TrainConfig` rejects values that are impossible
anywhere; what follows can only be decided here and now: the device exists,
the dataset's files are where ``data_dir`` says, image-only augmentations meet
image data, the output directory can take this run (a directory, writable, not
holding another run unless ``resume`` or ``overwrite`` says what to do with it,
enough free space for its checkpoints), and the model builds from
``model_kwargs``. Each failure is a :class:`~largekernel.train.config.ConfigError`
whose one line names the key, the value and what is expected, raised within
a second or two of the start instead of after the first epoch.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from largekernel.data import DatasetFormatError, DatasetInfo, dataset_info, needs_data_dir
from largekernel.train.checkpoint import create_run_model
from largekernel.train.config import ConfigError, TrainConfig

__all__ = ["resolve_device", "check_data", "check_output", "check_model_name", "build_model", "check_model_input",
           "check_disk_space", "clear_run", "RUN_FILES"]

# What a run writes into its output directory (and what overwrite=True removes).
RUN_FILES = ("metrics.jsonl", "metrics.csv", "checkpoints", "tensorboard")


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The device of this process: ``cfg.device``, with ``"auto"`` / ``"cuda"`` meaning ``cuda:LOCAL_RANK`` under torchrun."""
    expected = "'auto', 'cpu', 'cuda' or 'cuda:N'"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"device: got {cfg.device!r}, expected {expected}") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device: got {cfg.device!r}, expected {expected}")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device: got {cfg.device!r}, expected 'auto' or 'cpu': CUDA is not available here")
            if device.index is None:
                device = torch.device("cuda", local_rank)
            if device.index >= torch.cuda.device_count():
                raise ConfigError(f"device: got {cfg.device!r}, expected a CUDA index below "
                                  f"{torch.cuda.device_count()} (the GPUs of this machine)")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision: got 'fp16' on device {device}, expected 'bf16' or 'fp32' on CPU "
                          "(fp16 needs CUDA's gradient scaling)")
    return device


def check_data(cfg: TrainConfig) -> DatasetInfo:
    """``data_dir`` for file-backed datasets and image-only augmentations on images; return the dataset's info."""
    if needs_data_dir(cfg.dataset):
        if cfg.data_dir is None:
            raise ConfigError(f"data_dir: got None, expected the directory holding dataset {cfg.dataset!r} "
                              "(it is read from files)")
        if not Path(cfg.data_dir).is_dir():
            raise ConfigError(f"data_dir: got {cfg.data_dir!r}, expected an existing directory holding dataset "
                              f"{cfg.dataset!r}")
    try:
        info = dataset_info(cfg.dataset, cfg.data_dir, **cfg.dataset_kwargs)
    except DatasetFormatError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"dataset_kwargs: got {cfg.dataset_kwargs!r}, expected options of dataset "
                          f"{cfg.dataset!r} ({err})") from None
    for key, value in cfg.augment.image_only().items():
        if len(info.input_size) != 2:
            raise ConfigError(f"augment.{key}: got {value!r}, expected it off for the {len(info.input_size)}-D "
                              f"inputs of dataset {cfg.dataset!r} (images only)")
    if cfg.augment.rand_augment_ops and info.in_chans not in (1, 3):
        raise ConfigError(f"augment.rand_augment_ops: got {cfg.augment.rand_augment_ops}, expected 0 for "
                          f"{info.in_chans}-channel inputs (RandAugment takes 1 or 3 channels)")
    return info


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(cfg: TrainConfig) -> None:
    """``output_dir`` is (or can become) a writable directory that holds no other run, unless ``resume`` continues
    it or ``overwrite`` replaces it; its checkpoint and log entries are of the right kind."""
    out = Path(cfg.output_dir)
    where = f"output_dir: got {cfg.output_dir!r}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{where}, which is a file; expected a directory")
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise ConfigError(f"{where}, but {base} is a file; expected a directory path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}, but {base} is not writable; expected a directory this user can write")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries and not (cfg.resume or cfg.overwrite):
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(f"{where}, which is not empty ({shown}); expected a new or empty directory, resume=True "
                          "(--resume) to continue the run there, or overwrite=True (--overwrite) to replace it")
    if cfg.overwrite:
        return
    kinds = {"checkpoints": True, "checkpoints/last": True, "checkpoints/best": True, "metrics.jsonl": False,
             "metrics.csv": False}
    for rel, is_dir in kinds.items():
        entry = out / rel
        if entry.exists() and entry.is_dir() != is_dir:
            raise ConfigError(f"{where}, whose {rel} is a {'file' if is_dir else 'directory'}; expected a "
                              f"{'directory' if is_dir else 'file'} written by largekernel train (or --overwrite)")


def _flat(kwargs: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in kwargs.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        yield f"{prefix}{key}", value


def check_model_name(cfg: TrainConfig) -> None:
    """``cfg.model`` is registered."""
    from largekernel.models import is_model, list_models

    if not is_model(cfg.model):
        raise ConfigError(f"model: got {cfg.model!r}, expected a registered model such as "
                          f"{', '.join(list_models()[:12])}")


def build_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The run's model on the CPU; an argument the model or its layers refuse raises :class:`ConfigError`
    naming the ``model_kwargs`` key when the error names it."""
    check_model_name(cfg)
    try:
        return create_run_model(cfg, info)
    except (TypeError, ValueError, ImportError) as err:
        message = " ".join(str(err).split())
        # the most specific key the layer's message mentions (e.g. conv_kwargs.kernel_count before conv_kwargs)
        for key, value in sorted(_flat(cfg.model_kwargs), key=lambda kv: -kv[0].count(".")):
            if re.search(rf"(?<![\w.]){re.escape(key.rsplit('.', 1)[-1])}(?!\w)", message):
                raise ConfigError(f"model_kwargs.{key}: got {value!r}, expected a value model {cfg.model!r} "
                                  f"accepts ({message})") from None
        raise ConfigError(f"model_kwargs: got {cfg.model_kwargs!r}, expected arguments model {cfg.model!r} "
                          f"accepts ({message})") from None


def check_model_input(cfg: TrainConfig, model: nn.Module, info: DatasetInfo) -> None:
    """The model takes the dataset's samples: one zero sample of their shape through a copy of it (eval mode, no
    gradient, the random state left as it was). A model for other inputs (2-D on a 1-D dataset, an image too small
    for its stem) failed at the first step, with a traceback, after the data loaded."""
    shape = (info.in_chans, *info.input_size)
    probe = copy.deepcopy(model).eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            probe(torch.zeros(1, *shape))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"model: {cfg.model!r} does not take the samples of dataset {cfg.dataset!r}, of shape "
                          f"{shape} ({' '.join(str(err).split())})") from None


def _checkpoint_bytes(cfg: TrainConfig, model: nn.Module) -> int:
    """About one checkpoint's size: the state_dict, the optimizer's per-parameter slots and the EMA copy."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    slots = 2 if cfg.optimizer == "adamw" else int(cfg.momentum > 0)
    return weights * (1 + (cfg.ema_decay is not None)) + params * slots


def check_disk_space(cfg: TrainConfig, model: nn.Module) -> None:
    """Enough free space under ``output_dir`` for the checkpoints this run keeps at once (``last``, ``best`` and
    the copy being written), counting what its ``checkpoints/`` already holds."""
    size = _checkpoint_bytes(cfg, model)
    copies = 3 if cfg.save_best else 2
    held = 0
    ckpt_dir = Path(cfg.output_dir) / "checkpoints"
    if ckpt_dir.is_dir() and not cfg.overwrite:
        held = sum(f.stat().st_size for f in ckpt_dir.rglob("*") if f.is_file())
    need = max(size, copies * size - held) + (1 << 20)  # + logs
    free = shutil.disk_usage(_existing_ancestor(Path(cfg.output_dir))).free
    if free < need:
        mib = 1 << 20
        raise ConfigError(f"output_dir: got {cfg.output_dir!r} on a file system with {free / mib:.1f} MiB free, "
                          f"expected at least {need / mib:.1f} MiB ({copies} checkpoints of about {size / mib:.1f} "
                          f"MiB: last{', best' if cfg.save_best else ''} and the one being written)")


def clear_run(output_dir: str | os.PathLike) -> None:
    """Remove what a previous run wrote into ``output_dir`` (:data:`RUN_FILES`); other files stay."""
    for name in RUN_FILES:
        entry = Path(output_dir) / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
