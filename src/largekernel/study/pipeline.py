"""``run_study``: plan, take valid runs from the cache, train the rest, cross-resolution, claims, figures, report."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from largekernel._files import write_text
from largekernel.study.cache import load_result, load_transfer, write_json
from largekernel.study.claims import format_claims, judge_claims
from largekernel.study.crossres import transfer_one, transfer_path
from largekernel.study.figures import draw, figure_jobs
from largekernel.study.plan import DATASETS, plan_runs, plan_transfers
from largekernel.study.report import aggregate, render
from largekernel.study.runs import execute, run_dir, train_one, workers

__all__ = ["run_study"]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the parallel runs), user + system."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _from_cache(out: Path, items: list[dict], load, invalid: list[str]) -> tuple[list[dict], list[dict]]:
    """``(cached records, pending items)``; every refused cache entry is reported and appended to ``invalid``."""
    done, pending = [], []
    for item in items:
        record, problem = load(out, item)
        if problem is not None:
            print(f"warning: {problem}; retraining", file=sys.stderr)
            invalid.append(problem)
        (done.append(record) if record is not None else pending.append(item))
    return done, pending


def _points(runs: list[dict], records: list[dict]) -> dict[str, dict[str, Any]]:
    points: dict[str, dict[str, Any]] = {}
    for run in runs:
        plan = DATASETS[run["dataset"]]
        points.setdefault(run["point"], {"dataset": run["dataset"], "resolution": run["resolution"],
                                         "native": run["resolution"] == plan.resolutions[0],
                                         "extent": run["resolution"], "n_test": None})
    for rec in records:
        n = rec["metrics"]["n_test"]
        point = points[rec["point"]]
        point["n_test"] = n if point["n_test"] is None else min(point["n_test"], n)
    return points


def _progress(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not progress or total == 0, dynamic_ncols=True)


def run_study(datasets: Sequence[str], out: str | Path, *, variants: Sequence[str] | None = None,
              seeds: int | None = None, epochs: int | None = None, quick: bool = False, data_dir: str | None = None,
              train_overrides: dict[str, Any] | None = None, match: str = "large", sweep: bool = True,
              jobs: int = 1, threads: int | None = None, figures: bool = True, progress: bool = True,
              command: str = "largekernel study") -> dict[str, Any]:
    """Train (or take from the cache) every run, then write ``results.json``, ``report.md`` and the figures.

    ``sweep=False`` trains the native resolution of each dataset only. ``jobs`` runs train in parallel
    processes of ``threads`` torch threads each (default: this process's thread count).
    ``train_overrides`` are extra ``TrainConfig`` fields for every run (e.g. ``{"train_subset": 500}``).

    Returns the content of ``results.json``: ``{"meta", "points", "table": {point: rows}, "claims", "runs",
    "transfers"}``.
    """
    from largekernel.bench._harness import machine_info

    out = Path(out)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    runs = plan_runs(datasets, variants, seeds, epochs, quick, data_dir, train_overrides, match, sweep)
    invalid: list[str] = []
    records, pending = _from_cache(out, runs, lambda o, r: load_result(run_dir(o, r), r, r["dims"]),
                                   invalid)
    if records:
        print(f"{len(records)} of {len(runs)} runs already done in {out / 'runs'}: skipped")
    written: dict[str, list[Path]] = {}
    with workers(jobs, threads) as pool:
        with _progress(len(pending), "study", progress) as bar:
            for record in execute(train_one, out, pending, pool):
                bar.set_postfix_str(f"{record['point']}/{record['variant']}/seed{record['seed']} "
                                    f"{record['metrics']['acc']:.1f}%")
                bar.update()
                records.append(record)
        planned = {(r["point"], r["variant"], r["seed"]): i for i, r in enumerate(runs)}
        records.sort(key=lambda r: planned[r["point"], r["variant"], r["seed"]])  # the plan's order, not the finish
        transfers, todo = _from_cache(out, plan_transfers(runs),
                                      lambda o, j: _with_job(load_transfer(transfer_path(o, j), j), j), invalid)
        with _progress(len(todo), "cross-resolution", progress) as bar:
            for record in execute(transfer_one, out, todo, pool):
                bar.update()
                transfers.append(record)
        table = aggregate(records, transfers)
        points = _points(runs, records)
        claims = judge_claims(table, points)
        if figures:
            for drawn in execute(draw, out, figure_jobs(records, table, points), pool):
                written[drawn["key"]] = drawn["paths"]
    configs = {}
    for run in runs:
        configs.setdefault(run["point"], dict(run["config"]))
    meta = {"machine": machine_info(), "threads": threads or torch.get_num_threads(), "jobs": jobs,
            "python": platform.python_version(), "wall_time_s": time.perf_counter() - start,
            "cpu_time_s": _cpu_seconds() - cpu_start,
            "train_time_total_s": sum(r["metrics"]["train_time_s"] for r in records),
            "runs_trained": len(pending), "runs_cached": len(records) - len(pending),
            "transfers_done": len(todo), "transfers_cached": len(transfers) - len(todo),
            "invalid_cache": invalid, "command": command, "match": match, "configs": configs}
    results = {"meta": meta, "points": points, "table": table, "claims": claims,
               "runs": [{k: v for k, v in r.items() if k != "metrics"}
                        | {"metrics": {k: v for k, v in r["metrics"].items() if k not in ("kernel_report", "erf")}}
                        for r in records],
               "transfers": [{k: v for k, v in t.items() if k != "job"}
                             | {"source": {k: t["job"]["source"][k] for k in ("point", "variant", "seed")}}
                             for t in transfers]}
    write_json(out / "results.json", results)
    write_text(out / "report.md", render(out, table, points, format_claims(claims), written, meta))
    return results


def _with_job(loaded: tuple[dict | None, str | None], job: dict) -> tuple[dict | None, str | None]:
    record, problem = loaded
    return ({**record, "job": job} if record is not None else None), problem
