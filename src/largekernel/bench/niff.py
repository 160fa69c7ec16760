"""``largekernel bench niff``: NIFFConv2d against the FFT floor and the reference formulation.

NIFF (seed 000): forward+backward of a depthwise NIFF layer, batch 8, 96
channels, 56x56 (ResNet/ConvNeXt stage-1 size). Two baselines timed in the same
run:

- the FFT floor: two ``rfft2`` + ``irfft2`` round trips over the activation (what
  any frequency-domain layer must spend on forward plus backward);
- the reference formulation of GeJulia/NIFF, written here: complex ``fft2``,
  ``fftshift``, complex product with the filter evaluated on the shifted grid,
  ``ifftshift``, ``ifft2``, real part, differentiated by autograd.

Targets: ours / floor <= 1.3, reference / ours >= 1.8 (the CPU's; on CUDA none is
stated). ``--batch``, ``--channels`` and ``--size`` change the workload;
``--dtype bfloat16`` / ``float16`` runs the layer and the reference under autocast
(the transforms run in float32 either way).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from largekernel.bench._harness import (autocast, format_table, machine_info, median_time, parse_suite_args,
                                        print_targets, suite_parser, target, write_json)

__all__ = ["main"]


def _reference_forward(layer, x):
    h, w = x.shape[-2:]
    ky = torch.arange(h, dtype=x.dtype, device=x.device) - h // 2
    kx = torch.arange(w, dtype=x.dtype, device=x.device) - w // 2
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    coords = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # (H * W, 2)
    # float(): under autocast the networks return half precision, which torch.complex does not take
    weights = torch.complex(layer.mlp_real(coords).float(), layer.mlp_imag(coords).float())
    weights = weights.t().reshape(-1, h, w)  # (C, H, W)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # (B, C, H, W) complex
    return torch.fft.ifft2(torch.fft.ifftshift(weights * spectrum, dim=(-2, -1))).real


def _fwd_bwd(forward, x, grad, params, precision):
    def run():
        x.grad = None
        for p in params:
            p.grad = None
        with precision():
            y = forward(x)
        y.backward(grad.to(y.dtype))
    return run


def _no_grad(fn, precision):
    def run():
        with torch.no_grad(), precision():
            fn()
    return run


def _targets(rows: list[dict], device: str) -> list[dict]:
    if device != "cpu":
        return []
    return [t for r in rows if r["case"].startswith("fwd+bwd")
            for t in (target(f"{r['preset']} {r['case']}: ours/floor", r["ours/floor"], "<= 1.3"),
                      target(f"{r['preset']} {r['case']}: reference/ours", r["reference/ours"], ">= 1.8"))]


def main(argv: list[str] | None = None) -> int:
    from largekernel.nn import NIFFConv2d

    parser = suite_parser("niff", __doc__, "shorter timing (a smoke run)", "niff.json",
                          dtype_help="float32 (default), or the autocast dtype of the layer's and the reference's "
                                     "forward")
    parser.add_argument("--rounds", type=int, default=9, help="alternating measurements per case (short windows: the "
                        "floor and the layer drift with the memory state, see benchmarks/RESULTS.md)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--channels", type=int, default=96, help="channels (default 96)")
    parser.add_argument("--size", type=int, default=56, help="height = width (default 56)")
    args = parse_suite_args(parser, argv)

    batch, channels, size, device = args.batch, args.channels, args.size, args.device
    min_run = args.min_run_time or 0.3
    rounds = 1 if args.quick else args.rounds
    precision = lambda: autocast(device, args.dtype)  # noqa: E731
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    grad = torch.randn(batch, channels, size, size, device=device)
    rows = []
    xd = x.detach()

    def floor_train():
        for _ in range(2):
            torch.fft.irfft2(torch.fft.rfft2(xd), s=(size, size))

    def floor_infer():
        torch.fft.irfft2(torch.fft.rfft2(xd), s=(size, size))

    for preset in ("small", "big"):
        layer = NIFFConv2d(channels, bias=False, preset=preset, device=device)
        params = list(layer.parameters())
        cases = {
            "fwd+bwd": (floor_train, _fwd_bwd(layer, x, grad, params, precision),
                        _fwd_bwd(lambda t: _reference_forward(layer, t), x, grad, params, precision)),
            "inference": (floor_infer, _no_grad(lambda: layer(xd), precision),
                          _no_grad(lambda: _reference_forward(layer, xd), precision)),
        }
        for case, fns in cases.items():
            # Alternate the three and take medians of per-round ratios: load drifts on a shared
            # machine shift the members of one round alike.
            trials = [[median_time(fn, min_run) for fn in fns] for _ in range(rounds)]
            floor_t, ours_t, ref_t = (statistics.median(r[i] for r in trials) for i in range(3))
            rows.append({"case": f"{case} B={batch} {channels}x{size}x{size}", "preset": preset,
                         "floor_ms": 1e3 * floor_t, "ours_ms": 1e3 * ours_t, "reference_ms": 1e3 * ref_t,
                         "ours/floor": statistics.median(r[1] / r[0] for r in trials),
                         "reference/ours": statistics.median(r[2] / r[1] for r in trials)})
    table = format_table(rows, ["case", "preset", "floor_ms", "ours_ms", "reference_ms", "ours/floor",
                                "reference/ours"])
    print(table)
    print("\nfloor: one rfft2+irfft2 round trip per pass (two for fwd+bwd), float32; "
          f"{device}, {str(args.dtype).removeprefix('torch.')}")
    targets = _targets(rows, device) if (batch, channels, size) == (8, 96, 56) else []
    print_targets(targets)
    path = Path(args.out) / "niff.json"
    write_json(path, {"suite": "niff", "machine": machine_info(device, args.dtype), "quick": args.quick,
                      "config": {"batch": batch, "channels": channels, "size": size}, "rows": rows,
                      "targets": targets})
    print(f"\nwrote {path}")
    return 0
