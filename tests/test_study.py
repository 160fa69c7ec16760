"""`largekernel study`: the plan, cached runs skipped, the sweep and cross-resolution, aggregation, the report."""

import dataclasses
import json
import statistics
import subprocess
import sys

import pytest

from largekernel import study
from largekernel.models import create_model
from largekernel.study import figures, pipeline, runs

TINY = {"train_subset": 96, "test_subset": 64, "batch_size": 32}


def _run(tmp_path, **kw):
    kw = {"variants": ["small", "dcls"], "sweep": False, "epochs": 1, **kw}
    return study.run_study(["digits"], tmp_path, seeds=1, train_overrides=TINY, match="small", progress=False, **kw)


def test_study_writes_report_and_skips_cached_runs(tmp_path, monkeypatch):
    trained = []
    real = runs.train_one
    monkeypatch.setattr(pipeline, "train_one", lambda out, run: trained.append(run["variant"]) or real(out, run))
    results = _run(tmp_path)
    assert trained == ["small", "dcls"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"] == json.loads(json.dumps(results["table"]))
    rows = {r["variant"]: r for r in saved["table"]["digits_8"]}
    for variant in ("small", "dcls"):
        record = json.loads((tmp_path / "runs" / "digits_8" / variant / "seed0" / "result.json").read_text())
        assert rows[variant]["acc_mean"] == pytest.approx(record["metrics"]["acc"])
        assert rows[variant]["params"] == record["metrics"]["params"] > 0
        assert 0 <= record["metrics"]["acc"] <= 100 and record["metrics"]["n_test"] == 64
    report = (tmp_path / "report.md").read_text()
    assert "| small dense |" in report and "| DCLS |" in report and "## Claims of the seed papers" in report
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert {"digits_8_mass_ratio.png", "digits_8_erf.png", "digits_8_effective_size.png", "digits_8_cost.png",
            "digits_8_dcls_positions.png", "digits_8_small_kernels.png"} <= set(figures)
    for name in figures:  # every figure linked from the report
        assert f"figures/{name}" in report

    # a rerun trains nothing; deleting one cache file retrains exactly that run
    trained.clear()
    again = _run(tmp_path, figures=False)
    assert trained == []
    assert again["meta"]["runs_cached"] == 2 and again["meta"]["invalid_cache"] == []
    (tmp_path / "runs" / "digits_8" / "dcls" / "seed0" / "result.json").unlink()
    _run(tmp_path, figures=False)
    assert trained == ["dcls"]
    # a changed setting (more epochs) invalidates the cache of the runs it changes
    trained.clear()
    _run(tmp_path, variants=["small"], epochs=2, figures=False)
    assert trained == ["small"]
    marker = json.loads((tmp_path / "runs" / "digits_8" / "small" / "seed0" / "study_config.json").read_text())
    assert marker["epochs"] == 2


def test_sweep_and_cross_resolution(tmp_path, monkeypatch):
    """The sweep trains the families again at a higher resolution (16x16 here, to keep the test short); the
    native FlexConv model is evaluated there as is and fine-tuned; everything is cached, the report and figures
    show it. (The small kernel keeping its taps at every resolution: test_plan_matches_parameters...)"""
    monkeypatch.setitem(study.DATASETS, "digits", dataclasses.replace(study.DATASETS["digits"], resolutions=(8, 16)))
    results = _run(tmp_path, variants=["flexconv"], sweep=True, figures=False)
    table = results["table"]
    assert sorted(table) == ["digits_16", "digits_8"]
    native = {r["variant"]: r for r in table["digits_8"]}
    assert set(native["flexconv"]["transfers"]) == {"16"}
    result = native["flexconv"]["transfers"]["16"]
    assert all(0 <= a <= 100 for a in result["accs"] + result["finetuned_accs"])
    [transfer] = results["transfers"]
    assert transfer["source"]["variant"] == "flexconv" and transfer["target"] == 16
    assert transfer["metrics"]["n_test"] == 64
    # the large kernels span the input at every resolution; the small one keeps its taps
    configs = {(r["point"], r["variant"]): r["config"] for r in results["runs"]}
    assert configs["digits_16", "flexconv"]["model_kwargs"]["kernel_size"] == 15
    assert configs["digits_8", "flexconv"]["model_kwargs"]["kernel_size"] == 7
    assert configs["digits_16", "flexconv"]["dataset_kwargs"] == {"size": 16}
    report = (tmp_path / "report.md").read_text()
    assert "## Resolution sweep: digits" in report and "Cross-resolution" in report
    assert "| FlexConv | 8x8" in report
    drawn = figures.sweep_figures(tmp_path, "digits", table, results["points"])
    assert [p.name for p in drawn] == ["digits_sweep.png", "digits_crossres.png"]
    # cached: nothing is trained or transferred again
    monkeypatch.setattr(pipeline, "train_one", lambda out, run: pytest.fail("retrained a cached run"))
    monkeypatch.setattr(pipeline, "transfer_one", lambda out, job: pytest.fail("re-evaluated a cached transfer"))
    again = _run(tmp_path, variants=["flexconv"], sweep=True, figures=False)
    assert again["meta"]["transfers_cached"] == 1 and again["table"]["digits_8"] == json.loads(
        json.dumps(table["digits_8"]))


def _record(variant, seed, acc, params=100):
    metrics = {"acc": acc, "params": params, "macs": 10, "train_time_s": 1.0 + seed, "throughput": 50.0,
               "effective_size": {"0.5": 1.0 + seed, "0.9": 3.0}, "erf_area": {"0.99": {"side": 3, "area_ratio": 0.5}},
               "mask_extents": [], "paths": None, "n_test": 1000}
    return {"dataset": "mnist1d", "point": "mnist1d_40", "variant": variant, "seed": seed,
            "config": {"model": "dwnet1d_tiny", "model_kwargs": {"conv": "conv", "kernel_size": 5}},
            "metrics": metrics}


def test_aggregate_mean_and_sample_std():
    table = study.aggregate([_record("large", 1, 94.0), _record("small", 0, 80.0), _record("large", 0, 90.0),
                             _record("large", 2, 95.0)])
    rows = table["mnist1d_40"]
    assert [r["variant"] for r in rows] == ["small", "large"]  # the study's fixed order
    large = rows[1]
    assert large["acc_mean"] == pytest.approx(93.0)
    assert large["acc_std"] == pytest.approx(((9 + 1 + 4) / 2) ** 0.5)  # sample std, n - 1 = 2
    assert large["seeds"] == [0, 1, 2] and large["accs"] == [90.0, 94.0, 95.0]  # per-seed lists in seed order
    assert large["train_time_s"] == pytest.approx(2.0)
    assert large["effective_size"] == {"0.5": pytest.approx(2.0), "0.9": pytest.approx(3.0)}
    assert rows[0]["acc_std"] == 0.0
    assert statistics.fmean(large["accs"]) == pytest.approx(large["acc_mean"])
    assert "93.00 ± 2.65" in study.format_table(rows)


def test_plan_matches_parameters_scales_extents_and_validates():
    planned = study.plan_runs(["mnist1d"], ["large", "dcls", "small"], seeds=2, epochs=3)
    native = [r for r in planned if r["point"] == "mnist1d_40"]
    assert [(r["variant"], r["seed"]) for r in native] == [("small", 0), ("small", 1), ("large", 0), ("large", 1),
                                                         ("dcls", 0), ("dcls", 1)]

    def params(config):
        model = create_model(config["model"], num_classes=10, in_chans=1, **config["model_kwargs"])
        return sum(p.numel() for p in model.parameters())

    large, dcls = params(native[2]["config"]), params(native[4]["config"])
    count = native[4]["config"]["model_kwargs"]["conv_kwargs"]["kernel_count"]
    # each 1-D DCLS kernel element adds a weight and a position per channel of every block: within half a step
    plan = study.DATASETS["mnist1d"]
    step = 2 * plan.model_kwargs["width"] * plan.model_kwargs["depth"]
    assert abs(dcls - large) <= step / 2 and count > 1
    # higher resolutions: the same DCLS count (same parameters), extents scaled to span the input
    by_point = {(r["point"], r["variant"]): r["config"] for r in planned if r["seed"] == 0}
    assert sorted({r["point"] for r in planned}) == ["mnist1d_160", "mnist1d_40", "mnist1d_640"]
    config = by_point["mnist1d_160", "dcls"]
    assert config["model_kwargs"]["kernel_size"] == 159
    assert config["model_kwargs"]["conv_kwargs"] == {"kernel_count": count}
    assert params(config) == dcls and config["dataset_kwargs"] == {"length": 160}
    assert ("mnist1d_640", "dcls") not in by_point  # left out at 640 (the plan's sweep_skip)
    for length in (160, 640):
        assert by_point[f"mnist1d_{length}", "small"]["model_kwargs"]["kernel_size"] == 5
        assert by_point[f"mnist1d_{length}", "large"]["model_kwargs"]["kernel_size"] == length - 1
        assert params(by_point[f"mnist1d_{length}", "large"]) > large  # the dense kernel pays per tap
    assert {r["point"] for r in study.plan_runs(["mnist1d"], ["small"], sweep=False)} == {"mnist1d_40"}
    jobs = study.plan_transfers(study.plan_runs(["mnist1d"], ["small", "flexconv", "dcls"], seeds=1))
    assert sorted((j["source"]["variant"], j["target"]) for j in jobs) == [
        ("flexconv", 160), ("flexconv", 640), ("small", 160), ("small", 640)]
    with pytest.raises(ValueError, match="match"):
        study.plan_runs(["mnist1d"], match="medium")


def test_cli_rejects_bad_arguments(capsys):
    assert study.main(["--seeds", "0"]) == 2
    assert study.main(["--dataset", "cifar10"]) == 2
    assert "--data-dir" in capsys.readouterr().err


_STUDY = """
import json, sys
from largekernel import study
r = study.run_study(["digits"], sys.argv[1], variants=["small", "large", "dcls"], sweep=False, epochs=1, seeds=1,
                    train_overrides={"train_subset": 96, "test_subset": 64, "batch_size": 32}, match="small",
                    progress=False, figures=False, jobs=int(sys.argv[2]))
print(json.dumps([(x["variant"], x["acc_mean"], x["params"], x["macs"]) for x in r["table"]["digits_8"]]))
"""


def test_two_studies_in_fresh_processes_agree(tmp_path):
    """Same settings, same numbers: two studies in fresh processes, one training its runs in one worker and the other
    spread over two (a different history of calls in each process), give the same accuracies, parameter counts and
    MACs (backend="auto" is decided by the planner, not by timings)."""
    tables = [subprocess.run([sys.executable, "-c", _STUDY, str(tmp_path / str(jobs)), str(jobs)], check=True,
                             capture_output=True, text=True).stdout.splitlines()[-1] for jobs in (1, 2)]
    assert tables[0] == tables[1]
    assert len(json.loads(tables[0])) == 3
