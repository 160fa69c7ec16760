"""The study's figures: per point the comparisons and the cost trade-off, per dataset the sweep and cross-resolution.

Per-family galleries (kernels, spectra, DCLS positions, FlexConv masks, NIFF's
Gaussian fit and PCA) are drawn for the lowest seed at the native resolution
only; the higher resolutions get the comparison figures, which is where they
differ.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from largekernel.study.plan import DATASETS, LABELS, VARIANTS, point_name
from largekernel.study.report import mean_std, pareto_front, resolution_label
from largekernel.study.runs import example_inputs, family_rows, mean_sizes, run_dir

__all__ = ["point_figures", "sweep_figures", "figure_jobs", "draw"]

_COLORS = {LABELS[v]: f"C{i}" for i, v in enumerate(VARIANTS)}  # one colour per family in every figure


def _comparisons(fig_dir: Path, point: str, first: dict[str, dict]) -> list[Path]:
    from largekernel.analysis import plots

    order = [v for v in VARIANTS if v in first and first[v]["metrics"]["kernel_report"]]
    if not order:
        return []
    curves = {}
    for v in order:
        report = family_rows(first[v]["metrics"]["kernel_report"])
        sizes = max((r["sizes"] for r in report), key=len)
        # a layer whose kernel is smaller than the window already holds all its mass there
        mean = [statistics.fmean(r["mass_ratio"][i] if i < len(r["mass_ratio"]) else 1.0 for r in report)
                for i in range(len(sizes))]
        curves[LABELS[v]] = (sizes, mean)
    return [
        plots.plot_mass_ratio(curves, fig_dir / f"{point}_mass_ratio.png",
                              f"{point}: kernel mass ratio (mean over blocks)"),
        plots.plot_effective_sizes({LABELS[v]: mean_sizes(first[v]["metrics"]["kernel_report"]) for v in order},
                                   fig_dir / f"{point}_effective_size.png",
                                   f"{point}: effective kernel size (mean over blocks)"),
        plots.plot_erf({LABELS[v]: torch.tensor(first[v]["metrics"]["erf"]) for v in order},
                       fig_dir / f"{point}_erf.png", f"{point}: effective receptive field"),
    ]


def _galleries(out: Path, fig_dir: Path, point: str, first: dict[str, dict]) -> list[Path]:
    from largekernel.analysis import (dcls_positions, flexconv_mask_extents, gaussian_fit, kernel_layers, kernel_pca,
                                      layer_input_sizes, plots, position_histograms, spatial_kernels)
    from largekernel.train import load_checkpoint

    written = []
    order = [v for v in VARIANTS if v in first and first[v]["metrics"]["kernel_report"]]
    if not order:
        return written
    example = example_inputs(first[order[0]]["config"], 1)
    for v in order:
        model, _, _ = load_checkpoint(run_dir(out, first[v]))
        label = f"{point} {LABELS[v]}"
        layers = kernel_layers(model)
        sizes = layer_input_sizes(model, example, layers)
        kernels = {name: spatial_kernels(module, sizes.get(name)) for name, module in layers}
        name = [n for n in kernels if n.startswith("blocks")][-1]
        written.append(plots.plot_kernel_gallery(kernels[name], fig_dir / f"{point}_{v}_kernels.png",
                                                 f"{label}: spatial kernels of {name}", max_kernels=8))
        written.append(plots.plot_kernel_gallery(kernels[name], fig_dir / f"{point}_{v}_spectra.png",
                                                 f"{label}: kernel spectra of {name}", spectral=True, max_kernels=8))
        if dcls_positions(model):
            written.append(plots.plot_position_histograms(position_histograms(model),
                                                          fig_dir / f"{point}_{v}_positions.png",
                                                          f"{label}: learned positions per block"))
        masks = flexconv_mask_extents(model)
        if masks:
            written.append(plots.plot_mask_extents(masks, fig_dir / f"{point}_{v}_masks.png",
                                                   f"{label}: learned kernel extent per layer"))
        if v in ("large", "niff"):
            pooled = torch.cat([k for n, k in kernels.items() if n.startswith("blocks")])  # (N, *k)
            written.append(plots.plot_gaussian_fit(gaussian_fit(pooled), fig_dir / f"{point}_{v}_gaussian_fit.png",
                                                   f"{label}: Gaussian fit of |kernel|"))
            written.append(plots.plot_pca(kernel_pca(pooled, 4), fig_dir / f"{point}_{v}_pca.png",
                                          f"{label}: principal components of the spatial kernels"))
    return written


def _cost(fig_dir: Path, point: str, rows: list[dict]) -> Path:
    from largekernel.analysis import plots

    models = {r["label"]: {"acc": r["acc_mean"], "acc_std": r["acc_std"], "train_time_s": r["train_time_s"],
                           "macs": r["macs"]} for r in rows}
    fronts = {}
    for key in ("train_time_s", "macs"):
        measured = [r for r in rows if r[key] is not None]
        fronts[key] = [measured[i]["label"] for i in pareto_front([r[key] for r in measured],
                                                                   [r["acc_mean"] for r in measured])]
    return plots.plot_cost_tradeoff(models, fig_dir / f"{point}_cost.png",
                                    f"{point}: test accuracy against cost (mean ± std over seeds)", fronts=fronts,
                                    colors=_COLORS)


def point_figures(out: Path, point: str, native: bool, records: list[dict[str, Any]],
                  rows: list[dict]) -> list[Path]:
    """The figures of one point: cost trade-off, comparisons, and the galleries at the native resolution."""
    fig_dir = out / "figures"
    first: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        first.setdefault(rec["variant"], rec)
    written = [_cost(fig_dir, point, rows)] + _comparisons(fig_dir, point, first)
    if native:
        written += _galleries(out, fig_dir, point, first)
    return written


def sweep_figures(out: Path, dataset: str, table: dict[str, list[dict]], points: dict[str, dict]) -> list[Path]:
    """Accuracy against resolution per family, and the cross-resolution comparison, of one dataset."""
    from largekernel.analysis import plots

    names = sorted((p for p, i in points.items() if i["dataset"] == dataset), key=lambda p: points[p]["resolution"])
    if len(names) < 2:
        return []
    plan = DATASETS[dataset]
    swept = {r["variant"] for p in names[1:] for r in table.get(p, [])}
    curves: dict[str, dict[int, tuple[float, float]]] = {}
    for p in names:
        for r in table.get(p, []):
            if r["variant"] in swept:
                curves.setdefault(LABELS[r["variant"]], {})[points[p]["resolution"]] = (r["acc_mean"], r["acc_std"])
    unit = "image side (pixels)" if plan.resolution_key == "size" else "sequence length (samples)"
    fig_dir = out / "figures"
    written = [plots.plot_accuracy_vs_resolution(curves, fig_dir / f"{dataset}_sweep.png",
                                                 f"{dataset}: test accuracy against resolution (mean ± std)",
                                                 xlabel=unit, colors=_COLORS)]
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for r in table.get(names[0], []):
        for target, result in sorted(r["transfers"].items(), key=lambda kv: int(kv[0])):
            higher = table.get(point_name(dataset, int(target)), [])
            there = next((x for x in higher if x["variant"] == r["variant"]), None)
            bar = {"native": (r["acc_mean"], r["acc_std"]), "as is": mean_std(result["accs"]),
                   "fine-tuned": mean_std(result["finetuned_accs"])}
            if there is not None:
                bar["trained there"] = (there["acc_mean"], there["acc_std"])
            bars[f"{r['label']} -> {target}"] = bar
    if bars:
        native = resolution_label(dataset, points[names[0]]["resolution"])
        written.append(plots.plot_transfer(bars, fig_dir / f"{dataset}_crossres.png",
                                           f"{dataset}: trained at {native}, evaluated at higher resolutions"))
    return written


def figure_jobs(records: list[dict[str, Any]], table: dict[str, list[dict]],
                points: dict[str, dict]) -> list[dict[str, Any]]:
    """One job per point and one per swept dataset, for :func:`draw` (in parallel worker processes)."""
    jobs = [{"key": point, "point": point, "native": points[point]["native"], "rows": rows,
             "records": [r for r in records if r["point"] == point],
             "cost": 3 if points[point]["native"] else 1} for point, rows in table.items()]
    for dataset in dict.fromkeys(i["dataset"] for i in points.values()):
        jobs.append({"key": dataset, "dataset": dataset, "table": table, "points": points, "cost": 1})
    return jobs


def draw(out: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Draw one job of :func:`figure_jobs`: ``{"key": point or dataset, "paths": [written PNGs]}``."""
    if "point" in job:
        paths = point_figures(out, job["point"], job["native"], job["records"], job["rows"])
    else:
        paths = sweep_figures(out, job["dataset"], job["table"], job["points"])
    return {"key": job["key"], "paths": paths}
