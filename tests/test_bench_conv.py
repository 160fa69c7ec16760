"""Smoke test of `largekernel bench conv` on a tiny configuration (no timing assertions)."""

import json

from largekernel.bench import conv
from largekernel.cli import main as cli_main


def test_bench_conv_tiny(tmp_path, capsys):
    argv = ["--kernels", "3", "5", "--batch", "1", "--channels", "2", "--size", "12",
            "--min-run-time", "0.001", "--rounds", "2", "--out", str(tmp_path)]
    assert conv.main(argv) == 0
    out = capsys.readouterr().out
    assert "| channels | kernel | mode | direct_ms | fft_ms | auto_ms" in out
    payload = json.loads((tmp_path / "conv.json").read_text())
    assert payload["config"]["kernels"] == [3, 5] and payload["machine"]["torch"]
    rows = payload["rows"]
    assert [(r["kernel"], r["mode"]) for r in rows] == [(3, "forward"), (3, "forward+backward"),
                                                        (5, "forward"), (5, "forward+backward")]
    for r in rows:
        assert r["direct_ms"] > 0 and r["fft_ms"] > 0 and r["auto_ms"] > 0 and r["floor_ms"] > 0
        assert r["floor_length"] >= 12 + r["kernel"] - 1
    assert (tmp_path / "conv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_conv_via_cli_rejects_even_kernels(capsys):
    assert cli_main(["bench", "conv", "--kernels", "4"]) == 2
    assert "odd" in capsys.readouterr().err


def test_machine_info_records_allocator_settings(monkeypatch):
    from largekernel.bench._harness import machine_info

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    for key in [k for k in __import__("os").environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert "allocator" not in machine_info()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "68719476736")
    assert machine_info()["allocator"] == {"MALLOC_TRIM_THRESHOLD_": "68719476736"}


def test_no_native_runs_the_suite_on_torch_operations(tmp_path):
    from conftest import native_expected

    from largekernel.functional import native_kernels

    previous = native_kernels()
    native_kernels(True)
    try:
        argv = ["--kernels", "3", "--batch", "2", "--channels", "2", "--size", "12", "--min-run-time", "0.001",
                "--rounds", "1", "--out", str(tmp_path)]
        assert conv.main(argv) == 0
        assert json.loads((tmp_path / "conv.json").read_text())["machine"]["native_kernels"] == native_expected()
        assert conv.main([*argv, "--no-native"]) == 0
        assert native_kernels() is False
        assert json.loads((tmp_path / "conv.json").read_text())["machine"]["native_kernels"] is False
    finally:
        native_kernels(previous)
