"""``largekernel bench niff``: NIFFConv2d against the FFT floor and the reference formulation.

NIFF (seed 000): forward+backward of a depthwise NIFF layer, batch 8, 96
channels, 56x56 (ResNet/ConvNeXt stage-1 size). Two baselines timed in the same
run:

- the FFT floor: two ``rfft2`` + ``irfft2`` round trips over the activation (what
  any frequency-domain layer must spend on forward plus backward);
- the reference formulation of GeJulia/NIFF, written here: complex ``fft2``,
  ``fftshift``, complex product with the filter evaluated on the shifted grid,
  ``ifftshift``, ``ifft2``, real part, differentiated by autograd.

Targets: ours / floor <= 1.3, reference / ours >= 1.8.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from largekernel.bench._harness import format_table, machine_info, median_time, parse_suite_args, suite_parser, write_json

__all__ = ["main"]


def _reference_forward(layer, x):
    h, w = x.shape[-2:]
    ky = torch.arange(h, dtype=x.dtype) - h // 2
    kx = torch.arange(w, dtype=x.dtype) - w // 2
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    coords = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # (H * W, 2)
    weights = torch.complex(layer.mlp_real(coords), layer.mlp_imag(coords)).t().reshape(-1, h, w)  # (C, H, W)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # (B, C, H, W) complex
    return torch.fft.ifft2(torch.fft.ifftshift(weights * spectrum, dim=(-2, -1))).real


def _fwd_bwd(forward, x, grad, params):
    def run():
        x.grad = None
        for p in params:
            p.grad = None
        forward(x).backward(grad)
    return run


def _no_grad(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def main(argv: list[str] | None = None) -> int:
    from largekernel.nn import NIFFConv2d

    parser = suite_parser("niff", __doc__, "shorter timing (a smoke run)", "niff.json")
    parser.add_argument("--rounds", type=int, default=9, help="alternating measurements per case (short windows: the "
                        "floor and the layer drift with the memory state, see benchmarks/RESULTS.md)")
    args = parse_suite_args(parser, argv)

    batch, channels, size = 8, 96, 56
    min_run = args.min_run_time or 0.3
    rounds = 1 if args.quick else args.rounds
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    grad = torch.randn(batch, channels, size, size)
    rows = []
    xd = x.detach()

    def floor_train():
        for _ in range(2):
            torch.fft.irfft2(torch.fft.rfft2(xd), s=(size, size))

    def floor_infer():
        torch.fft.irfft2(torch.fft.rfft2(xd), s=(size, size))

    for preset in ("small", "big"):
        layer = NIFFConv2d(channels, bias=False, preset=preset)
        params = list(layer.parameters())
        cases = {
            "fwd+bwd": (floor_train, _fwd_bwd(layer, x, grad, params),
                        _fwd_bwd(lambda t: _reference_forward(layer, t), x, grad, params)),
            "inference": (floor_infer, _no_grad(lambda: layer(xd)), _no_grad(lambda: _reference_forward(layer, xd))),
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
    print("\nfloor: one rfft2+irfft2 round trip per pass (two for fwd+bwd); targets: fwd+bwd ours/floor <= 1.3, "
          "reference/ours >= 1.8")
    path = Path(args.out) / "niff.json"
    write_json(path, {"suite": "niff", "machine": machine_info(), "quick": args.quick, "rows": rows})
    print(f"\nwrote {path}")
    return 0
