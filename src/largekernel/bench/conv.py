"""``largekernel bench conv``: direct vs FFT vs auto convolution over kernel sizes (seed 003).

ConvNeXt-like depthwise 2-D shapes (batch 8, 96 channels, 56x56, "same" padding),
forward and forward+backward, timed with ``torch.utils.benchmark`` in one run so
that only ratios are compared. Also times the ``fft-conv-pytorch`` package when
it is installed, and the "FFT floor": rfft2+irfft2 round trips (one for forward,
two for forward+backward) over the activation pre-padded to the fastest length a
linear convolution can use (``size + kernel - 1`` or more), i.e. the transforms
any FFT convolution needs, without products, padding or cropping.

On CUDA (``--device cuda``) the direct path is cuDNN's. With ``--dtype bfloat16`` or
``float16`` the activation and kernel are in that dtype (the FFT paths compute in
float32, as does the floor); each row then also gives the error of each path's
forward against a float64 convolution of the same rounded operands' float32 originals,
relative to torch's own (direct) low-precision error.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from largekernel.bench._harness import (format_table, machine_info, median_time, milliseconds, parse_suite_args,
                                        plot_series, print_targets, ratio, suite_parser, target, time_or_reason,
                                        write_json)
from largekernel._argparse import print_usage_error
from largekernel.functional import convolve

__all__ = ["main", "run"]

_MODES = ("forward", "forward+backward")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Samples of the batch the low-precision errors are measured on (a float64 convolution of the whole batch costs more
# than the suite's timings on some devices; the error is a per-sample property).
_ERROR_SAMPLES = 4


def _parser() -> argparse.ArgumentParser:
    p = suite_parser("conv", __doc__.splitlines()[0],
                     "kernels 7 and 31 at batch 2 with short timings: a smoke run in under a minute",
                     "conv.json and conv.png",
                     dtype_help="dtype of the activation and kernel (default float32); low precision adds "
                                "error columns against float64")
    p.add_argument("--kernels", type=int, nargs="+", default=None, help="odd kernel sizes (default 3..51)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8, 2 with --quick)")
    p.add_argument("--channels", type=int, nargs="+", default=[96],
                   help="channels of the depthwise convolution, one or more counts (default 96)")
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
    padded = F.pad(x.float(), (0, n - x.shape[-1], 0, n - x.shape[-2]))  # (B, C, n, n), float32 as the FFT paths
    return lambda: torch.fft.irfft2(torch.fft.rfft2(padded), s=(n, n))


def _relative_error(y: torch.Tensor, exact: torch.Tensor) -> float:
    return ((y.double() - exact).norm() / exact.norm()).item()


def _errors(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, x32: torch.Tensor, w32: torch.Tensor,
            b32: torch.Tensor) -> dict:
    """Low precision: each path's forward error against float64 of the float32 originals, and relative to torch's
    own (direct) error in the same dtype."""
    n = min(_ERROR_SAMPLES, x.shape[0])
    groups = x.shape[1]
    exact = F.conv2d(x32[:n].double(), w32.double(), b32.double(), padding="same", groups=groups)
    with torch.no_grad():
        errors = {f"{name}_err": _relative_error(convolve(x[:n], w, b, padding="same", groups=groups, backend=name),
                                                 exact) for name in ("direct", "fft", "auto")}
    errors |= {f"{name}_err/direct_err": errors[f"{name}_err"] / errors["direct_err"] for name in ("fft", "auto")}
    return errors


def run(kernels, batch: int, channels: int | list[int], size: int, min_run_time: float, max_warmup: float,
        rounds: int = 3, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[dict]:
    """Time every candidate at every channel count, kernel size and mode; one row per (channels, kernel, mode).

    Candidates are measured in ``rounds`` alternating rounds and the fastest round
    counts, so that a load spike from other processes hits one sample, not one
    candidate. A candidate whose warm-up exceeds ``max_warmup`` seconds is timed once.
    The floor is one rfft2+irfft2 round trip at the fastest linear length for forward,
    two for forward+backward. A baseline that cannot run here (``fft-conv-pytorch`` in
    bfloat16, say) gets ``"n/a: reason"``.
    """
    rows = []
    counts = [channels] if isinstance(channels, int) else list(channels)
    progress = tqdm(total=len(counts) * len(kernels) * rounds, desc="bench conv", unit="round", file=sys.stderr)
    for c in counts:
        x32 = torch.randn(batch, c, size, size, device=device)
        x = x32.to(dtype)
        for k in kernels:
            w32 = torch.randn(c, 1, k, k, device=device) / k
            b32 = torch.randn(c, device=device)
            w, b = w32.to(dtype), b32.to(dtype)
            steps = {(mode, name): _step(fn, x, w, b, mode) for name, fn in _candidates(x, w, b).items()
                     for mode in _MODES}
            steps.update({("floor", n): _round_trip(x, n) for n in _floor_lengths(size, k)})
            times: dict = dict.fromkeys(steps, float("inf"))
            single = set()
            for r in range(rounds):
                progress.set_postfix(channels=c, kernel=k, round=r + 1)
                for key, step in steps.items():
                    if key in single:
                        continue
                    if key[1] == "fft-conv-pytorch":  # a baseline: it may not run in this dtype or on this device
                        t = time_or_reason(step, min_run_time, max_warmup)
                    else:
                        t = median_time(step, min_run_time, max_warmup)
                    if isinstance(t, str):
                        times[key] = t
                        single.add(key)
                        continue
                    times[key] = min(times[key], t)
                    if t > max_warmup:
                        single.add(key)
                progress.update()
            trip, length = min((t, key[1]) for key, t in times.items() if key[0] == "floor")
            errors = _errors(x, w, b, x32, w32, b32) if dtype in _LOW_PRECISION else {}
            for mode in _MODES:
                per = {name: t for (m, name), t in times.items() if m == mode}
                floor = trip * (1 if mode == "forward" else 2)
                row = {"channels": c, "kernel": k, "mode": mode,
                       **{f"{name}_ms": milliseconds(t) for name, t in per.items()},
                       "floor_ms": floor * 1e3, "floor_length": length,
                       "direct/fft": per["direct"] / per["fft"],
                       "fft/floor": per["fft"] / floor,
                       "auto/best": per["auto"] / min(per["direct"], per["fft"])}
                if "fft-conv-pytorch" in per:
                    row["fft-conv-pytorch/fft"] = ratio(per["fft-conv-pytorch"], per["fft"])
                rows.append(row | errors)
    progress.close()
    return rows


def _targets(rows: list[dict], device: str) -> list[dict]:
    """The issues' performance targets, checked on the rows that measure them: on the CPU at the reference
    configuration (batch 8, 96 channels, 56x56); on CUDA (issue 19) at every configuration run."""
    targets = []
    for row in rows:
        at = f"{row['channels']} ch, kernel {row['kernel']} {row['mode']}"
        if device == "cuda":
            targets.append(target(f"{at}: auto/best", row["auto/best"], "<= 1.15"))
            if row["kernel"] == 31 and row["mode"] == "forward+backward":
                targets.append(target(f"{at}: direct (cuDNN)/fft", row["direct/fft"], ">= 2"))
            if "fft_err/direct_err" in row and row["mode"] == "forward":
                for name in ("fft", "auto"):
                    targets.append(target(f"{at}: {name} error / torch's error (vs float64)",
                                          row[f"{name}_err/direct_err"], "<= 2"))
            continue
        if row["mode"] != "forward+backward":
            continue
        if row["kernel"] == 31:
            targets.append(target(f"{at}: direct/fft", row["direct/fft"], ">= 10"))
            if "fft-conv-pytorch/fft" in row:
                targets.append(target(f"{at}: fft-conv-pytorch/fft", row["fft-conv-pytorch/fft"], ">= 2"))
            targets.append(target(f"{at}: fft/floor", row["fft/floor"], "<= 1.5"))
        if row["kernel"] == 7:
            targets.append(target(f"{at}: auto/best", row["auto/best"], "<= 1.15"))
    return targets


def main(argv: list[str] | None = None) -> int:
    args = parse_suite_args(_parser(), argv)
    kernels = args.kernels or ([7, 31] if args.quick else [3, 5, 7, 11, 15, 21, 31, 41, 51])
    prog = "largekernel bench conv"
    if any(k < 1 or k % 2 == 0 for k in kernels):
        return print_usage_error(prog, f"--kernels must be odd positive sizes, got {kernels}")
    if max(kernels) > args.size:
        return print_usage_error(prog, f"--kernels must not exceed --size {args.size}, got {max(kernels)}")
    if any(c < 1 for c in args.channels):
        return print_usage_error(prog, f"--channels must be positive, got {args.channels}")
    batch = args.batch or (2 if args.quick else 8)
    min_run_time = args.min_run_time if args.min_run_time is not None else (0.1 if args.quick else 0.5)
    dtype_name = str(args.dtype).removeprefix("torch.")
    config = {"kernels": kernels, "batch": batch, "channels": args.channels, "size": args.size,
              "groups": "channels", "padding": "same", "device": args.device, "dtype": dtype_name,
              "min_run_time": min_run_time, "threads": torch.get_num_threads()}
    rounds = args.rounds or (1 if args.quick else 3)
    config["rounds"] = rounds
    rows = run(kernels, batch, args.channels, args.size, min_run_time, args.max_warmup, rounds, args.device,
               args.dtype)

    names = [c[:-3] for c in rows[0] if c.endswith("_ms") and c != "floor_ms"]
    columns = ["channels", "kernel", "mode", *(f"{n}_ms" for n in names), "floor_ms", "direct/fft", "fft/floor",
               "auto/best"]
    if "fft-conv-pytorch/fft" in rows[0]:
        columns.append("fft-conv-pytorch/fft")
    if "fft_err" in rows[0]:
        columns += ["direct_err", "fft_err", "fft_err/direct_err", "auto_err/direct_err"]
    where = f"{torch.get_num_threads()} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"depthwise conv2d, batch {batch}, {'/'.join(map(str, args.channels))} channels, {args.size}x{args.size}, "
          f"padding='same', {dtype_name}, {args.device} ({where}); times in ms (fastest of {rounds} "
          f"alternating rounds of medians), ratios within this run; floor = 1 (forward) or 2 (fwd+bwd) "
          f"rfft2+irfft2 round trips (float32) at the fastest linear length")
    print(format_table(rows, columns))
    reference = (batch, args.size) == (8, 56) and 96 in args.channels and args.dtype == torch.float32
    targets = _targets([r for r in rows if r["channels"] == 96] if args.device == "cpu" else rows, args.device)
    if args.device == "cpu" and not reference:
        targets = []
        print("(the CPU targets are defined at batch 8, 96 channels, 56x56, float32: run without --quick)")
    print_targets(targets)

    out = Path(args.out)
    write_json(out / "conv.json", {"machine": machine_info(args.device, args.dtype), "config": config, "rows": rows,
                                   "targets": targets})
    first = rows[0]["channels"]
    panels = {mode: {name: ([r["kernel"] for r in rows if r["mode"] == mode and r["channels"] == first],
                            [r[f"{name}_ms"] if isinstance(r[f"{name}_ms"], float) else float("nan")
                             for r in rows if r["mode"] == mode and r["channels"] == first])
                     for name in names + ["floor"]}
              for mode in _MODES}
    plot_series(out / "conv.png", panels, xlabel="kernel size (k x k)", ylabel="time per call (ms, log scale)",
                title=f"depthwise conv2d, batch {batch}, {first} ch, {args.size}x{args.size}, {dtype_name}, "
                      f"{args.device}")
    print(f"wrote {out / 'conv.json'} and {out / 'conv.png'}")
    return 0
