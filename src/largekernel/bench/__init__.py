"""``largekernel bench SUITE``: timing suites, one module per suite.

Each suite module ``largekernel.bench.<suite>`` exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import sys
from importlib import import_module

__all__ = ["main", "SUITES"]

SUITES = ("conv", "dcls", "flexconv", "niff", "fit", "models")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: largekernel bench {" + ",".join(SUITES) + "} [--quick] [--out DIR] ...")
        return 0 if argv else 2
    suite, rest = argv[0], argv[1:]
    if suite not in SUITES:
        print(f"largekernel bench: unknown suite {suite!r}; expected one of {', '.join(SUITES)}", file=sys.stderr)
        return 2
    try:
        module = import_module(f"largekernel.bench.{suite}")
    except ModuleNotFoundError as err:
        if err.name != f"largekernel.bench.{suite}":
            raise
        print(f"largekernel bench {suite}: not yet available in this version", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
