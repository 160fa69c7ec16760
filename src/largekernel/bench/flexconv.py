"""``largekernel bench flexconv``: continuous and long-sequence kernels (CKConv, FlexConv, SGConv), long causal inputs.

Three questions, each answered by a ratio measured within this run:

1. FFT path: a causal CKConv1d / FlexConv1d / SGConv1d with a full-length kernel
   (batch 8, 64 channels, length 4096, forward + backward; ``--lengths`` for more)
   applied by FFT against the same layer applied by the direct path (the reference
   code's only path). CKConv and FlexConv are dense (every channel to every channel),
   SGConv depthwise.
2. Dynamic cropping (FlexConv): a mask covering the last 1/8 of the kernel grid
   with cropping on against the same layer sampling and applying the full grid.
3. Tiny inputs (the study's MNIST-1D scale, length 40): a FlexConv1d against a
   plain ``torch.nn.Conv1d`` of the same kernel size, i.e. the overhead of
   sampling the kernel net at every step.

Questions 2 and 3 run at the first length. A direct path whose first call exceeds
``--max-warmup`` seconds is timed by that one call (at length 65536 it multiplies
``L**2`` per channel pair). ``--dtype bfloat16`` / ``float16`` runs every forward
under autocast. The JSON is rewritten after each length, so an interrupted run
keeps the rows it measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from largekernel.bench._harness import (autocast, format_table, machine_info, median_time, parse_suite_args,
                                        print_targets, suite_parser, target, write_json)

__all__ = ["main"]

_COLUMNS = ["case", "layer", "kernel", "baseline", "baseline_ms", "ours", "ours_ms", "speedup"]


def _fwd_bwd(layer: nn.Module, x: torch.Tensor, device: str, dtype: torch.dtype):
    def run():
        layer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            y = layer(x)
        y.float().sum().backward()
    return run


def _covering(layer, fraction: float) -> None:
    """Set a causal FlexConv's mask so that the region above threshold is the last ``fraction`` of [-1, 1]."""
    with torch.no_grad():
        layer.mask_mean.fill_(1.0)
        layer.mask_width.fill_(2.0 * fraction / math.sqrt(-2.0 * math.log(layer.mask_threshold)))


def _full_length(batch: int, channels: int, length: int, args) -> list[dict]:
    """Question 1 at one length: every layer by FFT against the same layer by the direct path."""
    from largekernel.nn import SGConv1d
    from largekernel.nn.flexconv import CKConv1d, FlexConv1d

    device = args.device
    x = torch.randn(batch, channels, length, device=device)
    shape = f"B={batch}, C={channels}, L={length}"
    layers = {
        "CKConv1d (SIREN)": CKConv1d(channels, channels, length, causal=True, device=device),
        "FlexConv1d (MAGNet, mask over all)": FlexConv1d(channels, channels, length, causal=True, device=device),
        "SGConv1d (depthwise)": SGConv1d(channels, kernel_size=length, device=device),
    }
    _covering(layers["FlexConv1d (MAGNet, mask over all)"], 1.0)
    rows = []
    for name, layer in layers.items():
        assert layer.construct_kernel(length).shape[-1] == length
        times = {}
        for backend in ("fft", "direct"):  # the fast one first: its cuFFT / MKL plans do not depend on the other
            layer.backend = backend
            times[backend] = median_time(_fwd_bwd(layer, x, device, args.dtype), args.min_run, args.max_warmup)
        rows.append({"case": f"full-length causal kernel, fwd+bwd ({shape})", "layer": name,
                     "kernel": length, "baseline": "same layer, backend=direct",
                     "baseline_ms": 1e3 * times["direct"], "ours": "backend=fft", "ours_ms": 1e3 * times["fft"],
                     "speedup": times["direct"] / times["fft"]})
    return rows


