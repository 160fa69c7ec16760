"""``largekernel bench fit``: FiT vs ViT inference time as the resolution grows (seed 003, section 2.2).

Same patch size (4) at 32, 64, 128 and 224 pixels: the token count grows as
``(size / 4)**2`` (64 ... 3136), self-attention as its square, Fourier mixing as
``N log N``. Seed 003 measured ViT/FiT = 1.6x at 32 px and 4x at 224 px; the
ratio must grow with resolution. Both models are timed in the same run, both
with mean pooling (no class token), so they differ only in the token mixer.
``--dtype bfloat16`` / ``float16`` runs both under autocast (FiT's transforms in float32).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from largekernel.bench._harness import (autocast, format_table, machine_info, median_time, parse_suite_args,
                                        suite_parser, write_json)

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from largekernel.models import create_model

    parser = suite_parser("fit", __doc__, "4 blocks instead of 12 and shorter timing", "fit.json",
                          dtype_help="float32 (default), or the autocast dtype of both models")
    parser.add_argument("--model", default="tiny", choices=("tiny", "small"), help="ViT/FiT size")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224], help="image sizes (px)")
    parser.add_argument("--patch-size", type=int, default=4, help="patch size (px) of both models (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ViT/FiT measurements per size")
    args = parse_suite_args(parser, argv)

    depth = 4 if args.quick else 12
    rounds = 1 if args.quick else args.rounds
    min_run = args.min_run_time or (0.2 if args.quick else 1.0)
    torch.manual_seed(0)
    # Same pooling for both, so that the two networks differ only in the token mixer.
    kwargs = dict(img_size=32, patch_size=args.patch_size, num_classes=10, depth=depth, global_pool="avg")
    vit = create_model(f"vit_{args.model}", **kwargs).eval().to(args.device)
    fit = create_model(f"fit_{args.model}", **kwargs).eval().to(args.device)
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        # Alternate the two models and keep the median ratio of adjacent measurements: load drifts
        # on a shared machine shift both members of a pair alike.
        pairs = []
        with torch.inference_mode(), autocast(args.device, args.dtype):
            for _ in range(rounds):
                pairs.append((median_time(lambda: vit(x), min_run), median_time(lambda: fit(x), min_run)))
        t_vit, t_fit = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        rows.append({"image": f"{size}x{size}", "tokens": (size // args.patch_size) ** 2,
                     "vit_ms": 1e3 * t_vit, "fit_ms": 1e3 * t_fit,
                     "vit/fit": statistics.median(v / f for v, f in pairs)})
    print(f"{args.model}, depth {depth}, patch {args.patch_size}, batch {args.batch}, inference, {args.device}, "
          f"{str(args.dtype).removeprefix('torch.')}")
    print(format_table(rows, ["image", "tokens", "vit_ms", "fit_ms", "vit/fit"]))
    ratios = [r["vit/fit"] for r in rows]
    grows = all(b > a for a, b in zip(ratios, ratios[1:]))
    print(f"\nratio grows with resolution: {grows}")
    sizes = ", ".join(f"{n} px" for n in args.sizes)
    targets = [{"target": f"vit/fit grows with resolution ({sizes})", "value": grows, "goal": "true", "met": grows}]
    path = Path(args.out) / "fit.json"
    write_json(path, {"suite": "fit", "machine": machine_info(args.device, args.dtype), "quick": args.quick,
                      "model": args.model, "depth": depth, "patch_size": args.patch_size, "batch": args.batch,
                      "rows": rows, "ratio_grows": grows, "targets": targets})
    print(f"wrote {path}")
    return 0
