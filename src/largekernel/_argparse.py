"""The conventions every ``largekernel`` subcommand's command line follows.

Flags are spelled with dashes (``--data-dir``); the underscore spelling of the
same flag (``--data_dir``, as the YAML keys of ``largekernel train`` are
written) is accepted everywhere. A usage error prints one line naming the
problem and a pointer to ``--help`` (not the usage block) and exits with
status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import NoReturn, Sequence

__all__ = ["ArgumentParser", "spell_flags", "dashed", "usage_error", "print_usage_error", "writable_dir"]


def spell_flags(argv: Sequence[str], sep: str) -> list[str]:
    """``argv`` with the words of every ``--long-option`` name joined by ``sep`` (``"-"`` or ``"_"``).

    Only option names change (``--data_dir=x_y`` -> ``--data-dir=x_y``); values,
    short options and everything after a bare ``--`` are kept as given.
    """
    other = "_" if sep == "-" else "-"
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace(other, sep) + eq + value
        out.append(arg)
    return out


def dashed(text: str) -> str:
    """``text`` with every ``--flag`` in it spelled with dashes (help and messages of parsers that use underscores)."""
    return re.sub(r"--[\w.]+", lambda m: m.group(0).replace("_", "-"), text)


def print_usage_error(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on one line (whitespace collapsed) and where to look; return 2."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    print(f"see `{prog} --help`", file=sys.stderr)
    return 2


def usage_error(prog: str, message: str) -> NoReturn:
    """:func:`print_usage_error`, then exit with status 2."""
    raise SystemExit(print_usage_error(prog, message))


def writable_dir(prog: str, flag: str, path: str | Path) -> Path:
    """``path`` as a folder (made with its parents) where a file can be written, or a one-line usage error naming
    ``flag`` (exit status 2): a command that writes its results there after minutes of work fails before it
    starts, not with a traceback at the end."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        usage_error(prog, f"{flag} {str(path)!r}: expected a folder, got an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        usage_error(prog, f"{flag} {str(path)!r}: cannot write there ({error.strerror or error})")
    return path


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the conventions above: underscores accepted in flags, one-line errors."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args(spell_flags(args, "-"), namespace)

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)
