"""The study's numbers: per-point tables over seeds, the resolution sweep, cross-resolution, Pareto fronts, report.md.

Pure functions of the run records (the figures are drawn by
:mod:`largekernel.study.figures`, the claims judged by :mod:`largekernel.study.claims`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from largekernel.study.plan import DATASETS, LABELS, MNIST1D_BASELINES, VARIANTS, point_name
from largekernel.study.runs import mean_sizes

__all__ = ["aggregate", "format_table", "mean_std", "pareto_front", "resolution_label", "sweep_table", "transfer_table",
           "render"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _describe(config: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """``(layer or model, extent or patch, options)`` of a run's configuration, for the table's second column."""
    kwargs = config["model_kwargs"]
    if "conv" in kwargs:
        return kwargs["conv"], kwargs["kernel_size"], kwargs.get("conv_kwargs", {})
    return config["model"], kwargs.get("patch_size"), {}


def _row(variant: str, recs: list[dict[str, Any]], transfers: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    m = [r["metrics"] for r in recs]
    acc_mean, acc_std = mean_std([x["acc"] for x in m])
    # from the per-layer report where there is one, so that the stem is left out
    sizes = [mean_sizes(x["kernel_report"]) if x.get("kernel_report") else x["effective_size"] for x in m]
    conv, extent, options = _describe(recs[0]["config"])
    macs = [x["macs"] for x in m if x["macs"] is not None]
    measured = [s for s in sizes if s is not None]
    areas = [x["erf_area"] for x in m if x["erf_area"] is not None]
    return {
        "variant": variant, "label": LABELS[variant], "conv": conv, "kernel_size": extent, "conv_kwargs": options,
        "seeds": [r["seed"] for r in recs], "acc_mean": acc_mean, "acc_std": acc_std, "accs": [x["acc"] for x in m],
        "params": m[0]["params"], "macs": macs[0] if macs else None,
        "train_time_s": statistics.fmean(x["train_time_s"] for x in m), "train_times": [x["train_time_s"] for x in m],
        "throughput": statistics.fmean(x["throughput"] for x in m), "throughputs": [x["throughput"] for x in m],
        "effective_size": ({f: statistics.fmean(s[f] for s in measured) for f in measured[0]} if measured else None),
        "sizes": sizes,
        "erf_area": ({t: statistics.fmean(a[t]["area_ratio"] for a in areas) for t in areas[0]} if areas else None),
        "mask_extents": [x["mask_extents"] for x in m], "paths": [x["paths"] for x in m], "transfers": transfers,
    }


def aggregate(records: list[dict[str, Any]],
              transfers: Sequence[dict[str, Any]] = ()) -> dict[str, list[dict[str, Any]]]:
    """Per point (in the order the records first name them), one row per variant: accuracy mean and std over
    seeds, per-seed lists, means of the rest.

    ``transfers`` (cross-resolution records with their ``job``) are attached to their source's row as
    ``{target: {"accs": [...], "finetuned_accs": [...]}}``, seeds in the row's order.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["point"], rec["variant"]), []).append(rec)
    moved: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    for t in transfers:
        source = t["job"]["source"]
        moved.setdefault((source["point"], source["variant"]), {}).setdefault(str(t["target"]), {})[
            source["seed"]] = t["metrics"]
    table: dict[str, list[dict[str, Any]]] = {}
    for (point, variant), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        seeds = [r["seed"] for r in recs]
        attached = {target: {"accs": [by_seed[s]["acc"] for s in seeds],
                             "finetuned_accs": [by_seed[s]["finetuned_acc"] for s in seeds]}
                    for target, by_seed in moved.get((point, variant), {}).items() if set(seeds) <= set(by_seed)}
        table.setdefault(point, []).append(_row(variant, recs, attached))
    order = {v: i for i, v in enumerate(VARIANTS)}
    for rows in table.values():
        rows.sort(key=lambda r: order[r["variant"]])
    return table


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown results table of one point."""
    fractions = next((list(r["effective_size"]) for r in rows if r["effective_size"]), [])
    head = ("| model | conv (extent) | params | MACs | test acc % (mean ± std) | train s | infer samples/s | "
            + "".join(f"eff. size {100 * float(f):g}% | " for f in fractions) + "ERF area 99% |")
    lines = [head, "|" + "---|" * (8 + len(fractions))]
    for r in rows:
        extra = ", ".join(f"{k}={v}" for k, v in r["conv_kwargs"].items())
        conv = f"{r['conv']} ({r['kernel_size']}{', ' + extra if extra else ''})"
        macs = f"{r['macs']:,}" if r["macs"] is not None else "n/a"
        sizes = "".join(f"{r['effective_size'][f]:.1f} | " if r["effective_size"] else "n/a | " for f in fractions)
        area = f"{r['erf_area'].get('0.99', 0):.3f}" if r["erf_area"] else "n/a"
        lines.append(f"| {r['label']} | {conv} | {r['params']:,} | {macs} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} "
                     f"| {r['train_time_s']:.1f} | {r['throughput']:,.0f} | {sizes}{area} |")
    return "\n".join(lines)


def pareto_front(costs: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (cost no higher, accuracy no lower, one strictly),
    by increasing cost."""
    front = []
    for i, (c, a) in enumerate(zip(costs, accs)):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in zip(costs, accs))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -accs[i]))


