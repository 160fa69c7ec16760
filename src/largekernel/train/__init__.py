"""Training and evaluation: the recipe (``train``), checkpoints, torchrun scale-out and the CLI."""

from largekernel.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from largekernel.train.config import AugmentConfig, TrainConfig
from largekernel.train.engine import build_optimizer, count_parameters, evaluate, lr_factor, train

__all__ = ["TrainConfig", "AugmentConfig", "train", "evaluate", "load_checkpoint", "save_checkpoint",
           "read_checkpoint", "build_optimizer", "count_parameters", "lr_factor"]
