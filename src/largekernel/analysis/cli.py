"""``largekernel analyze PATH [...]``: every figure and statistic of a trained model.

The analyses of NIFF, RepLKNet, DCLS and FlexConv (see ``largekernel.analysis.report``)
on a checkpoint written by ``largekernel train`` or ``largekernel study``. Given
several checkpoints of one DCLS model (e.g. saved at different epochs), also
plots how its learned positions evolved.
"""

from __future__ import annotations

from pathlib import Path

import torch

from largekernel._files import write_json
from largekernel._argparse import ArgumentParser, print_usage_error, writable_dir

__all__ = ["main"]


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="largekernel analyze",
                       description="Every figure and statistic of a trained model (the analyses of NIFF, RepLKNet, "
                                   "DCLS and FlexConv: effective kernel size, ERF, learned positions and masks), "
                                   "written as PNG files and summary.json; with several checkpoints of one DCLS "
                                   "model, also how its positions evolved.")
    p.add_argument("checkpoints", nargs="+", metavar="PATH",
                   help="run directory (its newest verified checkpoint) or checkpoint directory, as for "
                        "`largekernel eval`; the last one is analysed, all of them for DCLS evolution")
    p.add_argument("--out", default=None, help="output directory (default: <last PATH>/analysis)")
    p.add_argument("--images", type=int, default=64, help="test images averaged in the ERF (default 64)")
    p.add_argument("--ema", action="store_true", help="analyse the EMA weights of the checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images: got {args.images}, expected >= 1")
    from largekernel.analysis.report import analyze_model, plot_position_evolution
    from largekernel.data import load_dataset
    from largekernel.train import load_checkpoint

    try:
        model, cfg, _ = load_checkpoint(args.checkpoints[-1], ema=args.ema)
        earlier = [(Path(c).name, load_checkpoint(c)[0]) for c in args.checkpoints[:-1]]
    except (FileNotFoundError, ValueError) as err:  # CheckpointError included
        return print_usage_error(parser.prog, str(err))
    out = writable_dir(parser.prog, "--out", args.out if args.out else Path(args.checkpoints[-1]) / "analysis")
    test = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.dataset_kwargs)
    example = torch.stack([test[i][0] for i in range(min(args.images, len(test)))])  # (N, C, *spatial)
    title = f"{cfg.model} ({cfg.model_kwargs.get('conv', 'conv')}) on {cfg.dataset}"
    summary, paths = analyze_model(model, example, out, title=title)
    if earlier and "dcls" in summary:
        models = [*earlier, (Path(args.checkpoints[-1]).name, model)]
        paths.append(plot_position_evolution(models, out / "dcls_position_evolution.png",
                                             f"{title}: DCLS positions across checkpoints"))
    summary_path = out / "summary.json"
    write_json(summary_path, summary)
    for path in [*paths, summary_path]:
        print(path)
    stages = ", ".join(f"{stage}: " + "/".join(f"{v:g}" for v in sizes.values())
                       for stage, sizes in summary["stages"].items())
    print(f"effective kernel size (50/90/99% of mass) per stage: {stages}")
    print("ERF area ratio: " + ", ".join(f"{t}: {v['area_ratio']:.3f}" for t, v in summary["erf_area"].items()))
    return 0