def resolution_label(dataset: str, resolution: int) -> str:
    """``"160"`` for a sequence length, ``"32x32"`` for an image side."""
    return f"{resolution}x{resolution}" if DATASETS[dataset].resolution_key == "size" else str(resolution)


def sweep_table(dataset: str, table: dict[str, list[dict]], points: dict[str, dict]) -> str:
    """Accuracy (mean ± std over seeds) and parameters of every family at every resolution of ``dataset``."""
    names = sorted((p for p, i in points.items() if i["dataset"] == dataset), key=lambda p: points[p]["resolution"])
    variants = [v for v in VARIANTS if any(v in {r["variant"] for r in table.get(p, [])} for p in names[1:])]
    head = ("| family | " + " | ".join(resolution_label(dataset, points[p]["resolution"]) for p in names)
            + " | highest - native |")
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for v in variants:
        rows = [next((r for r in table.get(p, []) if r["variant"] == v), None) for p in names]
        cells = [f"{r['acc_mean']:.1f} ± {r['acc_std']:.1f} ({r['params']:,} p.)" if r else "-" for r in rows]
        change = f"{rows[-1]['acc_mean'] - rows[0]['acc_mean']:+.1f}" if rows[0] and rows[-1] else "-"
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + f" | {change} |")
    return "\n".join(lines)


def transfer_table(dataset: str, table: dict[str, list[dict]], points: dict[str, dict]) -> str | None:
    """Native models evaluated at the higher resolutions: as is, after the fine-tune, and trained there."""
    native = next((p for p, i in points.items() if i["dataset"] == dataset and i["native"]), None)
    rows = [r for r in table.get(native, []) if r["transfers"]]
    if not rows:
        return None
    lines = ["| family | trained at | evaluated at | as is % | after the fine-tune % | trained there % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for target, result in sorted(r["transfers"].items(), key=lambda kv: int(kv[0])):
            there = next((x for x in table.get(point_name(dataset, int(target)), []) if x["variant"] == r["variant"]),
                         None)
            lines.append(f"| {r['label']} | {resolution_label(dataset, points[native]['resolution'])} "
                         f"({r['acc_mean']:.1f} %) | {resolution_label(dataset, int(target))} | "
                         f"{_fmt(result['accs'])} | {_fmt(result['finetuned_accs'])} | "
                         f"{_fmt(there['accs']) if there else '-'} |")
    return "\n".join(lines)


def _fmt(accs: list[float]) -> str:
    mean, std = mean_std(accs)
    return f"{mean:.1f} ± {std:.1f}"


def _sweep_findings(dataset: str, table: dict[str, list[dict]], points: dict[str, dict]) -> list[str]:
    """Plain statements of what the sweep measured: the small kernel's change, the best family at the top, and the
    families on the accuracy / cost Pareto fronts there."""
    names = sorted((p for p, i in points.items() if i["dataset"] == dataset), key=lambda p: points[p]["resolution"])
    if len(names) < 2:
        return []
    low, high = {r["variant"]: r for r in table.get(names[0], [])}, table.get(names[-1], [])
    lines = []
    small = next((r for r in high if r["variant"] == "small"), None)
    if small is not None and "small" in low:
        lines.append(f"- The small dense kernel goes from {low['small']['acc_mean']:.1f} % at "
                     f"{resolution_label(dataset, points[names[0]]['resolution'])} to {small['acc_mean']:.1f} % at "
                     f"{resolution_label(dataset, points[names[-1]]['resolution'])}.")
    if high:
        best = max(high, key=lambda r: r["acc_mean"])
        lines.append(f"- Most accurate at {resolution_label(dataset, points[names[-1]]['resolution'])}: "
                     f"**{best['label']}**, {best['acc_mean']:.1f} ± {best['acc_std']:.1f} %.")
        for key, what in (("macs", "MACs per sample"), ("train_time_s", "training time")):
            rows = [r for r in high if r[key] is not None]
            front = pareto_front([r[key] for r in rows], [r["acc_mean"] for r in rows])
            lines.append(f"- Pareto front of accuracy against {what} there (cheapest first): "
                         + ", ".join(f"{rows[i]['label']} ({rows[i]['acc_mean']:.1f} %)" for i in front) + ".")
    return lines


def _header(meta: dict[str, Any]) -> list[str]:
    lines = ["# largekernel study", "",
             "Which convolution family makes the best use of a large receptive field — and where does kernel "
             "extent matter? The same architecture is trained with its depthwise spatial convolution replaced by "
             "each family, at the native resolution of each dataset and again at higher resolutions (the same "
             "samples, more points per feature), with one recipe; all other settings (recipe, seeds, data) are "
             "equal.", "",
             f"- machine: {meta['machine']['cpu']} ({meta['machine']['cores']} cores; {meta['jobs']} run(s) in "
             f"parallel, {meta['threads']} torch thread(s) each; torch {meta['machine']['torch']}, "
             f"{meta['machine']['device']})",
             f"- wall time: {meta['wall_time_s']:.0f} s ({meta['cpu_time_s']:.0f} s of CPU time) for "
             f"{meta['runs_trained']} trained run(s) and {meta['transfers_done']} cross-resolution evaluation(s) "
             f"({meta['runs_cached']} runs and {meta['transfers_cached']} evaluations taken from the cache); "
             f"training time summed over all runs: {meta['train_time_total_s']:.0f} s",
             f"- command: `{meta['command']}`"]
    if meta["invalid_cache"]:
        lines.append(f"- {len(meta['invalid_cache'])} cached result(s) failed validation and were retrained:")
        lines += [f"  - {problem}" for problem in meta["invalid_cache"]]
    return lines + [""]


def _point_section(out: Path, point: str, rows: list[dict], info: dict, meta: dict, figures: list[Path]) -> list[str]:
    cfg = meta["configs"][point]
    train = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("model_kwargs", "dataset", "data_dir",
                                                                        "dataset_kwargs", "seed", "save_best",
                                                                        "model"))
    plan = DATASETS[info["dataset"]]
    arch = ", ".join(f"{k}={v}" for k, v in plan.model_kwargs.items())
    title = f"{info['dataset']}, {resolution_label(info['dataset'], info['resolution'])}"
    lines = [f"## {title}{' (native)' if info['native'] else ''}", "",
             f"Model `{plan.model}`{f' ({arch})' if arch else ''}; recipe: {train}; test accuracy of the last epoch "
             f"on {info['n_test']} test samples over seeds {rows[0]['seeds']} (mean ± sample std).", "",
             format_table(rows), ""]
    small = next((r for r in rows if r["variant"] == "small"), None)
    large = [r for r in rows if r["variant"] != "small"]
    if large:
        best = max(large, key=lambda r: r["acc_mean"])
        verdict = f"Best other model: **{best['label']}**, {best['acc_mean']:.2f}%"
        if small is not None:
            delta = best["acc_mean"] - small["acc_mean"]
            verdict += (f", {abs(delta):.2f} points {'above' if delta >= 0 else 'below'} the small dense "
                        f"kernel ({small['acc_mean']:.2f}%) trained with the same recipe.")
        lines += [verdict, ""]
    if info["dataset"].startswith("mnist1d") and info["native"]:
        lines += ["External reference, MNIST-1D paper (Greydanus 2020, test accuracy %, its own recipes): "
                  + ", ".join(f"{k} {v}" for k, v in MNIST1D_BASELINES.items()) + ".", ""]
    if figures:
        lines += ["### Figures", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})\n" for p in figures]
    return lines


