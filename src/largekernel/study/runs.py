"""One study run: train (or resume) a planned configuration, measure the model, cache the record.

Every run lives in ``runs/<point>/<variant>/seed<k>/``: checkpoints, logs, the
configuration it was started with (``study_config.json``) and, once finished,
``result.json`` (written atomically; checked by :mod:`largekernel.study.cache`
before a rerun trusts it). Runs train in parallel worker processes.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from largekernel.study.cache import InvalidRecord, config_hash, jsonable, read_json, write_json
from largekernel.study.plan import TRANSFORMER_VARIANTS

__all__ = ["run_dir", "train_one", "workers", "execute", "example_inputs", "mean_sizes", "family_rows"]

_TIMED_POSITIONS = 1 << 16  # throughput batch: up to 256 samples, at most this many input positions in all
_PATH_POSITIONS = 1 << 14  # path check: up to 64 test inputs, at most this many positions (the direct path is slow)


def run_dir(out: Path, run: dict[str, Any]) -> Path:
    return out / "runs" / run["point"] / run["variant"] / f"seed{run['seed']}"


def example_inputs(config: dict[str, Any], n: int, split: str = "test") -> torch.Tensor:
    """The first ``n`` inputs of ``split`` of a run's dataset, at its resolution: ``(n, C, *spatial)``."""
    from largekernel.data import load_dataset

    data = load_dataset(config["dataset"], split, config["data_dir"], **config.get("dataset_kwargs", {}))
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])


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


def family_rows(report: list[dict]) -> list[dict]:
    """The rows of the layers the variants differ in: all but the (shared, dense) stem."""
    rows = [r for r in report if r["stage"] != "stem"]
    return rows or report


def mean_sizes(report: list[dict]) -> dict[str, float]:
    rows = family_rows(report)
    return {f: statistics.fmean(r["effective_size"][f] for r in rows) for f in rows[0]["effective_size"]}


