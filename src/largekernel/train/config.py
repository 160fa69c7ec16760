"""The training run configuration: one typed, validated dataclass (nanoGPT-style commented defaults).

The same dataclass is the Python API (``TrainConfig(...)``) and the schema of
the YAML files read by ``largekernel train --config`` (jsonargparse builds the
command line from the type hints, so unknown keys and wrong types are rejected
there; impossible values are rejected here, in ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

__all__ = ["TrainConfig", "AugmentConfig", "config_to_dict", "config_from_dict"]


@dataclass
class AugmentConfig:
    """Batched augmentations applied to training batches (see ``largekernel.data.transforms``)."""

    crop_padding: int = 0  # random crop after zero-padding each side by this many pixels / steps (0: off)
    hflip: float = 0.0  # probability of reversing the last axis (images: horizontal flip)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup (0: off)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) for cutmix (0: off)
    mix_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both alphas > 0: probability of cutmix instead of mixup
    # Images (N, C, H, W) only:
    resized_crop_scale: Optional[tuple[float, float]] = None  # random resized crop, area fraction range (None: off)
    resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect-ratio (w / h) range
    rand_augment_ops: int = 0  # RandAugment: ops per image (0: off); needs a dataset with per-channel Normalize
    rand_augment_magnitude: float = 9.0  # its magnitude, 0..10
    rand_augment_magnitude_std: float = 0.5  # per-op magnitude noise (timm's mstd)
    erase_prob: float = 0.0  # random erasing probability per image (normal noise in a random box)

    def __post_init__(self) -> None:
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


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in every checkpoint."""

    # model and data
    model: str = "dwnet1d_tiny"  # a name from largekernel.models.list_models()
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # forwarded to create_model (conv=, kernel_size=, ...)
    dataset: str = "mnist1d"  # a name from largekernel.data.list_datasets()
    data_dir: Optional[str] = None  # directory of file-backed datasets (cifar10, imagefolder, mnist, ...)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. image_size for imagefolder
    train_subset: Optional[int] = None  # use only the first N training samples (smoke tests)
    test_subset: Optional[int] = None  # evaluate on the first N test samples only
    # schedule
    epochs: int = 20
    batch_size: int = 128  # global batch: divided between processes under torchrun
    eval_batch_size: int = 512
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many optimizer steps in total
    # optimizer
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # peak learning rate for the global batch
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD momentum (Nesterov)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    position_lr_scale: float = 5.0  # lr multiplier of DCLS positions / sigmas (optim.param_groups)
    kernel_net_weight_decay: Optional[float] = None  # weight decay of parameters marked "kernel_net" (None: mark's)
    warmup_epochs: float = 1.0  # linear warmup from warmup_lr_ratio * lr
    warmup_lr_ratio: float = 0.01
    min_lr_ratio: float = 0.01  # cosine decays to min_lr_ratio * lr
    label_smoothing: float = 0.0
    clip_grad: Optional[float] = None  # max global gradient norm (None: off)
    ema_decay: Optional[float] = None  # EMA of weights, e.g. 0.999 (None: off); evaluated every epoch too
    # per-family learning techniques
    dcls_sigma: Optional[tuple[float, float]] = None  # (start, end): linear schedule of DCLS Gaussian widths
    dcls_repulsion: float = 0.0  # weight of the DCLS position-repulsion loss, when the layers provide one
    regularization_weight: float = 1.0  # multiplier of the layers' regularization_loss() (e.g. FlexConv masks)
    regularizers: dict[str, float] = field(default_factory=dict)  # "module:function" -> weight; function(model) -> loss
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # execution
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype (fp16 only on CUDA)
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when available, else cpu
    num_threads: Optional[int] = None  # torch.set_num_threads for this process (None: torch's default)
    num_workers: int = 0  # DataLoader workers for datasets that do not fit in memory (imagefolder)
    seed: int = 0
    deterministic: bool = True  # CUDA: deterministic cuDNN, no autotuning (CPU runs are deterministic already)
    # outputs
    output_dir: str = "runs/default"
    checkpoint_every_steps: Optional[int] = None  # also checkpoint every N steps (besides every epoch)
    save_best: bool = True  # keep checkpoints/best (highest test accuracy)
    resume: bool = False  # continue from output_dir/checkpoints/last when it exists
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        self.betas = tuple(self.betas)
        positive_ints = ("epochs", "batch_size", "eval_batch_size", "log_every_steps")
        for name in positive_ints:
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, getattr(self, name), "a positive integer")
        for name in ("train_subset", "test_subset", "max_steps", "checkpoint_every_steps"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value > 0), name, value, "None or a positive integer")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        for name in ("weight_decay", "warmup_epochs", "label_smoothing", "dcls_repulsion", "regularization_weight",
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
            _check(weight >= 0, f"regularizers.{key}", weight, ">= 0")
        _check(self.num_threads is None or self.num_threads > 0, "num_threads", self.num_threads, "None or > 0")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "'adamw' or 'sgd'")
        _check(self.precision in ("fp32", "bf16", "fp16"), "precision", self.precision, "'fp32', 'bf16' or 'fp16'")
        from largekernel.data import list_datasets

        _check(self.dataset in list_datasets(), "dataset", self.dataset, f"one of {list_datasets()}")
        _check(isinstance(self.model, str) and self.model != "", "model", self.model, "a registered model name")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}: got {value!r}, expected {expected}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of ``cfg`` (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys raise ``ValueError`` naming them."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig keys {unknown}; expected a subset of {sorted(known)}")
    return TrainConfig(**d)
