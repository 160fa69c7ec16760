"""``largekernel bench dcls``: DCLS layers and kernel construction against the official ``dcls`` package.

The workload is stage 1 of ConvNeXt-T-dcls (Khalfaoui-Hassani et al., ICLR 2023):
depthwise, 96 channels, 56x56, batch 8, 34 elements in a 17x17 box. Each row
times the reference package and ours in the same run and reports the ratio.
The reference's ``Dcls2d`` runs with ``use_implicit_gemm=False`` (torch's own
convolution: its implicit-GEMM CUDA extension is a separate package), on the
same device; ``--dtype bfloat16`` / ``float16`` runs both under autocast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from largekernel.bench._harness import (autocast, format_table, machine_info, median_time, milliseconds,
                                        parse_suite_args, print_targets, quiet_dcls_package, ratio, suite_parser,
                                        target, time_or_reason, write_json)

__all__ = ["main"]

_VERSION = {"bilinear": "v1", "gaussian": "gauss"}


def _reference_layer(interpolation: str, channels: int, count: int, box: int):
    from DCLS.construct.modules import Dcls2d

    with quiet_dcls_package():
        return Dcls2d(channels, channels, count, dilated_kernel_size=box, padding=box // 2, groups=channels,
                      version=_VERSION[interpolation], use_implicit_gemm=False)


def _fwd_bwd(layer, x, precision):
    def run():
        layer.zero_grad(set_to_none=True)
        with precision():
            y = layer(x)
        y.float().sum().backward()
    return run


def _construct_fwd_bwd(build, params):
    def run():
        for p in params:
            p.grad = None
        build().sum().backward()
    return run


def _targets(rows: list[dict], device: str) -> list[dict]:
    """README (CPU): layer >= 8x, construction >= 2x the official package; issue 19 (CUDA): layer >= 3x."""
    goals = {"cpu": {"layer": ">= 8", "kernel construction": ">= 2"}, "cuda": {"layer": ">= 3"}}[device]
    return [target(f"{r['interpolation']} {r['case'].split(' (')[0]}, backend={r['backend']}: reference/ours",
                   r["speedup"], goal)
            for r in rows for kind, goal in goals.items()
            if r["case"].startswith(kind) and r["backend"] in ("-", "auto")]


def main(argv: list[str] | None = None) -> int:
    from largekernel.nn import DclsConv2d

    parser = suite_parser("dcls", __doc__, "batch 2 and shorter timing (a smoke run)", "dcls.json",
                          dtype_help="float32 (default), or the autocast dtype of both layers' forward")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8, 2 with --quick)")
    parser.add_argument("--channels", type=int, default=96, help="channels (default 96, ConvNeXt-T's stage 1)")
    parser.add_argument("--size", type=int, default=56, help="height = width of the activation (default 56)")
    args = parse_suite_args(parser, argv)

    batch, channels, size, count, box = args.batch or (2 if args.quick else 8), args.channels, args.size, 34, 17
    min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    device, dtype = args.device, args.dtype
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=device)
    rows = []
    for interpolation in ("bilinear", "gaussian"):
        ref = _reference_layer(interpolation, channels, count, box).to(device)
        ours = DclsConv2d(channels, channels, count, box, padding=box // 2, groups=channels,
                          interpolation=interpolation, device=device)
        ours.load_state_dict(ref.state_dict())
        ref_params = [p for p in (ref.weight, ref.P, ref.SIG) if p is not None]
        our_params = [p for p in (ours.weight, ours.P, ours.SIG) if p is not None]
        t_ref = time_or_reason(_construct_fwd_bwd(lambda: ref.DCK(ref.weight, ref.P, ref.SIG), ref_params), min_run)
        t_ours = median_time(_construct_fwd_bwd(ours.construct_kernel, our_params), min_run)
        rows.append({"case": "kernel construction fwd+bwd", "interpolation": interpolation, "backend": "-",
                     "reference_ms": milliseconds(t_ref),
                     "ours_ms": 1e3 * t_ours, "speedup": ratio(t_ref, t_ours)})
        t_ref = time_or_reason(_fwd_bwd(ref, x, lambda: autocast(device, dtype)), min_run)
        for backend in ("direct", "fft", "auto"):
            ours.backend = backend
            t_ours = median_time(_fwd_bwd(ours, x, lambda: autocast(device, dtype)), min_run)
            rows.append({"case": f"layer fwd+bwd (B={batch}, {channels}x{size}x{size}, dw, 34 in 17x17)",
                         "interpolation": interpolation, "backend": backend,
                         "reference_ms": milliseconds(t_ref),
                         "ours_ms": 1e3 * t_ours, "speedup": ratio(t_ref, t_ours)})
    table = format_table(rows, ["case", "interpolation", "backend", "reference_ms", "ours_ms", "speedup"])
    dtype_name = str(dtype).removeprefix("torch.")
    print(f"{device}, {dtype_name}{' autocast' if dtype != torch.float32 else ''}; speedup = reference / ours")
    print(table)
    stage1 = (channels, size) == (96, 56) and not args.quick
    targets = _targets(rows, device) if stage1 else []
    print_targets(targets)
    path = Path(args.out) / "dcls.json"
    write_json(path, {"suite": "dcls", "machine": machine_info(device, dtype), "quick": args.quick, "batch": batch,
                      "rows": rows, "targets": targets})
    print(f"\nwrote {path}")
    return 0
