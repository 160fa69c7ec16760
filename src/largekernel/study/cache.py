"""The study's run cache: every ``result.json`` checked against its schema before it is trusted.

A finished run leaves ``result.json`` next to its checkpoints; a rerun skips it
only when the file parses, every field has its type and range (finite numbers,
accuracies in [0, 100] %, parameter counts > 0 ...), the record names the run it
belongs to, its configuration and the hash of that configuration match the
planned run, and the checkpoint it describes loads. Anything else — random
bytes, ``[]``, ``null``, a missing key, a string where a number belongs, an
accuracy of 1e9, a truncated checkpoint — is reported with the reason and the
run is trained again; it is never used and never stops the study.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from largekernel import _files

__all__ = ["config_hash", "jsonable", "write_json", "read_json", "check_result", "check_transfer", "transfer_config",
           "load_result", "load_transfer", "InvalidRecord"]

_FRACTIONS = ("0.5", "0.9", "0.99")  # largekernel.analysis.kernels.DEFAULT_FRACTIONS
_ERF_THRESHOLDS = ("0.2", "0.3", "0.5", "0.99")  # largekernel.analysis.erf.ERF_THRESHOLDS


class InvalidRecord(ValueError):
    """A cached record that must not be used; the message says which field is wrong and how."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(obj: Any) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys): the identity of a run's configuration."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON whole (:func:`largekernel._files.replacing`): a reader never sees half a file."""
    _files.write_json(path, obj, allow_nan=False)


def _reject_constant(name: str) -> float:
    # NaN / Infinity are not JSON: a file holding them was not written by the study
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; :class:`InvalidRecord` for anything unreadable."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidRecord(f"unreadable ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------ field checks


def _fail(where: str, value: Any, expected: str) -> InvalidRecord:
    text = repr(value)
    return InvalidRecord(f"{where}: got {text[:60] + '...' if len(text) > 60 else text}, expected {expected}")


def _get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _fail(where, obj, "an object")
    if key not in obj:
        raise InvalidRecord(f"{where}.{key}: missing")
    return obj[key]


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None, *,
            integer: bool = False, above: bool = False) -> float:
    """``value`` if it is a finite number (an int when ``integer``) within ``[lo, hi]`` (``> lo`` when ``above``)."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _fail(where, value, kind)
    if not math.isfinite(value):
        raise _fail(where, value, kind)
    if lo is not None and (value <= lo if above else value < lo):
        raise _fail(where, value, f"{kind} {'>' if above else '>='} {lo}")
    if hi is not None and value > hi:
        raise _fail(where, value, f"{kind} <= {hi}")
    return value


def _list(value: Any, where: str, *, nonempty: bool = False) -> list:
    if not isinstance(value, list) or (nonempty and not value):
        raise _fail(where, value, "a non-empty list" if nonempty else "a list")
    return value


def _sizes(value: Any, where: str, keys: tuple[str, ...]) -> None:
    """A ``{fraction: size}`` map with exactly ``keys``, sizes >= 0."""
    if not isinstance(value, dict) or sorted(value) != sorted(keys):
        raise _fail(where, value, f"an object with keys {list(keys)}")
    for key in keys:
        _number(value[key], f"{where}.{key}", 0)


def _accuracy(value: Any, where: str) -> float:
    return _number(value, where, 0, 100)


def _check_kernel_report(report: Any, where: str) -> None:
    for i, row in enumerate(_list(report, where)):
        at = f"{where}[{i}]"
        if not isinstance(_get(row, "stage", at), str):
            raise _fail(f"{at}.stage", row["stage"], "a string")
        sizes = _list(_get(row, "sizes", at), f"{at}.sizes", nonempty=True)
        for j, size in enumerate(sizes):
            _number(size, f"{at}.sizes[{j}]", 1, integer=True)
        ratios = _list(_get(row, "mass_ratio", at), f"{at}.mass_ratio", nonempty=True)
        for j, ratio in enumerate(ratios):
            _number(ratio, f"{at}.mass_ratio[{j}]", 0, 1 + 1e-6)
        _sizes(_get(row, "effective_size", at), f"{at}.effective_size", _FRACTIONS)


def _check_erf(erf: Any, where: str, dims: int) -> None:
    rows = [erf] if dims == 1 else _list(erf, where, nonempty=True)
    width = None
    for i, row in enumerate(rows):
        at = where if dims == 1 else f"{where}[{i}]"
        _list(row, at, nonempty=True)
        if width is not None and len(row) != width:
            raise _fail(at, f"{len(row)} values", f"{width} values, like the rows before it")
        width = len(row)
        for j, value in enumerate(row):
            _number(value, f"{at}[{j}]", 0)


def _check_paths(paths: Any, where: str) -> None:
    _number(_get(paths, "agreement", where), f"{where}.agreement", 0, 1)
    _number(_get(paths, "max_abs_diff", where), f"{where}.max_abs_diff", 0)
    _number(_get(paths, "samples", where), f"{where}.samples", 1, integer=True)
    for key in ("direct_throughput", "fft_throughput"):
        _number(_get(paths, key, where), f"{where}.{key}", 0, above=True)


