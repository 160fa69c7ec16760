"""``largekernel bench flexconv``: continuous-kernel layers (CKConv, FlexConv) on long causal sequences.

Three questions, each answered by a ratio measured within this run:

1. FFT path: a causal CKConv1d / FlexConv1d with a full-length kernel (batch 8,
   64 channels, length 4096, forward + backward) applied by FFT against the same
   layer applied by the direct path (the reference code's only path).
2. Dynamic cropping (FlexConv): a mask covering the last 1/8 of the kernel grid
   with cropping on against the same layer sampling and applying the full grid.
3. Tiny inputs (the study's MNIST-1D scale, length 40): a FlexConv1d against a
   plain ``torch.nn.Conv1d`` of the same kernel size, i.e. the overhead of
   sampling the kernel net at every step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from largekernel.bench._harness import format_table, machine_info, median_time, parse_suite_args, suite_parser, write_json

__all__ = ["main"]


def _fwd_bwd(layer: nn.Module, x: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
    return run


def _covering(layer, fraction: float) -> None:
    """Set a causal FlexConv's mask so that the region above threshold is the last ``fraction`` of [-1, 1]."""
    with torch.no_grad():
        layer.mask_mean.fill_(1.0)
        layer.mask_width.fill_(2.0 * fraction / math.sqrt(-2.0 * math.log(layer.mask_threshold)))


def main(argv: list[str] | None = None) -> int:
    from largekernel.nn.flexconv import CKConv1d, FlexConv1d

    parser = suite_parser("flexconv", __doc__, "length 1024 and shorter timing (a smoke run)", "flexconv.json")
    args = parse_suite_args(parser, argv)

    batch, channels, length = 8, 64, (1024 if args.quick else 4096)
    min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    torch.manual_seed(0)
    x = torch.randn(batch, channels, length)
    shape = f"B={batch}, C={channels}, L={length}"
    rows = []

    # 1. Full-length causal kernels: FFT against direct.
    layers = {
        "CKConv1d (SIREN)": CKConv1d(channels, channels, length, causal=True),
        "FlexConv1d (MAGNet, mask over all)": FlexConv1d(channels, channels, length, causal=True),
    }
    _covering(layers["FlexConv1d (MAGNet, mask over all)"], 1.0)
    for name, layer in layers.items():
        assert layer.effective_kernel_size() == (length,)
        times = {}
        for backend in ("direct", "fft"):
            layer.backend = backend
            times[backend] = median_time(_fwd_bwd(layer, x), min_run)
        rows.append({"case": f"full-length causal kernel, fwd+bwd ({shape})", "layer": name,
                     "kernel": length, "baseline": "same layer, backend=direct",
                     "baseline_ms": 1e3 * times["direct"], "ours": "backend=fft", "ours_ms": 1e3 * times["fft"],
                     "speedup": times["direct"] / times["fft"]})

    # 2. Dynamic cropping: a mask over the last eighth, cropping on against off, same backend.
    for backend in ("fft", "auto"):
        on = FlexConv1d(channels, channels, length, causal=True, backend=backend)
        off = FlexConv1d(channels, channels, length, causal=True, backend=backend, dynamic_cropping=False)
        off.load_state_dict(on.state_dict())
        for layer in (on, off):
            _covering(layer, 1 / 8)
        cropped = on.effective_kernel_size()[0]
        t_off = median_time(_fwd_bwd(off, x), min_run)
        t_on = median_time(_fwd_bwd(on, x), min_run)
        rows.append({"case": f"mask covering 1/8, fwd+bwd ({shape})", "layer": f"FlexConv1d, backend={backend}",
                     "kernel": f"{length} -> {cropped}", "baseline": "cropping off", "baseline_ms": 1e3 * t_off,
                     "ours": "cropping on", "ours_ms": 1e3 * t_on, "speedup": t_off / t_on})

    # 3. Tiny inputs: sampling overhead against a plain dense conv with the same kernel size.
    tiny_x = torch.randn(64, 16, 40)
    flex = FlexConv1d(16, 16, causal=True)
    flex(tiny_x)
    k = flex.effective_kernel_size()[0]
    dense = nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0.0), nn.Conv1d(16, 16, k))
    t_dense = median_time(_fwd_bwd(dense, tiny_x), min_run)
    t_flex = median_time(_fwd_bwd(flex, tiny_x), min_run)
    rows.append({"case": "tiny input, fwd+bwd (B=64, C=16, L=40)", "layer": "FlexConv1d (default)",
                 "kernel": k, "baseline": "torch.nn.Conv1d, same kernel size", "baseline_ms": 1e3 * t_dense,
                 "ours": "FlexConv1d", "ours_ms": 1e3 * t_flex, "speedup": t_dense / t_flex})

    table = format_table(rows, ["case", "layer", "kernel", "baseline", "baseline_ms", "ours", "ours_ms", "speedup"])
    print(table)
    path = Path(args.out) / "flexconv.json"
    write_json(path, {"suite": "flexconv", "machine": machine_info(), "quick": args.quick, "rows": rows})
    print(f"\nwrote {path}")
    return 0
