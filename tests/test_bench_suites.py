"""Smoke runs of every `largekernel bench` suite's device and dtype options at tiny sizes (no timing assertions), on
every available device; `--device cuda` without a GPU is a one-line usage error."""

import json
import logging
import os

import pytest
import torch

from largekernel.bench import SUITES, conv, dcls, fit, flexconv, models, niff
from largekernel.cli import main as cli_main

_FAST = ["--min-run-time", "0.001"]


def _payload(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())


def _check_machine(payload: dict, device: str, dtype: str) -> None:
    machine = payload["machine"]
    assert machine["device"] == device and machine["dtype"] == dtype
    if device == "cuda":
        assert machine["gpu"] == torch.cuda.get_device_name() and machine["cuda"] == torch.version.cuda


@pytest.mark.parametrize("suite", list(SUITES))
def test_cuda_without_a_gpu_is_a_one_line_usage_error(suite, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", suite, "--device", "cuda", "--quick"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"largekernel bench {suite}: error: --device cuda: torch ") and "no CUDA device" in err[0]
    assert err[1:] == [f"see `largekernel bench {suite} --help`"]


@pytest.mark.parametrize("flag,value,expected", [("--min-run-time", "-1", "--min-run-time must be > 0 seconds, got -1.0"),
                                                 ("--min-run-time", "0", "--min-run-time must be > 0 seconds, got 0.0"),
                                                 ("--threads", "0", "--threads must be >= 1, got 0")])
@pytest.mark.parametrize("suite", list(SUITES))
def test_timing_options_out_of_range_are_one_line_usage_errors(suite, flag, value, expected, tmp_path, capsys):
    """A negative or zero time per measurement was taken as it came (the suite ran); it is refused as --threads 0 is,
    before any work."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", suite, flag, value, "--quick", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"largekernel bench {suite}: error: {expected}", f"see `largekernel bench {suite} --help`"]


def test_conv_channel_counts_and_low_precision_errors(tmp_path, device, capsys):
    argv = ["--kernels", "3", "5", "--batch", "2", "--channels", "2", "3", "--size", "12", "--rounds", "1",
            "--dtype", "bfloat16", "--device", device, "--out", str(tmp_path), *_FAST]
    assert conv.main(argv) == 0
    assert "| channels | kernel | mode | direct_ms | fft_ms | auto_ms" in capsys.readouterr().out
    payload = _payload(tmp_path, "conv")
    _check_machine(payload, device, "bfloat16")
    rows = payload["rows"]
    assert [(r["channels"], r["kernel"], r["mode"]) for r in rows] == [
        (c, k, m) for c in (2, 3) for k in (3, 5) for m in ("forward", "forward+backward")]
    for r in rows:
        # the errors against float64 are real measurements: positive, and bf16-sized (8 mantissa bits)
        assert 0 < r["direct_err"] < 0.05 and 0 < r["fft_err"] < 0.05
        assert r["fft_err/direct_err"] == pytest.approx(r["fft_err"] / r["direct_err"])
    # CPU targets are defined at the reference configuration only; CUDA's at every configuration
    assert (payload["targets"] == []) == (device == "cpu")


def test_dcls_batch_size_and_dtype(tmp_path, device):
    argv = ["--quick", "--batch", "1", "--channels", "4", "--size", "20", "--dtype", "bfloat16", "--device", device,
            "--out", str(tmp_path), *_FAST]
    assert dcls.main(argv) == 0
    # The suite quiets the official package's warnings while it builds its references, not the caller's process.
    # (A handler of the test's own: pytest's caplog would lift a logging.disable while it records.)
    records, logger = [], logging.getLogger("largekernel.tests.after_bench")
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("still logged after the suite")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["still logged after the suite"]
    payload = _payload(tmp_path, "dcls")
    _check_machine(payload, device, "bfloat16")
    assert payload["batch"] == 1 and len(payload["rows"]) == 8
    assert all(isinstance(r["reference_ms"], float) and r["speedup"] > 0 for r in payload["rows"])


def test_flexconv_lengths_and_sgconv(tmp_path, device):
    argv = ["--lengths", "48", "64", "--batch", "2", "--channels", "2", "--device", device, "--out", str(tmp_path),
            *_FAST]
    assert flexconv.main(argv) == 0
    payload = _payload(tmp_path, "flexconv")
    _check_machine(payload, device, "float32")
    full = [(r["layer"].split()[0], r["kernel"]) for r in payload["rows"] if r["case"].startswith("full-length")]
    assert full == [(name, n) for n in (48, 64) for name in ("CKConv1d", "FlexConv1d", "SGConv1d")]
    assert payload["complete"] and len(payload["rows"]) == 2 * 3 + 2 + 1


def test_niff_workload_options(tmp_path, device):
    argv = ["--quick", "--batch", "2", "--channels", "3", "--size", "10", "--dtype", "bfloat16", "--device", device,
            "--out", str(tmp_path), *_FAST]
    assert niff.main(argv) == 0
    payload = _payload(tmp_path, "niff")
    _check_machine(payload, device, "bfloat16")
    assert payload["config"] == {"batch": 2, "channels": 3, "size": 10} and len(payload["rows"]) == 4


def test_fit_on_the_device(tmp_path, device):
    argv = ["--quick", "--sizes", "16", "32", "--device", device, "--dtype", "bfloat16", "--out", str(tmp_path),
            *_FAST]
    umask = os.umask(0o022)
    try:
        assert fit.main(argv) == 0
    finally:
        os.umask(umask)
    # The results file has the user's umask, like any program's output (it was 0600, a temporary file's mode).
    assert (tmp_path / "fit.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]
    payload = _payload(tmp_path, "fit")
    _check_machine(payload, device, "bfloat16")
    assert [r["tokens"] for r in payload["rows"]] == [16, 64]
    assert payload["targets"][0]["met"] == payload["ratio_grows"]


def test_models_replknet_training_step(tmp_path, device):
    # The CPU's peak-memory child process is tested in test_bench_models.py; CUDA's measure runs in this process.
    argv = ["--quick", "--rounds", "1", "--workloads", "replknet-train", "--dtype", "bfloat16", "--device", device,
            "--out", str(tmp_path), *_FAST, *(["--no-memory"] if device == "cpu" else [])]
    assert models.main(argv) == 0
    payload = _payload(tmp_path, "models")
    _check_machine(payload, device, "bfloat16")
    rows = payload["rows"]
    assert [(r["workload"], r["candidate"]) for r in rows] == [("replknet_31b training step", b)
                                                                for b in ("direct", "fft", "auto")]
    assert payload["outputs_agree"] and all(r["max_rel_diff"] <= 1e-4 for r in rows[1:])
    if device == "cuda":
        assert all(r["peak_mib"] > 0 for r in rows)


def test_compile_table_script_has_a_help():
    """``benchmarks/compile_table.py --help`` describes its options and measures nothing (it used to ignore its
    arguments and run the whole table, minutes of compiling)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_table.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--layers" in shown.stdout and "--model" in shown.stdout
    assert "first compiled step (s)" not in shown.stdout
