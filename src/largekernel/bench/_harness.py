"""Shared timing harness: torch.utils.benchmark medians, tables, JSON and plots.

Every suite times its candidates *and its baseline in the same run* and reports
ratios, so numbers from different machines or loads are never compared directly.
Every suite runs on ``--device cpu`` or ``cuda``: torch.utils.benchmark synchronises
CUDA around each measurement (and :func:`median_time` around its warm-up call), and
peak memory on CUDA is torch's allocator high-water mark (:func:`cuda_peak_bytes`).
A baseline that cannot run on the device or in the dtype is reported as
``"n/a: reason"`` in its cells (:func:`time_or_reason`) instead of stopping the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils import benchmark

from largekernel import _files
from largekernel._argparse import ArgumentParser, writable_dir
from largekernel.functional import native_kernels

__all__ = ["DTYPES", "suite_parser", "parse_suite_args", "median_time", "time_or_reason", "milliseconds", "ratio",
           "cuda_peak_bytes", "autocast", "float32_exact", "machine_info", "target", "print_targets", "format_table",
           "write_json", "plot_series", "quiet_dcls_package"]


def _not_from_dcls_package(record: logging.LogRecord) -> bool:
    return "DCLS" not in Path(record.pathname).parts


@contextlib.contextmanager
def quiet_dcls_package() -> Iterator[None]:
    """The official ``dcls`` package logs warnings on the root logger about its CUDA-only kernel whenever a layer
    is built: dropped while a suite builds its references. Only those records, only meanwhile (``logging.disable``
    would silence the caller's whole process)."""
    logging.root.addFilter(_not_from_dcls_package)
    try:
        yield
    finally:
        logging.root.removeFilter(_not_from_dcls_package)


#: ``--dtype`` choices.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def suite_parser(suite: str, description: str | None, quick: str, outputs: str,
                 dtype_help: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every suite shares: ``--quick`` (help: ``quick``),
    ``--out`` (folder for ``outputs``), ``--min-run-time``, ``--threads``, ``--no-native``, ``--device`` and, where
    the workload has a low-precision form, ``--dtype`` (help: ``dtype_help``, saying how the dtype is applied);
    flags with dashes (underscores accepted), one-line usage errors (``largekernel._argparse``)."""
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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where tensors and modules live (default: cpu); cuda needs a GPU that torch sees")
    if dtype_help is not None:
        parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help=dtype_help)
    return parser


def parse_suite_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and apply ``--threads`` (exits with a usage error when it is below 1; so does a
    ``--min-run-time`` not above 0) and ``--no-native``;
    ``--device cuda`` without a GPU is a usage error. ``args.dtype`` becomes the ``torch.dtype`` (float32 for
    suites without ``--dtype``)."""
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        parser.error(f"--device cuda: torch {torch.__version__} ({built}) sees no CUDA device")
    args.dtype = DTYPES[getattr(args, "dtype", "float32")]
    writable_dir(parser.prog, "--out", args.out)  # before the measurements, not after
    if args.min_run_time is not None and not args.min_run_time > 0:  # (not > 0: NaN too)
        parser.error(f"--min-run-time must be > 0 seconds, got {args.min_run_time}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.no_native:
        native_kernels(False)
    return args


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], min_run_time: float = 0.5, max_warmup: float | None = None) -> float:
    """Median seconds per call of ``fn`` (after one warm-up call), by ``torch.utils.benchmark`` (which
    synchronises CUDA before reading its clock, as the warm-up measure here does).

    ``max_warmup``: when the warm-up call alone takes longer than this many
    seconds, its time is returned instead (one sample), so that a candidate that
    is orders of magnitude slower does not dominate a suite's run time.
    """
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    warmup = time.perf_counter() - start
    if max_warmup is not None and warmup > max_warmup:
        return warmup
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_or_reason(fn: Callable[[], object], min_run_time: float = 0.5, max_warmup: float | None = None) -> float | str:
    """:func:`median_time`, or ``"n/a: <error>"`` when ``fn`` raises (a baseline without a CUDA or low-precision
    implementation, say), so that the table says why the cell is empty instead of the suite stopping."""
    try:
        return median_time(fn, min_run_time, max_warmup)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        reason = " ".join(str(error).split())
        return f"n/a: {type(error).__name__}: {reason[:100]}"


def milliseconds(seconds: float | str) -> float | str:
    """``seconds`` in ms, or the reason from :func:`time_or_reason` unchanged."""
    return seconds if isinstance(seconds, str) else 1e3 * seconds


def ratio(numerator: float | str, denominator: float | str) -> float | str:
    """``numerator / denominator``, or ``"n/a"`` when either is a reason from :func:`time_or_reason`."""
    if isinstance(numerator, str) or isinstance(denominator, str):
        return "n/a"
    return numerator / denominator


def cuda_peak_bytes(call: Callable[[], object]) -> int:
    """Bytes CUDA's caching allocator held above its level before one ``call`` (after a warm-up call), at its
    highest: ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cached blocks)."""
    call()  # warm-up: calibration, optimizer state, cuFFT plans
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - base)


def autocast(device: str, dtype: torch.dtype):
    """``torch.autocast(device, dtype)`` for a low-precision ``dtype``; no context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


@contextlib.contextmanager
def float32_exact() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matrix products inside the block (on by default for
    convolutions): outputs that two paths must agree on are compared in true float32."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def machine_info(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """What the numbers were taken on: the device and dtype a suite ran with, the CPU and, on CUDA, the GPU's
    name, the CUDA and cuDNN versions and whether TF32 was allowed."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "native_kernels": native_kernels(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version(), "gpu_memory_gib": round(
                     torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                 "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}}
    # allocator settings change CPU timings of large tensors by up to ~1.5x (docs/fft_conv.md)
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    if allocator:
        info["allocator"] = allocator
    return info


def target(name: str, value: float | str, goal: str) -> dict:
    """One of the issue's targets checked on a measured ``value`` against ``goal`` (``">= 2"`` or ``"<= 1.15"``):
    ``{"target", "value", "goal", "met"}`` (``met`` is None when the value is not available)."""
    op, bound = goal.split()
    met = None if isinstance(value, str) else (value >= float(bound) if op == ">=" else value <= float(bound))
    return {"target": name, "value": value, "goal": goal, "met": met}


def print_targets(targets: Sequence[dict]) -> None:
    """One line per :func:`target`: name, value, goal and whether it is met."""
    for t in targets:
        value = f"{t['value']:.3g}" if isinstance(t["value"], float) else str(t["value"])
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "NOT met"
        print(f"target: {t['target']} = {value} (goal {t['goal']}: {verdict})")


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns`` (floats with 3 significant digits)."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    """Write ``payload`` whole (:func:`largekernel._files.replacing`), so a crash never leaves half a file."""
    _files.write_json(path, payload)


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
    with _files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
