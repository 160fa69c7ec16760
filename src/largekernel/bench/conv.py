"""``largekernel bench conv``: direct vs FFT vs auto convolution over kernel sizes (seed 003).

ConvNeXt-like depthwise 2-D shapes (batch 8, 96 channels, 56x56, "same" padding),
forward and forward+backward, timed with ``torch.utils.benchmark`` in one run so
that only ratios are compared. Also times the ``fft-conv-pytorch`` package when
it is installed, and the "FFT floor": rfft2+irfft2 round trips (one for forward,
two for forward+backward) over the activation pre-padded to the fastest length a
linear convolution can use (``size + kernel - 1`` or more), i.e. the transforms
any FFT convolution needs, without products, padding or cropping.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from largekernel.bench._harness import format_table, machine_info, median_time, parse_suite_args, plot_series, suite_parser, write_json
from largekernel.functional import convolve

__all__ = ["main", "run"]

_MODES = ("forward", "forward+backward")


def _parser() -> argparse.ArgumentParser:
    p = suite_parser("conv", __doc__.splitlines()[0],
                     "kernels 7 and 31 at batch 2 with short timings: a smoke run in under a minute",
                     "conv.json and conv.png")
    p.add_argument("--kernels", type=int, nargs="+", default=None, help="odd kernel sizes (default 3..51)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8, 2 with --quick)")
    p.add_argument("--channels", type=int, default=96, help="channels of the depthwise convolution (default 96)")
    p.add_argument("--size", type=int, default=56, help="height = width of the activation")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating measurement rounds, fastest counts (default 3, 1 with --quick)")
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
    """Even and a product of 2, 3, 5, 7 only: the lengths the FFT libraries transform fastest."""
    if n % 2:
        return False
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def _floor_lengths(size: int, kernel: int) -> list[int]:
    """The linear-convolution lengths worth trying for the floor: even 7-smooth ones in
    [size + kernel - 1, 1.3 x that]."""
    linear = size + kernel - 1
    return [n for n in range(linear, int(1.3 * linear) + 2) if _even_smooth(n)] or [linear]


def _round_trip(x: torch.Tensor, n: int):
    padded = F.pad(x, (0, n - x.shape[-1], 0, n - x.shape[-2]))  # (B, C, n, n)
    return lambda: torch.fft.irfft2(torch.fft.rfft2(padded), s=(n, n))


def run(kernels, batch: int, channels: int, size: int, min_run_time: float, max_warmup: float,
        rounds: int = 3) -> list[dict]:
    """Time every candidate at every kernel size and mode; one row per (kernel, mode).

    Candidates are measured in ``rounds`` alternating rounds and the fastest round
    counts, so that a load spike from other processes hits one sample, not one
    candidate. A candidate whose warm-up exceeds ``max_warmup`` seconds is timed once.
    The floor is one rfft2+irfft2 round trip at the fastest linear length for forward,
    two for forward+backward.
    """
    rows = []
    x = torch.randn(batch, channels, size, size)
    progress = tqdm(total=len(kernels) * rounds, desc="bench conv", unit="round", file=sys.stderr)
    for k in kernels:
        w = torch.randn(channels, 1, k, k) / k
        b = torch.randn(channels)
        steps = {(mode, name): _step(fn, x, w, b, mode) for name, fn in _candidates(x, w, b).items()
                 for mode in _MODES}
        steps.update({("floor", n): _round_trip(x, n) for n in _floor_lengths(size, k)})
        times = dict.fromkeys(steps, float("inf"))
        single = set()
        for r in range(rounds):
            progress.set_postfix(kernel=k, round=r + 1)
            for key, step in steps.items():
                if key in single:
                    continue
                t = median_time(step, min_run_time, max_warmup)
                times[key] = min(times[key], t)
                if t > max_warmup:
                    single.add(key)
            progress.update()
        trip, length = min((t, key[1]) for key, t in times.items() if key[0] == "floor")
        for mode in _MODES:
            per = {name: t for (m, name), t in times.items() if m == mode}
            floor = trip * (1 if mode == "forward" else 2)
            row = {"kernel": k, "mode": mode, **{f"{name}_ms": t * 1e3 for name, t in per.items()},
                   "floor_ms": floor * 1e3, "floor_length": length,
                   "direct/fft": per["direct"] / per["fft"],
                   "fft/floor": per["fft"] / floor,
                   "auto/best": per["auto"] / min(per["direct"], per["fft"])}
            if "fft-conv-pytorch" in per:
                row["fft-conv-pytorch/fft"] = per["fft-conv-pytorch"] / per["fft"]
            rows.append(row)
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
    args = parse_suite_args(_parser(), argv)
    kernels = args.kernels or ([7, 31] if args.quick else [3, 5, 7, 11, 15, 21, 31, 41, 51])
    if any(k < 1 or k % 2 == 0 for k in kernels):
        print(f"largekernel bench conv: --kernels must be odd positive sizes, got {kernels}", file=sys.stderr)
        return 2
    if max(kernels) > args.size:
        print(f"largekernel bench conv: kernels must not exceed --size {args.size}, got {max(kernels)}",
              file=sys.stderr)
        return 2
    batch = args.batch or (2 if args.quick else 8)
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.1 if args.quick else 0.5)
    config = {"kernels": kernels, "batch": batch, "channels": args.channels, "size": args.size,
              "groups": args.channels, "padding": "same", "dtype": "float32", "min_run_time": min_run_time,
              "threads": torch.get_num_threads()}
    rounds = args.rounds or (1 if args.quick else 3)
    config["rounds"] = rounds
    rows = run(kernels, batch, args.channels, args.size, min_run_time, args.max_warmup, rounds)

    names = [c[:-3] for c in rows[0] if c.endswith("_ms") and c != "floor_ms"]
    columns = ["kernel", "mode", *(f"{n}_ms" for n in names), "floor_ms", "direct/fft", "fft/floor", "auto/best"]
    if "fft-conv-pytorch/fft" in rows[0]:
        columns.append("fft-conv-pytorch/fft")
    print(f"depthwise conv2d, batch {batch}, {args.channels} channels, {args.size}x{args.size}, "
          f"padding='same', float32, {torch.get_num_threads()} threads; times in ms (fastest of {rounds} "
          f"alternating rounds of medians), ratios within this run; floor = 1 (forward) or 2 (fwd+bwd) "
          f"rfft2+irfft2 round trips at the fastest linear length")
    print(format_table(rows, columns))
    if (batch, args.channels, args.size) == (8, 96, 56):
        for line in _targets(rows):
            print(line)
    else:
        print("(the issue's targets are defined at batch 8, 96 channels, 56x56: run without --quick)")

    out = Path(args.out)
    write_json(out / "conv.json", {"machine": machine_info(), "config": config, "rows": rows})
    panels = {mode: {name: ([r["kernel"] for r in rows if r["mode"] == mode],
                            [r[f"{name}_ms"] for r in rows if r["mode"] == mode]) for name in names + ["floor"]}
              for mode in _MODES}
    plot_series(out / "conv.png", panels, xlabel="kernel size (k x k)", ylabel="time per call (ms, log scale)",
                title=f"depthwise conv2d, batch {batch}, {args.channels} ch, {args.size}x{args.size}, "
                      f"{torch.get_num_threads()} thread(s)")
    print(f"wrote {out / 'conv.json'} and {out / 'conv.png'}")
    return 0
