"""The ``largekernel study`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from largekernel._argparse import ArgumentParser, print_usage_error, writable_dir
from largekernel.study.plan import DATASETS, VARIANTS
from largekernel.study.report import format_table

__all__ = ["main"]


def _parser() -> ArgumentParser:
    p = ArgumentParser(  # dashed flags, underscores accepted, one-line errors
        prog="largekernel study",
        description="Train one architecture with every convolution family at matched parameters, at the native "
                    "resolution and at higher ones, and report accuracy, cost, the effective kernel size and the seed "
                    "papers' claims (default: MNIST-1D and digits, offline).")
    p.add_argument("--dataset", nargs="+", default=None, choices=sorted(DATASETS), dest="datasets",
                   help="datasets to study (default: mnist1d digits)")
    p.add_argument("--data-dir", default=None, help="directory of file-backed datasets (cifar10)")
    p.add_argument("--models", nargs="+", default=None, choices=VARIANTS, metavar="VARIANT",
                   help=f"variants to train (default: all the dataset supports): {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 2, 1 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: per dataset)")
    p.add_argument("--out", default="study", help="output directory (default: study/)")
    p.add_argument("--quick", action="store_true",
                   help="one epoch on 512 samples, one seed, a smaller sweep (MNIST-1D to length 160, digits to "
                        "16x16): a smoke run")
    p.add_argument("--no-sweep", action="store_true",
                   help="train at each dataset's native resolution only (no resolution sweep, no cross-resolution)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained in parallel processes (default: 2, or 1 on a single core)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1: these small models run fastest single-threaded, "
                        "so the cores go to parallel runs)")
    p.add_argument("--match", choices=("large", "small"), default="large",
                   help="whose native parameter count DCLS and FlexConv are sized to (default: the large dense model)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from largekernel.study.pipeline import run_study

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for name in ("seeds", "epochs", "threads", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return print_usage_error("largekernel study", f"--{name} must be >= 1, got {value}")
    datasets = args.datasets or ["mnist1d", "digits"]
    if "cifar10" in datasets and args.data_dir is None:
        return print_usage_error("largekernel study",
                                 "--dataset cifar10 needs --data-dir DIR (the cifar-10-batches-py folder)")
    writable_dir("largekernel study", "--out", args.out)
    torch.set_num_threads(args.threads)
    try:
        results = run_study(datasets, args.out, variants=args.models, seeds=args.seeds, epochs=args.epochs,
                            quick=args.quick, data_dir=args.data_dir, match=args.match, sweep=not args.no_sweep,
                            jobs=args.jobs, threads=args.threads, figures=not args.no_figures,
                            progress=not args.no_progress, command=" ".join(["largekernel study", *argv]))
    except KeyboardInterrupt:
        print(f"\nlargekernel study: interrupted; finished runs are cached in {Path(args.out) / 'runs'}, "
              "run the same command again to continue", file=sys.stderr)
        return 130
    for point, rows in results["table"].items():
        print(f"\n## {point}\n")
        print(format_table(rows))
    verdicts = [f"{c['verdict']}: {c['claim']} ({c['scope']})" for c in results["claims"]]
    print("\n## Claims\n\n" + "\n".join(verdicts))
    out = Path(args.out)
    print(f"\nwrote {out / 'report.md'} and {out / 'results.json'} ({results['meta']['wall_time_s']:.0f} s)")
    return 0
