"""``largekernel train`` and ``largekernel eval``: YAML configs and dotted overrides, parsed by jsonargparse.

``largekernel train --config configs/NAME.yaml [--output_dir DIR] [--model_kwargs.kernel_size 31 ...]``
builds a :class:`~largekernel.train.TrainConfig` from the file and the
overrides; unknown keys, wrong types and impossible values stop the command
with exit status 2 and a message naming the key before anything is loaded.
``--print_config`` prints the merged YAML and exits. The same command runs
under ``torchrun --nproc_per_node=N -m largekernel train ...``.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from largekernel.train.config import AugmentConfig, TrainConfig

__all__ = ["train_main", "eval_main", "build_train_parser", "parse_train_config"]


def build_train_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="largekernel train", description="Train a model from a YAML config (torchrun-ready).",
                            exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with TrainConfig keys")
    parser.add_class_arguments(TrainConfig, nested_key=None, fail_untyped=True, instantiate=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return parser


def _flag_values(argv: list[str]) -> list[str]:
    # `--resume` alone means `--resume true` (jsonargparse bools otherwise take a value).
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ("--resume", "--save_best", "--deterministic") and (nxt is None or nxt.startswith("--")):
            arg = f"{arg}=true"
        out.append(arg)
    return out


def parse_train_config(argv: list[str]) -> tuple[TrainConfig, bool]:
    """Parse and validate ``argv`` into ``(config, quiet)``; exits with status 2 and the offending key on bad input."""
    parser = build_train_parser()
    ns = parser.parse_args(_flag_values(argv))
    values = ns.as_dict()
    values.pop("config", None)
    quiet = values.pop("quiet")
    try:
        cfg = TrainConfig(**{**values, "augment": AugmentConfig(**values["augment"])})
        from largekernel.models import is_model, list_models

        if not is_model(cfg.model):
            raise ValueError(f"model: got {cfg.model!r}, expected a registered model such as "
                             f"{', '.join(list_models()[:12])}")
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    return cfg, quiet


def train_main(argv: list[str] | None = None) -> int:
    from largekernel.train.engine import train

    import torch.distributed as dist

    cfg, quiet = parse_train_config(list(sys.argv[1:] if argv is None else argv))
    train(cfg, progress=not quiet)
    if dist.is_available() and dist.is_initialized():
        # Every rank finishes its last collective before any rank tears its connections down: a
        # rank leaving early made gloo's worker threads of another abort ("terminate called
        # without an active exception"). After an exception there is no teardown: a collective
        # could wait forever on a failed rank, and torchrun stops the others.
        dist.barrier()
        dist.destroy_process_group()
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``largekernel eval --checkpoint DIR [--ema] [--split test] [--data_dir DIR]``: print accuracy and loss as JSON."""
    parser = ArgumentParser(prog="largekernel eval", description="Evaluate a checkpoint (or run) directory.")
    parser.add_argument("--checkpoint", type=str, required=True, help="checkpoint directory or run directory")
    parser.add_argument("--split", type=str, default="test", choices=["train", "test"])
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--data_dir", type=str, default=None, help="override the data_dir stored in the checkpoint")
    parser.add_argument("--batch_size", type=int, default=None, help="evaluation batch size")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from largekernel.train.checkpoint import load_checkpoint
    from largekernel.train.engine import evaluate

    try:
        model, cfg, state = load_checkpoint(args.checkpoint, ema=args.ema)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    overrides = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.batch_size is not None:
        overrides["eval_batch_size"] = args.batch_size
    cfg = dataclasses.replace(cfg, **overrides)
    metrics = evaluate(model, cfg, split=args.split)
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "ema": args.ema,
                      "step": state.get("step"), **metrics}))
    return 0