def _path_check(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Seed 003's experiment on a trained dense model: the same weights applied by the direct and the FFT path —
    prediction agreement, largest logit difference and the inference throughput of each."""
    from largekernel import nn as lnn

    convs = [m for m in model.modules() if isinstance(m, (lnn.Conv1d, lnn.Conv2d, lnn.Conv3d))]
    chosen = [m.backend for m in convs]
    outputs, speed = {}, {}
    try:
        for backend in ("direct", "fft"):
            for m in convs:
                m.backend = backend
            with torch.no_grad():
                outputs[backend] = model.eval()(x)  # (N, classes)
            speed[backend] = _throughput(model, x, repeats=1)
    finally:
        for m, backend in zip(convs, chosen):
            m.backend = backend
    agree = (outputs["direct"].argmax(-1) == outputs["fft"].argmax(-1)).double().mean().item()
    return {"agreement": agree, "max_abs_diff": (outputs["direct"] - outputs["fft"]).abs().max().item(),
            "samples": x.shape[0], "direct_throughput": speed["direct"], "fft_throughput": speed["fft"]}


def _measure(model: torch.nn.Module, variant: str, x_test: torch.Tensor) -> dict[str, Any]:
    """Kernel sizes, ERF, mask extents, MACs and inference throughput (``backend="auto"``: the planner's
    deterministic choices, the speed a user gets by default)."""
    from largekernel.analysis import (count, effective_receptive_field, erf_area_ratios, flexconv_mask_extents,
                                      kernel_size_report)

    model.eval()
    metrics: dict[str, Any] = {"effective_size": None, "kernel_report": [], "erf": None, "erf_area": None}
    if variant not in TRANSFORMER_VARIANTS:  # token mixers have no spatial kernel and no spatial feature map
        report = kernel_size_report(model, x_test[:2])
        erf = effective_receptive_field(model, x_test[:64])
        metrics = {"effective_size": mean_sizes(report), "kernel_report": report, "erf": erf.tolist(),
                   "erf_area": erf_area_ratios(erf)}
    metrics["mask_extents"] = [row["extent"] for row in flexconv_mask_extents(model)]
    try:
        metrics["macs"] = count(model, (1, *x_test.shape[1:])).macs
    except Exception as err:  # noqa: BLE001 - a counting failure must not lose a trained run
        print(f"warning: MAC count failed ({type(err).__name__}: {err})", file=sys.stderr)
        metrics["macs"] = None
    metrics["paths"] = _path_check(model, x_test[:_batch(x_test, 64, _PATH_POSITIONS)]) if variant == "large" else None
    metrics["throughput"] = _throughput(model, x_test[:_batch(x_test, 256, _TIMED_POSITIONS)])
    return metrics


def _batch(x: torch.Tensor, samples: int, positions: int) -> int:
    """At most ``samples`` inputs of ``x`` and ``positions`` input positions in all: a bounded time per pass."""
    return max(1, min(samples, positions // x[0, 0].numel()))


def _started_with(marker: Path, config: Any) -> bool:
    try:
        return read_json(marker) == config
    except InvalidRecord:
        return False


def _fresh(directory: Path, config: Any) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    write_json(directory / "study_config.json", config)


def train_one(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one planned run and cache its record. ``backend="auto"`` decides from the planner's cost
    model alone (the library's default), so a run's accuracy does not depend on the machine's load."""
    from largekernel.train import TrainConfig, load_checkpoint, train

    directory = run_dir(out, run)
    config = jsonable(run["config"])
    # resume only a run started with this very configuration; anything else there (a stale or garbled marker, a
    # result the cache refused) is removed
    if not _started_with(directory / "study_config.json", config) or (directory / "result.json").exists():
        _fresh(directory, config)
    cfg = TrainConfig(**run["config"], output_dir=str(directory), resume=True)
    resuming = (directory / "checkpoints").exists()
    try:
        with warnings.catch_warnings():  # a new run has nothing to resume: no need to say so
            warnings.filterwarnings("ignore", message="resume: no checkpoint in ", category=UserWarning)
            result = train(cfg, progress=False)
    except Exception as err:  # noqa: BLE001 - only a resume is retried: a fresh failure propagates below
        if not resuming:
            raise
        print(f"warning: {directory}: resuming failed ({type(err).__name__}: {err}); training from scratch",
              file=sys.stderr)
        _fresh(directory, config)
        result = train(cfg, progress=False)
    model, _, _ = load_checkpoint(directory)
    x_test = example_inputs(run["config"], 256)  # (256, C, *spatial)
    metrics = {"acc": 100 * result["last_acc"], "best_acc": 100 * result["best_acc"], "params": result["params"],
               "n_test": _test_size(run["config"]), "train_time_s": result["train_time_s"], "epochs": result["epochs"],
               "history": [h["test_acc"] for h in result["history"]],
               **_measure(model, run["variant"], x_test)}
    record = {"dataset": run["dataset"], "resolution": run["resolution"], "point": run["point"],
              "variant": run["variant"], "seed": run["seed"], "config": config, "config_hash": config_hash(config),
              "metrics": metrics}
    write_json(directory / "result.json", record)
    return record


def _test_size(config: dict[str, Any]) -> int:
    from largekernel.data import load_dataset

    n = len(load_dataset(config["dataset"], "test", config["data_dir"], **config.get("dataset_kwargs", {})))
    return min(n, config.get("test_subset") or n)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


@contextlib.contextmanager
def workers(jobs: int, threads: int | None) -> Iterator[Any]:
    """A pool of ``jobs`` worker processes of ``threads`` torch threads each (None for ``jobs <= 1``: run inline),
    shared by the study's phases so that each worker imports torch once."""
    if jobs <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit torch's thread pools mid-state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads or torch.get_num_threads(),)) as pool:
        yield pool


def execute(fn: Callable[[Path, dict[str, Any]], dict[str, Any]], out: Path, pending: list[dict[str, Any]],
            pool: Any) -> Iterator[dict[str, Any]]:
    """Run ``fn(out, item)`` for every pending item in ``pool`` (inline when None), yielding each result as it
    finishes."""
    if pool is None or len(pending) <= 1:
        for item in pending:
            yield fn(out, item)
        return
    from concurrent.futures import as_completed

    futures = [pool.submit(fn, out, item) for item in _costliest_first(pending)]
    try:
        for future in as_completed(futures):
            yield future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _costliest_first(pending: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long runs first, so that the workers do not end with one long run left alone."""
    return sorted(pending, key=lambda item: -item.get("cost", 0))
