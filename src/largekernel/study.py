"""``largekernel study``: how large do learned kernels get, and which family uses its extent best?

One command answers, on a user's data, the questions of the seed papers: NIFF
(Grabinski et al., TMLR 2024) asks how large the filters a network learns
actually are; DCLS (Khalfaoui-Hassani et al., ICLR 2023) whether learned
spacings beat fixed grids at equal parameters; FlexConv (Romero et al., ICLR
2022) what extent each layer wants. The same architecture is trained with its
depthwise spatial convolution as a small dense kernel, a large dense kernel, a
dilated kernel, DCLS, FlexConv, NIFF, an FFT-applied large kernel (and SGConv
in 1-D); DCLS and FlexConv are sized to the parameter count of the large dense
model (``--match large``, the DCLS paper's question: do learned positions beat a
dense grid at equal parameters?) or of the small one (``--match small``). The study writes ``report.md`` (table + figures) and ``results.json``.

Every run caches its result in ``runs/<dataset>/<variant>/seed<k>/result.json``
next to its checkpoints: an interrupted study resumes the interrupted run from
its last checkpoint and skips every finished one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from largekernel._argparse import ArgumentParser

__all__ = ["main", "DatasetPlan", "DATASETS", "VARIANTS", "MNIST1D_BASELINES", "plan_runs", "run_study", "aggregate",
           "format_table"]

# Greydanus (2020), "Scaling down deep learning", Table 1: test accuracy (%) on MNIST-1D.
MNIST1D_BASELINES = {"logistic regression": 32, "MLP": 68, "CNN": 94, "GRU": 91, "human": 96}

VARIANTS = ("small", "large", "dilated", "dcls", "flexconv", "niff", "fft", "sgconv")
_LABELS = {
    "small": "small dense", "large": "large dense", "dilated": "dilated", "dcls": "DCLS", "flexconv": "FlexConv",
    "niff": "NIFF", "fft": "FFT (large dense)", "sgconv": "SGConv",
}
# Families whose size knob is chosen to match a reference model's parameter count (``--match``).
_ISO_KNOB = {"dcls": "kernel_count", "flexconv": "hidden_channels"}


@dataclass
class DatasetPlan:
    """What a study trains on one dataset: the model, the two kernel extents and the recipe."""

    model: str
    small: int  # extent of the small dense kernel
    large: int  # extent of every large / learnable-extent kernel
    variants: tuple[str, ...]
    epochs: int
    seeds: int
    quick_epochs: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_kwargs: dict[str, Any] = field(default_factory=dict)


DATASETS: dict[str, DatasetPlan] = {
    # MNIST-1D: (1, 40) sequences; a 39-tap kernel sees the whole sequence from its centre.
    # Four blocks: stacking matters more than width on MNIST-1D (a 2-block net stays near 97.5 %).
    "mnist1d": DatasetPlan("dwnet1d_tiny", small=5, large=39, variants=VARIANTS, epochs=15, seeds=2,
                           quick_epochs=3, model_kwargs=dict(depth=4),
                           train_kwargs=dict(batch_size=128, lr=3e-3, weight_decay=0.05)),
    # scikit-learn digits: (1, 8, 8) images; a 7x7 kernel sees the whole image from its centre.
    "digits": DatasetPlan("dwnet2d_tiny", small=3, large=7, variants=tuple(v for v in VARIANTS if v != "sgconv"),
                          epochs=15, seeds=2, quick_epochs=3,
                          train_kwargs=dict(batch_size=64, lr=3e-3, weight_decay=0.05)),
    # CIFAR-10: the stride-2 stem gives 16x16 maps; a 15x15 kernel sees all of one from its centre.
    "cifar10": DatasetPlan("dwnet2d_small", small=3, large=15, variants=tuple(v for v in VARIANTS if v != "sgconv"),
                           epochs=100, seeds=1, quick_epochs=2, model_kwargs=dict(stem_stride=2),
                           train_kwargs=dict(batch_size=128, lr=2e-3, weight_decay=0.05, label_smoothing=0.1,
                                             augment=dict(crop_padding=4, hflip=0.5))),
}


def _variant_kwargs(name: str, plan: DatasetPlan) -> dict[str, Any]:
    if name == "small":
        return {"conv": "conv", "kernel_size": plan.small}
    if name == "dilated":  # the small kernel's taps, spread over the large extent
        return {"conv": "dilated", "kernel_size": plan.large, "conv_kwargs": {"small_kernel_size": plan.small}}
    if name in ("large", "fft", "niff", "sgconv"):
        return {"conv": "conv" if name == "large" else name, "kernel_size": plan.large}
    return {"conv": name, "kernel_size": plan.large}


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _build(plan: DatasetPlan, info, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    from largekernel.models import create_model

    return create_model(plan.model, num_classes=info.num_classes, in_chans=info.in_chans,
                        **{**plan.model_kwargs, **model_kwargs})


def _iso_kwargs(name: str, plan: DatasetPlan, info, target: int) -> dict[str, Any]:
    """Model keywords of ``name`` with its size knob set so the model's parameters are closest to ``target``."""
    kwargs = _variant_kwargs(name, plan)
    knob = _ISO_KNOB.get(name)
    if knob is None:
        return kwargs
    def candidate(value: int) -> dict[str, Any]:
        conv_kwargs = {knob: value} if knob == "kernel_count" else {"kernel_net_kwargs": {knob: value}}
        return {**kwargs, "conv_kwargs": conv_kwargs}

    def params(value: int) -> int:
        return _num_params(_build(plan, info, candidate(value)))

    # parameter counts grow with the knob: bisect for the first value reaching the target
    lo, hi = 1, plan.large ** info.dims if knob == "kernel_count" else 1024
    while lo < hi:
        mid = (lo + hi) // 2
        if params(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min({max(lo - 1, 1), lo}, key=lambda v: abs(params(v) - target))
    return candidate(best)


def plan_runs(datasets: Sequence[str], variants: Sequence[str] | None = None, seeds: int | None = None,
              epochs: int | None = None, quick: bool = False, data_dir: str | None = None,
              train_overrides: dict[str, Any] | None = None, match: str = "large") -> list[dict[str, Any]]:
    """The list of runs (one dict each: dataset, variant, seed, TrainConfig keywords).

    ``match`` names the variant (``"large"`` or ``"small"``) whose parameter count DCLS and FlexConv match.
    """
    if match not in ("large", "small"):
        raise ValueError(f"match must be 'large' or 'small', got {match!r}")
    from largekernel.data import dataset_info

    runs = []
    for dataset in datasets:
        plan = DATASETS[dataset]
        info = dataset_info(dataset, data_dir)
        chosen = [v for v in plan.variants if variants is None or v in variants]
        target = _num_params(_build(plan, info, _variant_kwargs(match, plan)))
        n_seeds = seeds if seeds is not None else (1 if quick else plan.seeds)
        n_epochs = epochs if epochs is not None else (plan.quick_epochs if quick else plan.epochs)
        for variant in chosen:
            model_kwargs = {**plan.model_kwargs, **_iso_kwargs(variant, plan, info, target)}
            for seed in range(n_seeds):
                config = dict(model=plan.model, model_kwargs=model_kwargs, dataset=dataset, data_dir=data_dir,
                              epochs=n_epochs, seed=seed, save_best=False,
                              **{**plan.train_kwargs, **(train_overrides or {})})
                runs.append({"dataset": dataset, "variant": variant, "seed": seed, "config": config})
    return runs


# ------------------------------------------------------------------ one run


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _run_dir(out: Path, run: dict[str, Any]) -> Path:
    return out / "runs" / run["dataset"] / run["variant"] / f"seed{run['seed']}"


def _cached(out: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    path = _run_dir(out, run) / "result.json"
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return cached if cached.get("config") == _jsonable(run["config"]) else None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _throughput(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Inference samples per second on batch ``x`` (median of ``repeats`` timed passes after a warm-up)."""
    model.eval()
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def _family_rows(report: list[dict]) -> list[dict]:
    """The rows of the layers the variants differ in: all but the (shared, dense) stem."""
    rows = [r for r in report if r["stage"] != "stem"]
    return rows or report


def _mean_sizes(report: list[dict]) -> dict[str, float]:
    rows = _family_rows(report)
    return {f: statistics.fmean(r["effective_size"][f] for r in rows) for f in rows[0]["effective_size"]}


@contextlib.contextmanager
def _auto_decisions(calibrate: bool):
    """``backend="auto"`` timing its choices or not (``calibrate``), from an empty cache; yields the caller's
    setting, which is restored after (and the cache emptied again)."""
    from largekernel.functional import clear_auto_cache, set_calibration

    previous = set_calibration(calibrate)
    clear_auto_cache()
    try:
        yield previous
    finally:
        clear_auto_cache()
        set_calibration(previous)


def _measure(model: torch.nn.Module, x_test: torch.Tensor, calibrating: bool) -> dict[str, Any]:
    """Kernel sizes, ERF and MACs with the run's deterministic backend choices; the throughput with ``backend=
    "auto"`` as the caller has it (``calibrating``: timed choices, the speed a user gets)."""
    from largekernel.analysis import count, effective_receptive_field, erf_area_ratios, kernel_size_report

    model.eval()
    report = kernel_size_report(model, x_test[:2])
    sizes = _mean_sizes(report)
    erf = effective_receptive_field(model, x_test[:64])
    try:
        macs = count(model, (1, *x_test.shape[1:])).macs
    except Exception as err:  # noqa: BLE001 - a counting failure must not lose a trained run
        print(f"warning: MAC count failed ({type(err).__name__}: {err})", file=sys.stderr)
        macs = None
    with _auto_decisions(calibrating):
        throughput = _throughput(model, x_test[:256])
    return {"effective_size": sizes, "kernel_report": report, "erf": erf.tolist(), "erf_area": erf_area_ratios(erf),
            "macs": macs, "throughput": throughput}


def _train_one(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    # backend="auto" decided by its cost model alone, from an empty cache: timed choices depend on the machine's
    # load and on which runs a worker process ran before, and the direct and FFT paths round differently, so a
    # run's accuracy (and MAC count) would depend on them.
    with _auto_decisions(False) as calibrating:
        return _train_deterministic(out, run, calibrating)


def _train_deterministic(out: Path, run: dict[str, Any], calibrating: bool) -> dict[str, Any]:
    from largekernel.train import TrainConfig, load_checkpoint, train

    run_dir = _run_dir(out, run)
    marker, config = run_dir / "study_config.json", _jsonable(run["config"])
    # resume only a run started with this very configuration; anything else there is stale
    if run_dir.exists() and (not marker.is_file() or json.loads(marker.read_text()) != config):
        shutil.rmtree(run_dir)
    _write_json(marker, config)
    cfg = TrainConfig(**run["config"], output_dir=str(run_dir), resume=True)
    result = train(cfg, progress=False)
    model, _, _ = load_checkpoint(run_dir)
    x_test = _example(run["dataset"], run["config"]["data_dir"], 256)  # (256, C, *spatial)
    metrics = {"acc": 100 * result["last_acc"], "best_acc": 100 * result["best_acc"], "params": result["params"],
               "train_time_s": result["train_time_s"], "epochs": result["epochs"],
               "history": [h["test_acc"] for h in result["history"]], **_measure(model, x_test, calibrating)}
    record = {"dataset": run["dataset"], "variant": run["variant"], "seed": run["seed"],
              "config": _jsonable(run["config"]), "metrics": metrics}
    _write_json(run_dir / "result.json", record)
    return record


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the parallel runs), user + system."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _execute(out: Path, pending: list[dict[str, Any]], jobs: int, threads: int | None):
    """Train ``pending`` runs, yielding each record as it finishes (``jobs`` processes at a time)."""
    if jobs <= 1 or len(pending) <= 1:
        for run in pending:
            yield _train_one(out, run)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child would inherit torch's thread pools mid-state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads or torch.get_num_threads(),)) as pool:
        futures = [pool.submit(_train_one, out, run) for run in pending]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# ------------------------------------------------------------------ aggregation and report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, one row per variant: accuracy mean and std over seeds and the mean of the other metrics."""
    table: dict[str, list[dict[str, Any]]] = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["dataset"], rec["variant"]), []).append(rec)
    for (dataset, variant), recs in groups.items():
        m = [r["metrics"] for r in recs]
        acc_mean, acc_std = _mean_std([x["acc"] for x in m])
        # from the per-layer report when cached, so the stem is left out of runs measured before it was
        sizes = [_mean_sizes(x["kernel_report"]) if "kernel_report" in x else x["effective_size"] for x in m]
        fractions = list(sizes[0])
        macs = [x["macs"] for x in m if x["macs"] is not None]
        table.setdefault(dataset, []).append({
            "variant": variant, "label": _LABELS[variant], "conv": recs[0]["config"]["model_kwargs"]["conv"],
            "kernel_size": recs[0]["config"]["model_kwargs"]["kernel_size"],
            "conv_kwargs": recs[0]["config"]["model_kwargs"].get("conv_kwargs", {}),
            "seeds": sorted(r["seed"] for r in recs), "acc_mean": acc_mean, "acc_std": acc_std,
            "accs": [x["acc"] for x in m], "params": m[0]["params"], "macs": macs[0] if macs else None,
            "train_time_s": statistics.fmean(x["train_time_s"] for x in m),
            "throughput": statistics.fmean(x["throughput"] for x in m),
            "effective_size": {f: statistics.fmean(size[f] for size in sizes) for f in fractions},
            "erf_area": {t: statistics.fmean(x["erf_area"][t]["area_ratio"] for x in m) for t in m[0]["erf_area"]},
        })
    order = {v: i for i, v in enumerate(VARIANTS)}
    for rows in table.values():
        rows.sort(key=lambda r: order[r["variant"]])
    return table


def format_table(rows: list[dict[str, Any]]) -> str:
    """The markdown results table of one dataset."""
    fractions = list(rows[0]["effective_size"]) if rows else []
    head = ("| model | conv (extent) | params | MACs | test acc % (mean ± std) | train s | infer samples/s | "
            + " | ".join(f"eff. size {100 * float(f):g}%" for f in fractions) + " | ERF area 99% |")
    lines = [head, "|" + "---|" * (8 + len(fractions))]
    for r in rows:
        extra = ", ".join(f"{k}={v}" for k, v in r["conv_kwargs"].items())
        conv = f"{r['conv']} ({r['kernel_size']}{', ' + extra if extra else ''})"
        macs = f"{r['macs']:,}" if r["macs"] is not None else "n/a"
        sizes = " | ".join(f"{r['effective_size'][f]:.1f}" for f in fractions)
        lines.append(f"| {r['label']} | {conv} | {r['params']:,} | {macs} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} "
                     f"| {r['train_time_s']:.1f} | {r['throughput']:,.0f} | {sizes} | {r['erf_area'].get('0.99', 0):.3f} |")
    return "\n".join(lines)


def _example(dataset: str, data_dir: str | None, n: int) -> torch.Tensor:
    from largekernel.data import load_dataset

    test = load_dataset(dataset, "test", data_dir)
    return torch.stack([test[i][0] for i in range(min(n, len(test)))])  # (n, C, *spatial)


def _figures(out: Path, dataset: str, records: list[dict[str, Any]]) -> list[Path]:
    """Comparison figures of one dataset, and per-family figures of each variant's lowest-seed model."""
    from largekernel.analysis import (dcls_positions, flexconv_mask_extents, gaussian_fit, kernel_layers, kernel_pca,
                                      layer_input_sizes, plots, position_histograms, spatial_kernels)
    from largekernel.train import load_checkpoint

    fig_dir = out / "figures"
    first: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        first.setdefault(rec["variant"], rec)
    order = [v for v in VARIANTS if v in first]
    written: list[Path] = []
    curves = {}
    for v in order:
        report = _family_rows(first[v]["metrics"]["kernel_report"])
        sizes = max((r["sizes"] for r in report), key=len)
        # a layer whose kernel is smaller than the window already holds all its mass there
        mean = [statistics.fmean(r["mass_ratio"][i] if i < len(r["mass_ratio"]) else 1.0 for r in report)
                for i in range(len(sizes))]
        curves[_LABELS[v]] = (sizes, mean)
    written.append(plots.plot_mass_ratio(curves, fig_dir / f"{dataset}_mass_ratio.png",
                                         f"{dataset}: kernel mass ratio (mean over blocks)"))
    written.append(plots.plot_effective_sizes(
        {_LABELS[v]: _mean_sizes(first[v]["metrics"]["kernel_report"]) for v in order},
        fig_dir / f"{dataset}_effective_size.png", f"{dataset}: effective kernel size (mean over blocks)"))
    erfs = {_LABELS[v]: torch.tensor(first[v]["metrics"]["erf"]) for v in order}
    written.append(plots.plot_erf(erfs, fig_dir / f"{dataset}_erf.png", f"{dataset}: effective receptive field"))
    example = _example(dataset, first[order[0]]["config"]["data_dir"], 1)
    for v in order:
        model, _, _ = load_checkpoint(_run_dir(out, first[v]))
        label = f"{dataset} {_LABELS[v]}"
        layers = kernel_layers(model)
        sizes = layer_input_sizes(model, example, layers)
        kernels = {name: spatial_kernels(module, sizes.get(name)) for name, module in layers}
        name = [n for n in kernels if n.startswith("blocks")][-1]
        written.append(plots.plot_kernel_gallery(kernels[name], fig_dir / f"{dataset}_{v}_kernels.png",
                                                 f"{label}: spatial kernels of {name}", max_kernels=8))
        written.append(plots.plot_kernel_gallery(kernels[name], fig_dir / f"{dataset}_{v}_spectra.png",
                                                 f"{label}: kernel spectra of {name}", spectral=True, max_kernels=8))
        if dcls_positions(model):
            written.append(plots.plot_position_histograms(position_histograms(model),
                                                          fig_dir / f"{dataset}_{v}_positions.png",
                                                          f"{label}: learned positions per block"))
        masks = flexconv_mask_extents(model)
        if masks:
            written.append(plots.plot_mask_extents(masks, fig_dir / f"{dataset}_{v}_masks.png",
                                                   f"{label}: learned kernel extent per layer"))
        if v in ("large", "niff"):
            pooled = torch.cat([k for n, k in kernels.items() if n.startswith("blocks")])  # (N, *k)
            written.append(plots.plot_gaussian_fit(gaussian_fit(pooled), fig_dir / f"{dataset}_{v}_gaussian_fit.png",
                                                   f"{label}: Gaussian fit of |kernel|"))
            written.append(plots.plot_pca(kernel_pca(pooled, 4), fig_dir / f"{dataset}_{v}_pca.png",
                                          f"{label}: principal components of the spatial kernels"))
    return written


def _report(out: Path, table: dict[str, list[dict]], figures: dict[str, list[Path]], meta: dict[str, Any]) -> str:
    lines = ["# largekernel study", "",
             "Which convolution family makes the best use of a large receptive field, and how large are the kernels "
             "the networks actually learn? The same architecture is trained with its depthwise spatial convolution "
             "replaced by each family; all other settings (recipe, seeds, data) are equal.", "",
             f"- machine: {meta['machine']['cpu']} ({meta['machine']['cores']} cores; {meta['jobs']} run(s) in "
             f"parallel, {meta['threads']} torch thread(s) each; torch {meta['machine']['torch']}, "
             f"{meta['machine']['device']})",
             f"- wall time: {meta['wall_time_s']:.0f} s ({meta['cpu_time_s']:.0f} s of CPU time) for "
             f"{meta['runs_trained']} trained run(s) ({meta['runs_cached']} taken from the cache); "
             f"training time summed over all runs: {meta['train_time_total_s']:.0f} s",
             f"- command: `{meta['command']}`", ""]
    for dataset, rows in table.items():
        cfg = meta["configs"][dataset]
        train = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("model_kwargs", "dataset", "data_dir",
                                                                            "seed", "save_best", "model"))
        arch = ", ".join(f"{k}={v}" for k, v in DATASETS[dataset].model_kwargs.items())
        lines += [f"## {dataset}", "",
                  f"Model `{cfg['model']}`{f' ({arch})' if arch else ''}; recipe: {train}; test accuracy of the "
                  f"last epoch over seeds "
                  f"{rows[0]['seeds']} (mean ± sample std).", "",
                  format_table(rows), ""]
        small = next((r for r in rows if r["variant"] == "small"), None)
        large = [r for r in rows if r["variant"] != "small"]
        if large:
            best = max(large, key=lambda r: r["acc_mean"])
            verdict = f"Best large-kernel model: **{best['label']}**, {best['acc_mean']:.2f}%"
            if small is not None:
                delta = best["acc_mean"] - small["acc_mean"]
                verdict += (f", {abs(delta):.2f} points {'above' if delta >= 0 else 'below'} the small dense "
                            f"kernel ({small['acc_mean']:.2f}%) trained with the same recipe.")
            lines += [verdict, ""]
        lines += [f"Parameters: DCLS `kernel_count` and FlexConv `hidden_channels` are chosen so that the model's "
                  f"parameter count is closest to the {meta['match']} dense model's; dilated spreads the small kernel's taps over the large extent; "
                  "large dense and FFT pay one weight per tap; NIFF and SGConv have their own fixed-size "
                  "parameterisation. The `params` column states every count. Effective size: smallest centred window "
                  "holding that share of |kernel| mass (NIFF), mean over the blocks' spatial convolutions (not the stem); ERF area: share of the input inside "
                  "the smallest centred window holding 99% of the effective receptive field (RepLKNet).", ""]
        if dataset.startswith("mnist1d"):
            lines += ["External reference, MNIST-1D paper (Greydanus 2020, test accuracy %): "
                      + ", ".join(f"{k} {v}" for k, v in MNIST1D_BASELINES.items()) + ".", ""]
        lines += ["### Figures", ""]
        for path in figures.get(dataset, []):
            rel = path.relative_to(out)
            lines += [f"![{path.stem}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def run_study(datasets: Sequence[str], out: str | Path, *, variants: Sequence[str] | None = None,
              seeds: int | None = None, epochs: int | None = None, quick: bool = False, data_dir: str | None = None,
              train_overrides: dict[str, Any] | None = None, match: str = "large", jobs: int = 1,
              threads: int | None = None, figures: bool = True, progress: bool = True,
              command: str = "largekernel study") -> dict[str, Any]:
    """Train (or take from the cache) every run, then write ``results.json``, ``report.md`` and the figures.

    ``jobs`` runs train in parallel processes of ``threads`` torch threads each
    (default: this process's thread count).

    ``train_overrides`` are extra ``TrainConfig`` fields for every run (e.g. ``{"train_subset": 500}``).

    Returns the content of ``results.json``: ``{"meta": ..., "table": {dataset: rows}, "runs": [records]}``.
    """
    from tqdm.auto import tqdm

    from largekernel.bench._harness import machine_info

    out = Path(out)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    runs = plan_runs(datasets, variants, seeds, epochs, quick, data_dir, train_overrides, match)
    records, pending = [], []
    for run in runs:
        cached = _cached(out, run)
        (records.append(cached) if cached is not None else pending.append(run))
    if records:
        print(f"{len(records)} of {len(runs)} runs already done in {out / 'runs'}: skipped")
    with tqdm(total=len(pending), desc="study", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for record in _execute(out, pending, jobs, threads):
            bar.set_postfix_str(f"{record['dataset']}/{record['variant']}/seed{record['seed']} "
                                f"{record['metrics']['acc']:.1f}%")
            bar.update()
            records.append(record)
    table = aggregate(records)
    written: dict[str, list[Path]] = {}
    if figures:
        for dataset in table:
            written[dataset] = _figures(out, dataset, [r for r in records if r["dataset"] == dataset])
    configs = {}
    for run in runs:
        configs.setdefault(run["dataset"], {k: v for k, v in run["config"].items()})
    meta = {"machine": machine_info(), "threads": threads or torch.get_num_threads(), "jobs": jobs,
            "python": platform.python_version(), "wall_time_s": time.perf_counter() - start,
            "cpu_time_s": _cpu_seconds() - cpu_start,
            "train_time_total_s": sum(r["metrics"]["train_time_s"] for r in records),
            "runs_trained": len(pending), "runs_cached": len(records) - len(pending), "command": command,
            "match": match, "configs": configs}
    results = {"meta": meta, "table": table,
               "runs": [{k: v for k, v in r.items() if k != "metrics"}
                        | {"metrics": {k: v for k, v in r["metrics"].items() if k not in ("kernel_report", "erf")}}
                        for r in records]}
    _write_json(out / "results.json", results)
    (out / "report.md").write_text(_report(out, table, written, meta))
    return results


def _parser() -> ArgumentParser:
    p = ArgumentParser(  # dashed flags, underscores accepted, one-line errors
        prog="largekernel study",
        description="Train one architecture with every convolution family at matched parameters and report "
                    "accuracy, cost and the effective kernel size (default: MNIST-1D and digits, offline).")
    p.add_argument("--dataset", nargs="+", default=None, choices=sorted(DATASETS), dest="datasets",
                   help="datasets to study (default: mnist1d digits)")
    p.add_argument("--data-dir", default=None, help="directory of file-backed datasets (cifar10)")
    p.add_argument("--models", nargs="+", default=None, choices=VARIANTS, metavar="VARIANT",
                   help=f"variants to train (default: all the dataset supports): {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: 2, 1 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: per dataset)")
    p.add_argument("--out", default="study", help="output directory (default: study/)")
    p.add_argument("--quick", action="store_true", help="a few epochs and one seed: a smoke run in ~2 minutes")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained in parallel processes (default: 2, or 1 on a single core)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1: these small models run fastest single-threaded, "
                        "so the cores go to parallel runs)")
    p.add_argument("--match", choices=("large", "small"), default="large",
                   help="whose parameter count DCLS and FlexConv are sized to (default: the large dense model)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for name in ("seeds", "epochs", "threads", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"largekernel study: --{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    datasets = args.datasets or ["mnist1d", "digits"]
    if "cifar10" in datasets and args.data_dir is None:
        print("largekernel study: --dataset cifar10 needs --data-dir DIR (the cifar-10-batches-py folder)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        results = run_study(datasets, args.out, variants=args.models, seeds=args.seeds, epochs=args.epochs,
                            quick=args.quick, data_dir=args.data_dir, match=args.match, jobs=args.jobs,
                            threads=args.threads, figures=not args.no_figures,
                            progress=not args.no_progress, command=" ".join(["largekernel study", *argv]))
    except KeyboardInterrupt:
        print(f"\nlargekernel study: interrupted; finished runs are cached in {Path(args.out) / 'runs'}, "
              "run the same command again to continue", file=sys.stderr)
        return 130
    for dataset, rows in results["table"].items():
        print(f"\n## {dataset}\n")
        print(format_table(rows))
    out = Path(args.out)
    print(f"\nwrote {out / 'report.md'} and {out / 'results.json'} ({results['meta']['wall_time_s']:.0f} s)")
    return 0
