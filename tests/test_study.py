"""`largekernel study`: cached runs are skipped, results aggregate correctly, the report is written."""

import json
import statistics

import pytest

from largekernel import study

TINY = {"train_subset": 96, "test_subset": 64, "batch_size": 32}


def _run(tmp_path, **kw):
    return study.run_study(["digits"], tmp_path, variants=["small", "dcls"], seeds=1, epochs=1,
                           train_overrides=TINY, match="small", progress=False, **kw)


def test_study_writes_report_and_skips_cached_runs(tmp_path, monkeypatch):
    trained = []
    real = study._train_one
    monkeypatch.setattr(study, "_train_one", lambda out, run: trained.append(run["variant"]) or real(out, run))
    results = _run(tmp_path)
    assert trained == ["small", "dcls"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"] == json.loads(json.dumps(results["table"]))
    rows = {r["variant"]: r for r in saved["table"]["digits"]}
    for variant in ("small", "dcls"):
        record = json.loads((tmp_path / "runs" / "digits" / variant / "seed0" / "result.json").read_text())
        assert rows[variant]["acc_mean"] == pytest.approx(record["metrics"]["acc"])
        assert rows[variant]["params"] == record["metrics"]["params"] > 0
        assert 0 <= record["metrics"]["acc"] <= 100
    report = (tmp_path / "report.md").read_text()
    assert "| small dense |" in report and "| DCLS |" in report
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert {"digits_mass_ratio.png", "digits_erf.png", "digits_effective_size.png", "digits_dcls_positions.png",
            "digits_small_kernels.png"} <= set(figures)
    for name in figures:  # every figure linked from the report
        assert f"figures/{name}" in report

    # a rerun trains nothing; deleting one cache file retrains exactly that run
    trained.clear()
    again = _run(tmp_path, figures=False)
    assert trained == []
    assert again["meta"]["runs_cached"] == 2
    (tmp_path / "runs" / "digits" / "dcls" / "seed0" / "result.json").unlink()
    _run(tmp_path, figures=False)
    assert trained == ["dcls"]
    # a changed setting (more epochs) invalidates the cache of the runs it changes
    trained.clear()
    study.run_study(["digits"], tmp_path, variants=["small"], seeds=1, epochs=2, train_overrides=TINY,
                    match="small", progress=False, figures=False)
    assert trained == ["small"]
    marker = json.loads((tmp_path / "runs" / "digits" / "small" / "seed0" / "study_config.json").read_text())
    assert marker["epochs"] == 2


def _record(variant, seed, acc, params=100):
    metrics = {"acc": acc, "params": params, "macs": 10, "train_time_s": 1.0 + seed, "throughput": 50.0,
               "effective_size": {"0.5": 1.0 + seed, "0.9": 3.0}, "erf_area": {"0.99": {"side": 3, "area_ratio": 0.5}}}
    return {"dataset": "mnist1d", "variant": variant, "seed": seed,
            "config": {"model_kwargs": {"conv": "conv", "kernel_size": 5}}, "metrics": metrics}


def test_aggregate_mean_and_sample_std():
    table = study.aggregate([_record("large", 0, 90.0), _record("small", 0, 80.0), _record("large", 1, 94.0),
                             _record("large", 2, 95.0)])
    rows = table["mnist1d"]
    assert [r["variant"] for r in rows] == ["small", "large"]  # the study's fixed order
    large = rows[1]
    assert large["acc_mean"] == pytest.approx(93.0)
    assert large["acc_std"] == pytest.approx(((9 + 1 + 4) / 2) ** 0.5)  # sample std, n - 1 = 2
    assert large["seeds"] == [0, 1, 2]
    assert large["train_time_s"] == pytest.approx(2.0)
    assert large["effective_size"] == {"0.5": pytest.approx(2.0), "0.9": pytest.approx(3.0)}
    assert rows[0]["acc_std"] == 0.0
    assert statistics.fmean(large["accs"]) == pytest.approx(large["acc_mean"])
    assert "93.00 ± 2.65" in study.format_table(rows)


def test_plan_matches_parameters_and_validates():
    runs = study.plan_runs(["mnist1d"], ["large", "dcls"], seeds=2, epochs=3)
    assert [(r["variant"], r["seed"]) for r in runs] == [("large", 0), ("large", 1), ("dcls", 0), ("dcls", 1)]
    from largekernel.data import dataset_info

    info = dataset_info("mnist1d")
    plan = study.DATASETS["mnist1d"]
    large = study._num_params(study._build(plan, info, runs[0]["config"]["model_kwargs"]))
    dcls = study._num_params(study._build(plan, info, runs[2]["config"]["model_kwargs"]))
    count = runs[2]["config"]["model_kwargs"]["conv_kwargs"]["kernel_count"]
    # each 1-D DCLS kernel element adds a weight and a position per channel of every block: within half a step
    step = 2 * 32 * plan.model_kwargs.get("depth", 2)
    assert abs(dcls - large) <= step / 2 and count > 1
    with pytest.raises(ValueError, match="match"):
        study.plan_runs(["mnist1d"], match="medium")


def test_cli_rejects_bad_arguments(capsys):
    assert study.main(["--seeds", "0"]) == 2
    assert study.main(["--dataset", "cifar10"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_runs_leave_backend_auto_to_its_model(tmp_path, monkeypatch):
    """Timed choices depend on the load and on a worker's earlier runs, and the paths round differently: the
    study trains and counts with the cost model alone, from an empty cache (only the throughput is timed as a
    user's ``backend="auto"`` would be), and leaves the caller's setting as it was."""
    from largekernel.functional import auto_cache, engine, set_calibration

    timing = {"allowed": False, "throughputs": 0}
    real_timed, real_throughput = engine._timed_seconds, study._throughput

    def timed(*a, **kw):
        assert timing["allowed"], "timed while training or counting"
        return real_timed(*a, **kw)

    def throughput(*a, **kw):
        timing["allowed"], timing["throughputs"] = True, timing["throughputs"] + 1
        try:
            return real_throughput(*a, **kw)
        finally:
            timing["allowed"] = False

    monkeypatch.setattr(engine, "_timed_seconds", timed)
    monkeypatch.setattr(study, "_throughput", throughput)
    set_calibration(True)
    try:
        first = _run(tmp_path / "a", figures=False)
        second = _run(tmp_path / "b", figures=False)
        assert set_calibration(True) is True  # restored
    finally:
        set_calibration(True)
    assert auto_cache() == {}
    same = [(r["variant"], r["acc_mean"], r["macs"]) for r in first["table"]["digits"]]
    assert same == [(r["variant"], r["acc_mean"], r["macs"]) for r in second["table"]["digits"]]
    assert len(same) == 2 and timing["throughputs"] == 4