def _check_metrics(m: Any, dims: int) -> None:
    w = "metrics"
    for key in ("acc", "best_acc"):
        _accuracy(_get(m, key, w), f"{w}.{key}")
    _number(_get(m, "params", w), f"{w}.params", 0, integer=True, above=True)
    _number(_get(m, "n_test", w), f"{w}.n_test", 0, integer=True, above=True)
    _number(_get(m, "train_time_s", w), f"{w}.train_time_s", 0)
    _number(_get(m, "epochs", w), f"{w}.epochs", 1, integer=True)
    _number(_get(m, "throughput", w), f"{w}.throughput", 0, above=True)
    for i, acc in enumerate(_list(_get(m, "history", w), f"{w}.history", nonempty=True)):
        _number(acc, f"{w}.history[{i}]", 0, 1)
    macs = _get(m, "macs", w)
    if macs is not None:
        _number(macs, f"{w}.macs", 0, integer=True, above=True)
    sizes = _get(m, "effective_size", w)
    if sizes is not None:  # None: a model without spatial kernels (ViT, FiT)
        _sizes(sizes, f"{w}.effective_size", _FRACTIONS)
        _check_kernel_report(_get(m, "kernel_report", w), f"{w}.kernel_report")
        _check_erf(_get(m, "erf", w), f"{w}.erf", dims)
        area = _get(m, "erf_area", w)
        if not isinstance(area, dict) or sorted(area) != sorted(_ERF_THRESHOLDS):
            raise _fail(f"{w}.erf_area", area, f"an object with keys {list(_ERF_THRESHOLDS)}")
        for key, value in area.items():
            _number(_get(value, "side", f"{w}.erf_area.{key}"), f"{w}.erf_area.{key}.side", 1, integer=True)
            _number(_get(value, "area_ratio", f"{w}.erf_area.{key}"), f"{w}.erf_area.{key}.area_ratio", 0, 1)
    for i, layer in enumerate(_list(_get(m, "mask_extents", w), f"{w}.mask_extents")):
        for j, extent in enumerate(_list(layer, f"{w}.mask_extents[{i}]", nonempty=True)):
            _number(extent, f"{w}.mask_extents[{i}][{j}]", 0, above=True)
    paths = _get(m, "paths", w)
    if paths is not None:
        _check_paths(paths, f"{w}.paths")


def _check_identity(record: Any, expected: dict[str, Any], keys: tuple[str, ...]) -> None:
    if not isinstance(record, dict):
        raise _fail("record", record, "a JSON object")
    for key in keys:
        if _get(record, key, "record") != expected[key]:
            raise _fail(key, record[key], repr(expected[key]))
    if _get(record, "config_hash", "record") != config_hash(expected["config"]):
        raise _fail("config_hash", record["config_hash"], "the hash of the planned configuration")
    if config_hash(record["config"]) != record["config_hash"]:
        raise InvalidRecord("config_hash: does not match the record's own config (edited after it was written)")


def check_result(record: Any, run: dict[str, Any], dims: int) -> None:
    """Raise :class:`InvalidRecord` unless ``record`` is a complete, in-range ``result.json`` of ``run``."""
    _check_identity(record, {**run, "config": jsonable(run["config"])},
                    ("dataset", "resolution", "point", "variant", "seed", "config"))
    _check_metrics(_get(record, "metrics", "record"), dims)


def check_transfer(record: Any, job: dict[str, Any]) -> None:
    """Raise :class:`InvalidRecord` unless ``record`` is a complete cross-resolution result of ``job``."""
    _check_identity(record, {**job, "config": transfer_config(job)}, ("target", "config"))
    m = _get(record, "metrics", "record")
    for key in ("acc", "finetuned_acc"):
        _accuracy(_get(m, key, "metrics"), f"metrics.{key}")
    _number(_get(m, "n_test", "metrics"), "metrics.n_test", 0, integer=True, above=True)
    _number(_get(m, "finetune_time_s", "metrics"), "metrics.finetune_time_s", 0)


def transfer_config(job: dict[str, Any]) -> dict[str, Any]:
    """What a cross-resolution result depends on: the source run's configuration, the target, the fine-tune."""
    return {"source": jsonable(job["source"]["config"]), "target": job["target"],
            "finetune_samples": job["finetune_samples"]}


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists): what a stored config is compared against."""
    return json.loads(json.dumps(obj))


def _checkpoint_problem(run_dir: Path) -> str | None:
    from largekernel.train import load_checkpoint

    try:
        load_checkpoint(run_dir)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, the run is retrained
        return f"checkpoint does not load ({type(err).__name__}: {str(err)[:200]})"
    return None


def load_result(run_dir: Path, run: dict[str, Any], dims: int) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` for a valid cached run, ``(None, None)`` when there is none, ``(None, why)`` when the
    cache holds something that must not be used."""
    path = run_dir / "result.json"
    if not path.exists():
        return None, None
    try:
        record = read_json(path)
        check_result(record, run, dims)
    except InvalidRecord as err:
        return None, f"{path}: {err}"
    problem = _checkpoint_problem(run_dir)
    return (None, f"{run_dir}: {problem}") if problem else (record, None)


def load_transfer(path: Path, job: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Like :func:`load_result`, for one cross-resolution record."""
    if not path.exists():
        return None, None
    try:
        record = read_json(path)
        check_transfer(record, job)
    except InvalidRecord as err:
        return None, f"{path}: {err}"
    return record, None
