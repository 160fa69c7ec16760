"""``largekernel bench SUITE``: timing suites, one module per suite.

Each suite module ``largekernel.bench.<suite>`` exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import sys
from importlib import import_module

from largekernel._argparse import print_usage_error

__all__ = ["main", "SUITES"]

# suite -> what it times (the first line of the suite module's docstring, without importing it)
SUITES: dict[str, str] = {
    "conv": "direct vs FFT vs auto convolution over kernel sizes (seed 003)",
    "dcls": "DCLS layers and kernel construction against the official dcls package",
    "flexconv": "continuous and long-sequence kernels (CKConv, FlexConv, SGConv), long causal inputs",
    "niff": "NIFFConv2d against the FFT floor and the reference formulation",
    "fit": "FiT vs ViT inference time as the resolution grows (seed 003, section 2.2)",
    "models": "whole models: RepLKNet-31B inference and training, ConvNeXt-T(-dcls) training steps, peak memory",
}


def _help() -> str:
    lines = ["usage: largekernel bench SUITE [--quick] [--out DIR] [options]", "",
             "Time convolution backends. Each suite times its candidates and its baseline in the same run and",
             "reports ratios (a table, JSON in --out and, for some, a plot), so that numbers from different",
             "machines or loads are never compared directly.", "", "suites:"]
    lines += [f"  {name:<9} {text}" for name, text in SUITES.items()]
    lines += ["", "Every suite takes --quick (a smoke run), --out DIR, --min-run-time S, --threads N, --no-native",
              "and --device cpu|cuda (timings synchronise CUDA; JSON records the device, dtype, GPU and CUDA",
              "version), and --dtype float32|bfloat16|float16; run `largekernel bench SUITE --help` for all",
              "of its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            print(_help())
            return 0
        return print_usage_error("largekernel bench", f"SUITE: missing; expected one of {', '.join(SUITES)}")
    suite, rest = argv[0], argv[1:]
    if suite not in SUITES:
        return print_usage_error("largekernel bench", f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
    try:
        module = import_module(f"largekernel.bench.{suite}")
    except ModuleNotFoundError as err:
        if err.name != f"largekernel.bench.{suite}":
            raise
        print(f"largekernel bench {suite}: not yet available in this version", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)
