"""Shared timing harness: torch.utils.benchmark medians, tables, JSON and plots.

Every suite times its candidates *and its baseline in the same run* and reports
ratios, so numbers from different machines or loads are never compared directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils import benchmark

from largekernel._argparse import ArgumentParser
from largekernel.functional import native_kernels

__all__ = ["suite_parser", "parse_suite_args", "median_time", "machine_info", "format_table", "write_json",
           "plot_series"]


def suite_parser(suite: str, description: str | None, quick: str, outputs: str) -> argparse.ArgumentParser:
    """An argument parser with the options every suite shares: ``--quick`` (help: ``quick``),
    ``--out`` (folder for ``outputs``), ``--min-run-time``, ``--threads`` and ``--no-native``; flags with dashes
    (underscores accepted), one-line usage errors (``largekernel._argparse``)."""
    parser = ArgumentParser(prog=f"largekernel bench {suite}", description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", default="bench_results", help=f"folder for {outputs} (default: bench_results)")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement (default: the suite's, shorter with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 gives steadier ratios on a shared machine")
    parser.add_argument("--no-native", action="store_true",
                        help="run the FFT paths without the fused C kernels (largekernel.functional.native_kernels)")
    return parser


def parse_suite_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads`` (exits with a usage error when it is below 1) and ``--no-native``."""
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.no_native:
        native_kernels(False)
    return args


def median_time(fn: Callable[[], object], min_run_time: float = 0.5, max_warmup: float | None = None) -> float:
    """Median seconds per call of ``fn`` (after one warm-up call), by ``torch.utils.benchmark``.

    ``max_warmup``: when the warm-up call alone takes longer than this many
    seconds, its time is returned instead (one sample), so that a candidate that
    is orders of magnitude slower does not dominate a suite's run time.
    """
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    if max_warmup is not None and warmup > max_warmup:
        return warmup
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def machine_info() -> dict:
    """What the numbers were taken on."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "native_kernels": native_kernels(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": "cpu",
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    # allocator settings change CPU timings of large tensors by up to ~1.5x (docs/fft_conv.md)
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    if allocator:
        info["allocator"] = allocator
    return info


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns`` (floats with 3 significant digits)."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    """Write ``payload`` atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def plot_series(path: str | Path, panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]], *,
                title: str, xlabel: str, ylabel: str, logy: bool = True) -> None:
    """One PNG with a panel per ``panels`` key, each holding named (x, y) lines (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=label)
        if logy:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
