"""``largekernel bench dcls``: DCLS layers and kernel construction against the official ``dcls`` package.

The workload is stage 1 of ConvNeXt-T-dcls (Khalfaoui-Hassani et al., ICLR 2023):
depthwise, 96 channels, 56x56, batch 8, 34 elements in a 17x17 box. Each row
times the reference package and ours in the same run and reports the ratio.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from largekernel.bench._harness import format_table, machine_info, median_time, parse_suite_args, suite_parser, write_json

__all__ = ["main"]

_VERSION = {"bilinear": "v1", "gaussian": "gauss"}


def _reference_layer(interpolation: str, channels: int, count: int, box: int):
    logging.disable(logging.WARNING)  # the reference logs about its CUDA-only kernel at construction
    from DCLS.construct.modules import Dcls2d

    return Dcls2d(channels, channels, count, dilated_kernel_size=box, padding=box // 2, groups=channels,
                  version=_VERSION[interpolation], use_implicit_gemm=False)


def _fwd_bwd(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
    return run


def _construct_fwd_bwd(build, params):
    def run():
        for p in params:
            p.grad = None
        build().sum().backward()
    return run


def main(argv: list[str] | None = None) -> int:
    from largekernel.nn import DclsConv2d

    parser = suite_parser("dcls", __doc__, "batch 2 and shorter timing (a smoke run)", "dcls.json")
    args = parse_suite_args(parser, argv)

    batch, channels, size, count, box = (2 if args.quick else 8), 96, 56, 34, 17
    min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size)
    rows = []
    for interpolation in ("bilinear", "gaussian"):
        ref = _reference_layer(interpolation, channels, count, box)
        ours = DclsConv2d(channels, channels, count, box, padding=box // 2, groups=channels,
                          interpolation=interpolation)
        ours.load_state_dict(ref.state_dict())
        ref_params = [p for p in (ref.weight, ref.P, ref.SIG) if p is not None]
        our_params = [p for p in (ours.weight, ours.P, ours.SIG) if p is not None]
        t_ref = median_time(_construct_fwd_bwd(lambda: ref.DCK(ref.weight, ref.P, ref.SIG), ref_params), min_run)
        t_ours = median_time(_construct_fwd_bwd(ours.construct_kernel, our_params), min_run)
        rows.append({"case": "kernel construction fwd+bwd", "interpolation": interpolation, "backend": "-",
                     "reference_ms": 1e3 * t_ref, "ours_ms": 1e3 * t_ours, "speedup": t_ref / t_ours})
        t_ref = median_time(_fwd_bwd(ref, x), min_run)
        for backend in ("direct", "fft", "auto"):
            ours.backend = backend
            t_ours = median_time(_fwd_bwd(ours, x), min_run)
            rows.append({"case": f"layer fwd+bwd (B={batch}, 96x56x56, dw, 34 in 17x17)",
                         "interpolation": interpolation, "backend": backend, "reference_ms": 1e3 * t_ref,
                         "ours_ms": 1e3 * t_ours, "speedup": t_ref / t_ours})
    table = format_table(rows, ["case", "interpolation", "backend", "reference_ms", "ours_ms", "speedup"])
    print(table)
    path = Path(args.out) / "dcls.json"
    write_json(path, {"suite": "dcls", "machine": machine_info(), "quick": args.quick, "rows": rows})
    print(f"\nwrote {path}")
    return 0
