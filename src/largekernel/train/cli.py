"""``largekernel train`` and ``largekernel eval``: YAML configs and dotted overrides, parsed by jsonargparse.

``largekernel train --config configs/NAME.yaml [--output-dir DIR] [--model-kwargs.kernel-size 31 ...]``
builds a :class:`~largekernel.train.TrainConfig` from the file and the
overrides. Unknown keys, wrong types and impossible values, and then what
``largekernel.train.preflight`` checks against the machine and the file system
(device, data_dir, output_dir, model_kwargs ...), stop the command with exit
status 2 and one line naming the key, before any data loads. Flags are spelled
with dashes; the YAML keys' underscores are accepted too. ``--print-config``
prints the merged YAML and exits. The same command runs under
``torchrun --nproc_per_node=N -m largekernel train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile, set_parsing_settings
from jsonargparse import ArgumentParser as _JsonArgumentParser

from largekernel._argparse import ArgumentParser, dashed, print_usage_error, spell_flags, usage_error
from largekernel.train.config import AugmentConfig, ConfigError, TrainConfig

__all__ = ["train_main", "eval_main", "build_train_parser", "parse_train_config"]

_TRAIN = "largekernel train"
_BOOL_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type == "bool")


class _DashedHelpParser(_JsonArgumentParser):
    """jsonargparse's parser, its help showing the canonical dashed spelling of every flag."""

    def format_help(self) -> str:
        return dashed(super().format_help())


def build_train_parser() -> _JsonArgumentParser:
    """The ``largekernel train`` parser: every TrainConfig key as a flag (underscore spelling), ``--config``, ``--quiet``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # --help from the fields' docstrings
    parser = _DashedHelpParser(
        prog=_TRAIN, exit_on_error=False,
        usage=f"{_TRAIN} [--config FILE] [--KEY VALUE ...] [--resume | --overwrite] [--quiet]",
        description="Train a model from a YAML config and command-line overrides (torchrun-ready). Every key "
                    "below can be set in the YAML file or as a flag; nested keys take dots "
                    "(--model-kwargs.kernel-size 31, --augment.crop-padding 2); flags are spelled with dashes, "
                    "the YAML keys' underscores are accepted too. Mistakes stop the command with exit status 2 "
                    "before any data loads.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with TrainConfig keys")
    parser.add_class_arguments(TrainConfig, nested_key=None, fail_untyped=True, instantiate=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return parser


def _flag_values(argv: list[str]) -> list[str]:
    # `--resume` alone means `--resume true` (jsonargparse bools otherwise take a value).
    flags = {f"--{key}" for key in _BOOL_KEYS}
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in flags and (nxt is None or nxt.startswith("--")):
            arg = f"{arg}=true"
        out.append(arg)
    return out


def _check_config_files(argv: list[str]) -> None:
    """Each ``--config FILE`` exists and holds a YAML mapping (jsonargparse's own messages do not name the file)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
        else:
            continue
        where = f"config: got {path!r}"
        try:
            content = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{where}, which does not exist; expected a YAML file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{where}, which cannot be read ({err}); expected a YAML file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}, which is not valid YAML ({' '.join(str(err).split())})") from None
        if content is None:
            raise ConfigError(f"{where}, which is empty; expected a YAML mapping of TrainConfig keys")
        if not isinstance(content, dict):
            raise ConfigError(f"{where}, which holds a {type(content).__name__}; expected a YAML mapping of "
                              "TrainConfig keys")


def _one_line(message: str) -> str:
    """jsonargparse's messages in this project's form: ``key: got VALUE, expected WHAT``."""
    message = " ".join(message.split())
    m = re.fullmatch(r'Parser key "([^"]+)": Expected a (.+?)\. Got value: (.*)', message)
    if m:
        key, expected, value = m.groups()
        expected = re.sub(r"<class '(\w+)'>", r"\1", expected)
        expected = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", expected)
        return f"{key}: got {value!r}, expected {expected}"
    m = re.fullmatch(r"Option '([^']+)' is not accepted", message) or \
        re.fullmatch(r"Group '([^']+)' does not accept option '([^']+)'", message)
    if m:
        return f"{'.'.join(m.groups())}: unknown key; expected a TrainConfig key (see --help)"
    return dashed(message)


def parse_train_config(argv: list[str]) -> tuple[TrainConfig, bool]:
    """Parse and validate ``argv`` into ``(config, quiet)``; exits with status 2 and the offending key on bad input."""
    argv = _flag_values(spell_flags(argv, "_"))
    parser = build_train_parser()
    try:
        _check_config_files(argv)
        try:
            ns = parser.parse_args(argv)
        except argparse.ArgumentError as err:
            raise ConfigError(_one_line(str(err))) from None
        values = ns.as_dict()
        values.pop("config", None)
        quiet = values.pop("quiet")
        cfg = TrainConfig(**{**values, "augment": AugmentConfig(**values["augment"])})
        from largekernel.train.preflight import check_model_name

        check_model_name(cfg)
    except (ConfigError, ValueError, TypeError) as err:
        usage_error(_TRAIN, str(err))
    return cfg, quiet


def train_main(argv: list[str] | None = None) -> int:
    """``largekernel train``: returns the exit status (2 for a configuration, checkpoint or dataset file mistake)."""
    import torch.distributed as dist

    from largekernel.data import DatasetFormatError
    from largekernel.train.checkpoint import CheckpointError
    from largekernel.train.engine import train

    cfg, quiet = parse_train_config(list(sys.argv[1:] if argv is None else argv))
    try:
        train(cfg, progress=not quiet)
    except (ConfigError, CheckpointError, DatasetFormatError) as err:
        return print_usage_error(_TRAIN, str(err))
    if dist.is_available() and dist.is_initialized():
        # Every rank finishes its last collective before any rank tears its connections down: a
        # rank leaving early made gloo's worker threads of another abort ("terminate called
        # without an active exception"). After an exception there is no teardown: a collective
        # could wait forever on a failed rank, and torchrun stops the others.
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _eval_parser() -> ArgumentParser:
    p = ArgumentParser(prog="largekernel eval",
                       description="Evaluate a trained model: accuracy and mean cross-entropy on a split of its "
                                   "dataset, printed as one JSON line. Every checkpoint file is verified (sha256) "
                                   "first; a corrupt one stops the command with exit status 2.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="run directory (its newest verified checkpoint) or checkpoint directory, as for "
                        "`largekernel analyze`")
    p.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split to evaluate (default: test)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--data-dir", default=None, help="override the data_dir stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """``largekernel eval PATH [--ema] [--split test] [--data-dir DIR]``: print accuracy and loss as JSON."""
    parser = _eval_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.path and args.checkpoint and args.path != args.checkpoint:
        parser.error(f"PATH and --checkpoint name different checkpoints ({args.path!r}, {args.checkpoint!r}); "
                     "expected one")
    path = args.path or args.checkpoint
    if path is None:
        parser.error("PATH: missing; expected a run directory or a checkpoint directory")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size: got {args.batch_size}, expected a positive integer")
    from largekernel.train.checkpoint import load_checkpoint
    from largekernel.train.engine import evaluate

    overrides = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.batch_size is not None:
        overrides["eval_batch_size"] = args.batch_size
    try:
        model, cfg, state = load_checkpoint(path, ema=args.ema)
        cfg = dataclasses.replace(cfg, **overrides)
        metrics = evaluate(model, cfg, split=args.split)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError, ConfigError, DatasetFormatError included
        parser.error(str(err))
    print(json.dumps({"checkpoint": path, "split": args.split, "ema": args.ema, "step": state.get("step"),
                      **metrics}))
    return 0
