"""The training run configuration: one typed, validated dataclass (nanoGPT-style documented defaults).

The same dataclass is the Python API (``TrainConfig(...)``) and the schema of
the YAML files read by ``largekernel train --config``: jsonargparse builds the
command line from the type hints (unknown keys and wrong types are rejected
there) and its ``--help`` from the docstring under each field. Impossible
values are rejected here, in ``__post_init__``; what can only be checked
against this machine, the model registry and the file system is checked by
``largekernel.train.preflight`` before any data or model loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

__all__ = ["TrainConfig", "AugmentConfig", "ConfigError", "config_to_dict", "config_from_dict"]


class ConfigError(ValueError):
    """A run configuration that cannot work; the one-line message names the key, the value and what is expected."""


@dataclass
class AugmentConfig:
    """Batched augmentations applied to training batches (see ``largekernel.data.transforms``)."""

    crop_padding: int = 0
    """Random crop after zero-padding each side by this many pixels / steps (0: off)."""
    hflip: float = 0.0
    """Probability of reversing the last axis (images: horizontal flip)."""
    mixup_alpha: float = 0.0
    """Beta(alpha, alpha) for mixup (0: off)."""
    cutmix_alpha: float = 0.0
    """Beta(alpha, alpha) for cutmix (0: off)."""
    mix_prob: float = 1.0
    """Probability that a batch is mixed at all."""
    switch_prob: float = 0.5
    """With both alphas > 0: probability of cutmix instead of mixup."""
    resized_crop_scale: Optional[tuple[float, float]] = None
    """Images only: random resized crop, area fraction range (None: off)."""
    resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Images only: aspect-ratio (w / h) range of the random resized crop."""
    rand_augment_ops: int = 0
    """Images only: RandAugment ops per image (0: off); needs a dataset with per-channel Normalize."""
    rand_augment_magnitude: float = 9.0
    """Images only: RandAugment magnitude, 0..10."""
    rand_augment_magnitude_std: float = 0.5
    """Images only: per-op magnitude noise (timm's mstd)."""
    erase_prob: float = 0.0
    """Images only: random erasing probability per image (normal noise in a random box)."""

    def __post_init__(self) -> None:
        _check_finite(self, "augment.")
        _check(self.crop_padding >= 0, "augment.crop_padding", self.crop_padding, ">= 0")
        for name in ("hflip", "mix_prob", "switch_prob", "erase_prob"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"augment.{name}", getattr(self, name), "in [0, 1]")
        for name in ("mixup_alpha", "cutmix_alpha", "rand_augment_magnitude_std"):
            _check(getattr(self, name) >= 0.0, f"augment.{name}", getattr(self, name), ">= 0")
        for name in ("resized_crop_scale", "resized_crop_ratio"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(value)
                _check(len(value) == 2 and 0 < value[0] <= value[1], f"augment.{name}", value,
                       "(min, max) with 0 < min <= max")
                setattr(self, name, value)
        _check(isinstance(self.rand_augment_ops, int) and self.rand_augment_ops >= 0, "augment.rand_augment_ops",
               self.rand_augment_ops, "an integer >= 0")
        _check(0.0 <= self.rand_augment_magnitude <= 10.0, "augment.rand_augment_magnitude",
               self.rand_augment_magnitude, "in [0, 10]")

    def image_only(self) -> dict[str, Any]:
        """The image-only options that are switched on, by name."""
        return {name: getattr(self, name) for name, on in (
            ("resized_crop_scale", self.resized_crop_scale is not None), ("rand_augment_ops", self.rand_augment_ops > 0),
            ("erase_prob", self.erase_prob > 0)) if on}


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in every checkpoint."""

    # model and data
    model: str = "dwnet1d_tiny"
    """A name from largekernel.models.list_models()."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the model (conv=, kernel_size=, conv_kwargs= ...); checked by building it before data loads."""
    dataset: str = "mnist1d"
    """A name from largekernel.data.list_datasets()."""
    data_dir: Optional[str] = None
    """Directory of file-backed datasets (cifar10, cifar100, imagefolder, mnist, fashion_mnist)."""
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    """Dataset options, e.g. image_size for imagefolder."""
    train_subset: Optional[int] = None
    """Use only the first N training samples (smoke tests)."""
    test_subset: Optional[int] = None
    """Evaluate on the first N test samples only."""
    # schedule
    epochs: int = 20
    """Number of passes over the training set."""
    batch_size: int = 128
    """Global batch: divided between processes under torchrun."""
    eval_batch_size: int = 512
    """Batch size of evaluation."""
    max_steps: Optional[int] = None
    """Stop (with a checkpoint) after this many optimizer steps in total."""
    # optimizer
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW or Nesterov SGD."""
    lr: float = 1e-3
    """Peak learning rate for the global batch."""
    weight_decay: float = 0.05
    """Decoupled weight decay (none on biases, norms and marked parameters)."""
    momentum: float = 0.9
    """SGD momentum (Nesterov)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    position_lr_scale: float = 5.0
    """Lr multiplier of DCLS positions / sigmas (optim.param_groups)."""
    kernel_net_weight_decay: Optional[float] = None
    """Weight decay of parameters marked "kernel_net" (None: the mark's)."""
    warmup_epochs: float = 1.0
    """Linear warmup from warmup_lr_ratio * lr over this many epochs."""
    warmup_lr_ratio: float = 0.01
    """Start of the warmup, as a fraction of lr."""
    min_lr_ratio: float = 0.01
    """Cosine decays to min_lr_ratio * lr."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy, in [0, 1)."""
    clip_grad: Optional[float] = None
    """Max global gradient norm (None: off)."""
    ema_decay: Optional[float] = None
    """EMA of the weights, e.g. 0.999 (None: off); evaluated every epoch too."""
    ema_warmup: bool = True
    """Warm the EMA decay up as timm's ModelEmaV3: min(ema_decay, 1 - (1 + step)^(-2/3))."""
    # per-family learning techniques
    dcls_sigma: Optional[tuple[float, float]] = None
    """(start, end): linear schedule of DCLS Gaussian widths."""
    dcls_repulsion: float = 0.0
    """Weight of the DCLS position-repulsion loss (needs a model with DCLS layers)."""
    regularizers: dict[str, float] = field(default_factory=dict)
    """"package.module:function" -> weight; function(model) returns a loss term."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # execution
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype (fp16 only on CUDA)."""
    device: str = "auto"
    """"auto" (cuda:LOCAL_RANK when available, else cpu), "cpu", "cuda" or "cuda:N"."""
    num_threads: Optional[int] = None
    """torch.set_num_threads for this process (None: torch's default)."""
    num_workers: int = 0
    """DataLoader workers for datasets that do not fit in memory (imagefolder)."""
    seed: int = 0
    """Seed of the model's initialisation, the sample order and the augmentations."""
    deterministic: bool = True
    """CUDA: deterministic cuDNN, no autotuning (CPU runs are deterministic already)."""
    dist_timeout: float = 300.0
    """Under torchrun: seconds a process waits for the others before the job fails (a dead or stopped peer)."""
    # outputs
    output_dir: str = "runs/default"
    """Run directory: logs and checkpoints/."""
    checkpoint_every_steps: Optional[int] = None
    """Also checkpoint every N steps (besides every epoch)."""
    save_best: bool = True
    """Keep checkpoints/best (highest test accuracy)."""
    resume: bool = False
    """Continue from the newest verified checkpoint in output_dir when there is one."""
    overwrite: bool = False
    """Replace a previous run in output_dir (its logs and checkpoints) instead of refusing to start."""
    log_every_steps: int = 50
    """Progress-bar update period in steps."""

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**{**self.augment})
        self.betas = tuple(self.betas)
        _check_finite(self, "")
        positive_ints = ("epochs", "batch_size", "eval_batch_size", "log_every_steps")
        for name in positive_ints:
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, getattr(self, name), "a positive integer")
        for name in ("train_subset", "test_subset", "max_steps", "checkpoint_every_steps"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value > 0), name, value, "None or a positive integer")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "dcls_repulsion",
                     "position_lr_scale", "momentum"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two values in [0, 1)")
        for name in ("warmup_lr_ratio", "min_lr_ratio"):
            _check(0 <= getattr(self, name) <= 1, name, getattr(self, name), "in [0, 1]")
        _check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", self.clip_grad, "None or > 0")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "None or in (0, 1)")
        _check(self.kernel_net_weight_decay is None or self.kernel_net_weight_decay >= 0, "kernel_net_weight_decay",
               self.kernel_net_weight_decay, "None or >= 0")
        if self.dcls_sigma is not None:
            self.dcls_sigma = tuple(self.dcls_sigma)
            _check(len(self.dcls_sigma) == 2 and all(v > 0 for v in self.dcls_sigma), "dcls_sigma", self.dcls_sigma,
                   "None or two positive values (start, end)")
        for key, weight in self.regularizers.items():
            _check(isinstance(key, str) and ":" in key, "regularizers", key, "keys of the form 'package.module:function'")
            _check(isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0, f"regularizers.{key}",
                   weight, "a finite number >= 0")
        _check(self.num_threads is None or self.num_threads > 0, "num_threads", self.num_threads, "None or > 0")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _check(self.dist_timeout > 0, "dist_timeout", self.dist_timeout, "> 0 seconds")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "'adamw' or 'sgd'")
        _check(self.precision in ("fp32", "bf16", "fp16"), "precision", self.precision, "'fp32', 'bf16' or 'fp16'")
        from largekernel.data import list_datasets

        _check(self.dataset in list_datasets(), "dataset", self.dataset, f"one of {list_datasets()}")
        _check(isinstance(self.model, str) and self.model != "", "model", self.model, "a registered model name")
        _check(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir", self.output_dir,
               "a directory path (an empty one would write into the current directory)")
        _check(self.data_dir is None or self.data_dir.strip() != "", "data_dir", self.data_dir,
               "None or a directory path")
        _check(not (self.resume and self.overwrite), "overwrite", self.overwrite,
               "False with resume=True (continue the run, or replace it, not both)")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


def _check_finite(obj: Any, prefix: str) -> None:
    """Every float field (and float in a tuple field) of ``obj`` is finite: inf and nan pass range checks like ``> 0``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{prefix}{f.name}: got {value!r}, expected "
                              f"{'finite numbers' if values is value else 'a finite number'}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of ``cfg`` (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys raise :class:`ConfigError` naming them."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: got {type(d).__name__}, expected a mapping of TrainConfig keys")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown TrainConfig keys {unknown}; expected a subset of {sorted(known)}")
    return TrainConfig(**d)
