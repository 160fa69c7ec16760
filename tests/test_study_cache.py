"""The study cache trusts nothing: every corrupt or foreign ``result.json`` is reported and retrained, never used,
never fatal (random bytes, ``[]``, ``null``, a missing key, a string for a number, acc 1e9, params -5, NaN, an
edited config, a truncated checkpoint, a garbled ``study_config.json``)."""

import json
import random
import shutil

import pytest

from largekernel.study import cache, pipeline
from largekernel.study.runs import run_dir

TINY = {"train_subset": 96, "test_subset": 64, "batch_size": 32}


def _study(out):
    return pipeline.run_study(["digits"], out, variants=["small"], seeds=1, epochs=1, train_overrides=TINY,
                              sweep=False, figures=False, progress=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine")
    results = _study(out)
    return out, results["runs"][0]


def _edit(key_path, value):
    def edit(directory):
        record = json.loads((directory / "result.json").read_text())
        target = record
        for key in key_path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[key_path[-1]]
        else:
            target[key_path[-1]] = value
        (directory / "result.json").write_text(json.dumps(record))
    return edit


def _truncate(directory):
    path = directory / "checkpoints" / "last" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CASES = {
    "random bytes": (lambda d: (d / "result.json").write_bytes(random.Random(0).randbytes(4096)), "unreadable"),
    "empty list": (lambda d: (d / "result.json").write_text("[]"), "expected a JSON object"),
    "null": (lambda d: (d / "result.json").write_text("null"), "expected a JSON object"),
    "missing key": (_edit(("metrics", "acc"), KeyError), "metrics.acc: missing"),
    "non-number": (_edit(("metrics", "params"), "many"), "metrics.params: got 'many', expected an integer"),
    "acc 1e9": (_edit(("metrics", "acc"), 1e9), "metrics.acc: got 1000000000.0, expected a finite number <= 100"),
    "params -5": (_edit(("metrics", "params"), -5), "metrics.params: got -5, expected an integer > 0"),
    "NaN": (lambda d: (d / "result.json").write_text((d / "result.json").read_text().replace(
        '"throughput": ', '"throughput": NaN, "x": ', 1)), "NaN is not a JSON number"),
    "edited config": (_edit(("config", "epochs"), 7), "config: got"),
    "foreign hash": (_edit(("config_hash",), "0" * 64), "config_hash"),
    "truncated checkpoint": (_truncate, "checkpoint does not load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_cache_entry_is_reported_and_retrained(case, pristine, tmp_path, monkeypatch):
    source, record = pristine
    out = tmp_path / "study"
    shutil.copytree(source, out)
    run = {k: record[k] for k in ("dataset", "resolution", "point", "variant", "seed", "config")}
    directory = run_dir(out, run)
    corrupt, reason = CASES[case]
    corrupt(directory)
    trained = []

    def retrain(out_, run_):  # stands in for training: puts the pristine run back (real retraining: below)
        trained.append(run_["variant"])
        shutil.rmtree(run_dir(out_, run_))
        shutil.copytree(run_dir(source, run_), run_dir(out_, run_))
        return json.loads((run_dir(out_, run_) / "result.json").read_text())

    monkeypatch.setattr(pipeline, "train_one", retrain)
    results = _study(out)
    assert trained == ["small"]
    [problem] = results["meta"]["invalid_cache"]
    assert str(directory) in problem and reason in problem
    assert "failed validation and were retrained" in (out / "report.md").read_text()
    assert results["table"]["digits_8"][0]["acc_mean"] == pytest.approx(record["metrics"]["acc"])
    assert cache.load_result(directory, run, dims=2) == (json.loads((directory / "result.json").read_text()), None)


def test_invalid_result_and_garbled_marker_retrain_for_real(pristine, tmp_path, monkeypatch):
    source, record = pristine
    out = tmp_path / "study"
    shutil.copytree(source, out)
    run = {k: record[k] for k in ("dataset", "resolution", "point", "variant", "seed", "config")}
    directory = run_dir(out, run)
    _edit(("metrics", "acc"), 1e9)(directory)
    again = _study(out)  # the real trainer: the refused run is trained from scratch
    assert again["meta"]["runs_trained"] == 1 and len(again["meta"]["invalid_cache"]) == 1
    assert again["runs"][0]["metrics"]["acc"] == pytest.approx(record["metrics"]["acc"])  # deterministic
    # an interrupted run whose marker is garbled: no crash, trained again from scratch
    (directory / "result.json").unlink()
    (directory / "study_config.json").write_bytes(b"\xff{garbled")
    third = _study(out)
    assert third["meta"]["runs_trained"] == 1 and third["meta"]["invalid_cache"] == []
    assert third["runs"][0]["metrics"]["acc"] == pytest.approx(record["metrics"]["acc"])
    assert json.loads((directory / "study_config.json").read_text()) == run["config"]


def test_check_result_names_the_field():
    with pytest.raises(cache.InvalidRecord, match=r"record: got \[\], expected a JSON object"):
        cache.check_result([], {"config": {}}, dims=1)
    job = {"source": {"config": {"epochs": 1}}, "target": 32, "finetune_samples": 1024}
    config = cache.transfer_config(job)
    record = {"target": 32, "config": config, "config_hash": cache.config_hash(config),
              "metrics": {"acc": 50.0, "finetuned_acc": 60.0, "n_test": 450, "finetune_time_s": 1.0}}
    cache.check_transfer(record, job)
    for key, value, expected in (("finetuned_acc", 1e9, "<= 100"), ("n_test", 0, "> 0"), ("acc", True, "number")):
        with pytest.raises(cache.InvalidRecord, match=f"metrics.{key}: got {value!r}, expected .*{expected}"):
            cache.check_transfer({**record, "metrics": {**record["metrics"], key: value}}, job)
    with pytest.raises(cache.InvalidRecord, match="target"):
        cache.check_transfer({**record, "target": 16}, job)
    assert cache.config_hash({"b": 1, "a": [1, 2]}) == cache.config_hash({"a": [1, 2], "b": 1})
    assert cache.config_hash({"a": 1}) != cache.config_hash({"a": 2})
