"""The ``largekernel`` command line: ``train | eval | study | bench | analyze | convert``.

Each subcommand lives in its own module exposing ``main(argv) -> int``; this file
only dispatches, so that ``largekernel --help`` does not import torch-heavy code.
"""

from __future__ import annotations

import sys
from importlib import import_module

from largekernel._argparse import print_usage_error

__all__ = ["main", "SUBCOMMANDS"]

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "study": ("largekernel.study", "train every convolution family on embedded data and write a report"),
    "train": ("largekernel.train.cli", "train a model from a YAML config (torchrun-ready)"),
    "eval": ("largekernel.train.cli", "evaluate a run or checkpoint directory (accuracy and loss as JSON)"),
    "bench": ("largekernel.bench", "time convolution backends and whole models (suites: conv, dcls, flexconv, niff, "
                                   "fit, models)"),
    "analyze": ("largekernel.analysis.cli", "figures and statistics for a run or checkpoint directory"),
    "convert": ("largekernel.surgery.cli", "convert / bake a saved model"),
}


def _usage() -> str:
    lines = ["usage: largekernel <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `largekernel <command> --help` for the options of one command. Flags are spelled with",
              "dashes (--data-dir); underscores (--data_dir) are accepted too."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from largekernel import __version__

        print(f"largekernel {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        return print_usage_error("largekernel", f"unknown command {command!r}; expected one of {', '.join(SUBCOMMANDS)}")
    module_name = SUBCOMMANDS[command][0]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise
        print(f"largekernel {command}: not yet available in this version", file=sys.stderr)
        return 2
    entry = getattr(module, f"{command}_main", None) or getattr(module, "main")
    code = entry(rest)
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
