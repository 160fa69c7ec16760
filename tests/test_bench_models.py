"""Smoke test of `largekernel bench models` at tiny sizes (no timing assertions), and its memory measure."""

import json
import os
import subprocess
import sys

import pytest

from largekernel.bench import SUITES, models
from largekernel.cli import main as cli_main


def test_bench_models_quick(tmp_path, capsys):
    assert "models" in SUITES
    assert models.main(["--quick", "--min-run-time", "0.001", "--rounds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| workload | batch | candidate | ms | time/baseline | agrees_with | max_rel_diff |" in out
    payload = json.loads((tmp_path / "models.json").read_text())
    assert payload["quick"] and payload["outputs_agree"] and payload["machine"]["torch"]
    rows = payload["rows"]
    assert [(r["workload"], r["batch"], r["candidate"]) for r in rows] == [
        ("replknet_31b inference", 2, "direct"), ("replknet_31b inference", 2, "fft"),
        ("replknet_31b inference", 2, "auto"), ("convnext_tiny training step", 2, "convnext_tiny (dense 7x7)"),
        ("convnext_tiny training step", 2, "convnext_tiny_dcls"),
        ("convnext_tiny training step", 2, "convnext_tiny_dcls, official dcls layers")]
    for r in rows:
        assert r["ms"] > 0 and r["peak_mib"] >= 0
        if r["candidate"] in ("direct", "convnext_tiny (dense 7x7)"):  # the baselines
            assert r["time/baseline"] == 1 and "agrees_with" not in r
    assert rows[-1]["agrees_with"] == "convnext_tiny_dcls" and rows[-1]["max_rel_diff"] <= 1e-4


def test_bench_models_via_cli(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "models", "--help"])
    assert exit_.value.code == 0
    assert "RepLKNet-31B inference" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the peak measure reads Linux's /proc")
def test_peak_measure_sees_a_known_allocation():
    # The suite's setting for its child process: large blocks are returned to the system when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = ("import torch; from largekernel.bench.models import _peak_bytes; "
            "print(_peak_bytes(lambda: torch.ones(4 * 2**20).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    peak = int(out.strip().splitlines()[-1])
    assert abs(peak - 16 * 2**20) <= 2**20  # the 16 MiB tensor, within a MiB of allocator and page slack
