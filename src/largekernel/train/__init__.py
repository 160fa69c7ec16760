"""Training and evaluation: the recipe (``train``), checkpoints, torchrun scale-out and the CLI."""

from largekernel.train.checkpoint import (CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint,
                                          select_checkpoint)
from largekernel.train.config import AugmentConfig, ConfigError, TrainConfig
from largekernel.train.engine import build_optimizer, count_parameters, evaluate, lr_factor, train

__all__ = ["TrainConfig", "AugmentConfig", "train", "evaluate", "load_checkpoint", "save_checkpoint",
           "read_checkpoint", "select_checkpoint", "build_optimizer", "count_parameters", "lr_factor", "ConfigError",
           "CheckpointError"]
