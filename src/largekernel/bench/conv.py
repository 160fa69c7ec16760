"""``largekernel bench conv``: direct vs FFT vs auto convolution over kernel sizes (seed 003).

ConvNeXt-like depthwise 2-D shapes (batch 8, 96 channels, 56x56, "same" padding),
forward and forward+backward, timed with ``torch.utils.benchmark`` in one run so
that only ratios are compared. Also times the ``fft-conv-pytorch`` package when
it is installed, and the "FFT floor": two rfft2+irfft2 round trips over the
activation pre-padded to the fastest length a linear convolution can use
(``size + kernel - 1`` or more), i.e. the transforms any FFT convolution's
forward+backward needs, without products, padding or cropping.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from largekernel.bench._harness import format_table, machine_info, median_time, plot_series, write_json
from largekernel.functional import convolve
from largekernel.functional.fft_conv import _factor

__all__ = ["main", "run"]

_MODES = ("forward", "forward+backward")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="largekernel bench conv", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="kernels 7 and 31 at batch 2 with short timings: a smoke run in under a minute")
    p.add_argument("--out", default="bench_results", help="directory for conv.json and conv.png")
    p.add_argument("--kernels", type=int, nargs="+", default=None, help="odd kernel sizes (default 3..51)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8, 2 with --quick)")
    p.add_argument("--channels", type=int, default=96)
    p.add_argument("--size", type=int, default=56, help="height = width of the activation")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default 0.5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-warmup", type=float, default=5.0,
                   help="a candidate whose warm-up call exceeds this (s) is timed by that one call")
    return p


def _candidates(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict:
    k = w.shape[-1]
    groups = x.shape[1]
    fns = {name: (lambda x, w, b, backend=name: convolve(x, w, b, padding="same", groups=groups, backend=backend))
           for name in ("direct", "fft", "auto")}
    try:
        from fft_conv_pytorch import fft_conv as fft_conv_pytorch
        # it indexes with a list (deprecated in torch); the warning would flood the progress bar
        warnings.filterwarnings("ignore", category=UserWarning, module="fft_conv_pytorch")
    except ImportError:
        return fns
    fns["fft-conv-pytorch"] = lambda x, w, b: fft_conv_pytorch(x, w, b, padding=k // 2, groups=groups)
    return fns


def _step(fn, x, w, b, mode: str):
    if mode == "forward":
        def forward():
            with torch.no_grad():
                fn(x, w, b)
        return forward
    xg, wg, bg = (t.detach().requires_grad_() for t in (x, w, b))

    def forward_backward():
        out = fn(xg, wg, bg)
        out.backward(torch.ones_like(out))
        xg.grad = wg.grad = bg.grad = None
    return forward_backward


def _even_smooth(n: int) -> bool:
    return n % 2 == 0 and max(_factor(n)) <= 7


def fft_floor(x: torch.Tensor, kernel: int, min_run_time: float) -> tuple[float, int]:
    """Seconds of two rfft2+irfft2 round trips over ``x`` pre-padded to each even 7-smooth length
    in [size + kernel - 1, 1.3 x that] (the linear-convolution lengths worth trying), and the
    fastest length: the minimum over them."""
    linear = x.shape[-1] + kernel - 1
    lengths = [n for n in range(linear, int(1.3 * linear) + 2) if _even_smooth(n)] or [linear]
    best = (float("inf"), linear)
    for n in lengths:
        padded = F.pad(x, (0, n - x.shape[-1], 0, n - x.shape[-2]))  # (B, C, n, n)

        def round_trips(padded=padded, n=n):
            for _ in range(2):
                torch.fft.irfft2(torch.fft.rfft2(padded), s=(n, n))
        best = min(best, (median_time(round_trips, min_run_time), n))
    return best


def run(kernels, batch: int, channels: int, size: int, min_run_time: float, max_warmup: float) -> list[dict]:
    """Time every candidate at every kernel size and mode; one row per (kernel, mode)."""
    rows = []
    x = torch.randn(batch, channels, size, size)
    progress = tqdm(total=len(kernels) * len(_MODES), desc="bench conv", unit="shape", file=sys.stderr)
    for k in kernels:
        w = torch.randn(channels, 1, k, k) / k
        b = torch.randn(channels)
        fns = _candidates(x, w, b)
        floor, floor_length = fft_floor(x, k, min_run_time)
        for mode in _MODES:
            progress.set_postfix(kernel=k, mode=mode)
            times = {name: median_time(_step(fn, x, w, b, mode), min_run_time, max_warmup) for name, fn in fns.items()}
            row = {"kernel": k, "mode": mode, **{f"{name}_ms": t * 1e3 for name, t in times.items()},
                   "floor_ms": floor * 1e3, "floor_length": floor_length,
                   "direct/fft": times["direct"] / times["fft"],
                   "fft/floor": times["fft"] / floor,
                   "auto/best": times["auto"] / min(times["direct"], times["fft"])}
            if "fft-conv-pytorch" in times:
                row["fft-conv-pytorch/fft"] = times["fft-conv-pytorch"] / times["fft"]
            rows.append(row)
            progress.update()
    progress.close()
    return rows


def _targets(rows: list[dict]) -> list[str]:
    """The issue's performance targets, checked on the rows that measure them."""
    lines = []
    for row in rows:
        if row["mode"] != "forward+backward":
            continue
        if row["kernel"] == 31:
            lines.append(f"kernel 31 fwd+bwd: direct/fft = {row['direct/fft']:.1f} (target >= 10)")
            if "fft-conv-pytorch/fft" in row:
                lines.append(f"kernel 31 fwd+bwd: fft-conv-pytorch/fft = {row['fft-conv-pytorch/fft']:.2f} (target >= 2)")
            lines.append(f"kernel 31 fwd+bwd: fft/floor = {row['fft/floor']:.2f} (target <= 1.5)")
        if row["kernel"] == 7:
            lines.append(f"kernel 7 fwd+bwd: auto/best = {row['auto/best']:.2f} (target <= 1.15)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kernels = args.kernels or ([7, 31] if args.quick else [3, 5, 7, 11, 15, 21, 31, 41, 51])
    if any(k < 1 or k % 2 == 0 for k in kernels):
        print(f"largekernel bench conv: --kernels must be odd positive sizes, got {kernels}", file=sys.stderr)
        return 2
    if max(kernels) > args.size:
        print(f"largekernel bench conv: kernels must not exceed --size {args.size}, got {max(kernels)}",
              file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = args.batch or (2 if args.quick else 8)
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.1 if args.quick else 0.5)
    config = {"kernels": kernels, "batch": batch, "channels": args.channels, "size": args.size,
              "groups": args.channels, "padding": "same", "dtype": "float32", "min_run_time": min_run_time,
              "threads": torch.get_num_threads()}
    rows = run(kernels, batch, args.channels, args.size, min_run_time, args.max_warmup)

    names = [c[:-3] for c in rows[0] if c.endswith("_ms") and c != "floor_ms"]
    columns = ["kernel", "mode", *(f"{n}_ms" for n in names), "floor_ms", "direct/fft", "fft/floor", "auto/best"]
    if "fft-conv-pytorch/fft" in rows[0]:
        columns.append("fft-conv-pytorch/fft")
    print(f"depthwise conv2d, batch {batch}, {args.channels} channels, {args.size}x{args.size}, "
          f"padding='same', float32; times in ms (median), ratios within this run")
    print(format_table(rows, columns))
    for line in _targets(rows):
        print(line)

    out = Path(args.out)
    write_json(out / "conv.json", {"machine": machine_info(), "config": config, "rows": rows})
    panels = {mode: {name: ([r["kernel"] for r in rows if r["mode"] == mode],
                            [r[f"{name}_ms"] for r in rows if r["mode"] == mode]) for name in names + ["floor"]}
              for mode in _MODES}
    plot_series(out / "conv.png", panels, xlabel="kernel size (k x k)", ylabel="time per call (ms, log scale)",
                title=f"depthwise conv2d, batch {batch}, {args.channels} ch, {args.size}x{args.size}")
    print(f"wrote {out / 'conv.json'} and {out / 'conv.png'}")
    return 0