def render(out: Path, table: dict[str, list[dict]], points: dict[str, dict], claims_md: str,
           figures: dict[str, list[Path]], meta: dict[str, Any]) -> str:
    """The whole report.md: header, claims, the sweep per dataset, then every point's table and figures."""
    lines = _header(meta)
    lines += ["## Claims of the seed papers", "", claims_md, "",
              "Statistics: a model's standard error is the larger of the seed-to-seed one (sample std / sqrt(seeds)) "
              "and the binomial error of an accuracy on the point's N test samples, sqrt(p(1-p)/N); a difference is "
              "significant beyond two standard errors of the difference. \"Matches\": confirmed when the mean is at "
              "most 1 point below, refuted when it is further below with two standard errors to spare. "
              "Per-seed thresholds: confirmed when every seed passes, refuted when none does. Timings (throughput "
              "ratios) come from one machine and vary with its load.", ""]
    datasets = list(dict.fromkeys(i["dataset"] for i in points.values()))
    for dataset in datasets:
        if sum(1 for i in points.values() if i["dataset"] == dataset) < 2:
            continue
        plan = DATASETS[dataset]
        resolutions = sorted(i["resolution"] for i in points.values() if i["dataset"] == dataset)
        lines += [f"## Resolution sweep: {dataset}", "",
                  f"The same {dataset} samples at {', '.join(resolution_label(dataset, r) for r in resolutions)}"
                  f" ({plan.resolution_key}), the same recipe. The small dense kernel keeps its {plan.small} taps "
                  "and the network its depth; the large and learnable kernels span the input at every resolution; "
                  "DCLS and FlexConv keep the size knob matched at the native resolution (their parameter count does "
                  "not change), the dense large kernel pays one weight per tap (the parameter counts are in "
                  "brackets). Test accuracy %, mean ± std over seeds:", "",
                  sweep_table(dataset, table, points), ""]
        lines += _sweep_findings(dataset, table, points) + [""]
        transfers = transfer_table(dataset, table, points)
        if transfers:
            lines += ["Cross-resolution: the native models evaluated at each higher resolution without retraining "
                      "(FlexConv's kernels resampled on the finer grid, NIFF and the small dense kernel unchanged), "
                      "then after a short fine-tune there (one pass over 1024 training samples at a tenth of the "
                      "recipe's learning rate):", "",
                      transfers, ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})\n" for p in figures.get(dataset, [])]
    for point, rows in table.items():
        lines += _point_section(out, point, rows, points[point], meta, figures.get(point, []))
    return "\n".join(lines)
