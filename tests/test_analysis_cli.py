"""`largekernel analyze CHECKPOINT_DIR` on a freshly trained checkpoint."""

import json
import os
from pathlib import Path

import pytest
from conftest import fails_midway
from matplotlib.figure import Figure

from largekernel.analysis.cli import main
from largekernel.data import dataset_info
from largekernel.train import TrainConfig, save_checkpoint
from largekernel.train.checkpoint import create_run_model


def _checkpoint(tmp_path, name, conv):
    cfg = TrainConfig(model="dwnet1d_tiny", model_kwargs={"conv": conv, "kernel_size": 9}, dataset="mnist1d")
    info = dataset_info("mnist1d")
    return str(save_checkpoint(tmp_path / name, create_run_model(cfg, info), cfg, info, {"epoch": 1}))


def test_analyze_writes_figures_and_summary(tmp_path, capsys):
    run = _checkpoint(tmp_path, "dcls", "dcls")
    out = tmp_path / "analysis"
    assert main([run, run, "--out", str(out), "--images", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = [line for line in printed if line.startswith(str(out))]
    names = {p.split("/")[-1] for p in written}
    assert {"mass_ratio.png", "effective_size.png", "erf.png", "gaussian_fit.png", "pca.png", "dcls_positions.png",
            "dcls_position_evolution.png", "summary.json"} <= names
    assert any(n.startswith("kernels_blocks_0") for n in names)
    for path in written:
        assert Path(path).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["layers"]] == ["stem.0", "blocks.0.dwconv", "blocks.1.dwconv"]
    assert set(summary["erf_area"]) == {"0.2", "0.3", "0.5", "0.99"}
    assert any("effective kernel size" in line for line in printed)


def test_analyze_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_analyze_to_a_folder_that_cannot_be_written(tmp_path, capsys):
    """``--out`` under a file: a one-line usage error naming ``--out`` before any analysis (it was a traceback)."""
    run = _checkpoint(tmp_path, "flex", "flexconv")
    blocker = tmp_path / "results.txt"
    blocker.write_text("kept")
    try:
        code = main([run, "--out", str(blocker / "analysis")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and blocker.read_text() == "kept"
    assert err.startswith(f"largekernel analyze: error: --out {str(blocker / 'analysis')!r}: cannot write there")


def test_analyze_again_keeps_every_earlier_output_when_a_write_fails(tmp_path, capsys, monkeypatch):
    """A second analysis into the same folder that fails writing a figure (a full disk) leaves the first analysis's
    files as they were, with no partial or temporary file beside them; files have the user's umask."""
    run = _checkpoint(tmp_path, "dcls", "dcls")
    out = tmp_path / "analysis"
    umask = os.umask(0o022)
    try:
        assert main([run, "--out", str(out), "--images", "4"]) == 0
    finally:
        os.umask(umask)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "summary.json" in before and "erf.png" in before
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in before)
    capsys.readouterr()

    monkeypatch.setattr(Figure, "savefig", fails_midway(b"half a figure"))
    with pytest.raises(OSError, match="No space left"):
        main([run, "--out", str(out), "--images", "4"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