def _cropping(batch: int, channels: int, length: int, args) -> list[dict]:
    """Question 2: a mask over the last eighth, cropping on against off, same backend."""
    from largekernel.nn.flexconv import FlexConv1d

    x = torch.randn(batch, channels, length, device=args.device)
    shape = f"B={batch}, C={channels}, L={length}"
    rows = []
    for backend in ("fft", "auto"):
        on = FlexConv1d(channels, channels, length, causal=True, backend=backend, device=args.device)
        off = FlexConv1d(channels, channels, length, causal=True, backend=backend, dynamic_cropping=False,
                         device=args.device)
        off.load_state_dict(on.state_dict())
        for layer in (on, off):
            _covering(layer, 1 / 8)
        cropped = on.effective_kernel_size()[0]
        t_off = median_time(_fwd_bwd(off, x, args.device, args.dtype), args.min_run, args.max_warmup)
        t_on = median_time(_fwd_bwd(on, x, args.device, args.dtype), args.min_run, args.max_warmup)
        rows.append({"case": f"mask covering 1/8, fwd+bwd ({shape})", "layer": f"FlexConv1d, backend={backend}",
                     "kernel": f"{length} -> {cropped}", "baseline": "cropping off", "baseline_ms": 1e3 * t_off,
                     "ours": "cropping on", "ours_ms": 1e3 * t_on, "speedup": t_off / t_on})
    return rows


def _tiny(args) -> dict:
    """Question 3: sampling overhead against a plain dense conv with the same kernel size."""
    from largekernel.nn.flexconv import FlexConv1d

    tiny_x = torch.randn(64, 16, 40, device=args.device)
    flex = FlexConv1d(16, 16, causal=True, device=args.device)
    flex(tiny_x)
    k = flex.effective_kernel_size()[0]
    dense = nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0.0), nn.Conv1d(16, 16, k)).to(args.device)
    t_dense = median_time(_fwd_bwd(dense, tiny_x, args.device, args.dtype), args.min_run)
    t_flex = median_time(_fwd_bwd(flex, tiny_x, args.device, args.dtype), args.min_run)
    return {"case": "tiny input, fwd+bwd (B=64, C=16, L=40)", "layer": "FlexConv1d (default)",
            "kernel": k, "baseline": "torch.nn.Conv1d, same kernel size", "baseline_ms": 1e3 * t_dense,
            "ours": "FlexConv1d", "ours_ms": 1e3 * t_flex, "speedup": t_dense / t_flex}


def _targets(rows: list[dict], device: str) -> list[dict]:
    """README (CPU, length 4096): full-length FFT >= 10x direct, cropping >= 3x; issue 19 (CUDA) states none."""
    if device != "cpu":
        return []
    goals = {"full-length causal kernel": ">= 10", "mask covering 1/8": ">= 3"}
    return [target(f"{r['layer']}, {r['case']}: direct/fft" if r["case"].startswith("full") else
                   f"{r['layer']}, {r['case']}: off/on", r["speedup"], goal)
            for r in rows for kind, goal in goals.items()
            if r["case"].startswith(kind) and "L=4096" in r["case"] and "SGConv" not in r["layer"]]


def main(argv: list[str] | None = None) -> int:
    parser = suite_parser("flexconv", __doc__, "length 1024 and shorter timing (a smoke run)", "flexconv.json",
                          dtype_help="float32 (default), or the autocast dtype of every forward")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="sequence lengths of question 1 (default 4096, 1024 with --quick)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of questions 1 and 2 (default 8)")
    parser.add_argument("--channels", type=int, default=64, help="channels of questions 1 and 2 (default 64)")
    parser.add_argument("--max-warmup", type=float, default=5.0,
                        help="a candidate whose warm-up call exceeds this (s) is timed by that one call")
    args = parse_suite_args(parser, argv)
    lengths = args.lengths or ([1024] if args.quick else [4096])
    if any(n < 2 for n in lengths) or args.batch < 1 or args.channels < 1:
        parser.error(f"--lengths must be >= 2 and --batch, --channels >= 1, got {lengths}, {args.batch}, "
                     f"{args.channels}")
    args.min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    torch.manual_seed(0)
    path = Path(args.out) / "flexconv.json"
    rows: list[dict] = []
    for i, length in enumerate(lengths):
        rows += _full_length(args.batch, args.channels, length, args)
        if i == 0:
            rows += _cropping(args.batch, args.channels, length, args)
            rows.append(_tiny(args))
        targets = _targets(rows, args.device)
        write_json(path, {"suite": "flexconv", "machine": machine_info(args.device, args.dtype),
                          "quick": args.quick, "lengths": lengths, "rows": rows, "targets": targets,
                          "complete": i == len(lengths) - 1})
    print(format_table(rows, _COLUMNS))
    print_targets(targets)
    print(f"\nwrote {path}")
    return 0
