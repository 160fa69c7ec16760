"""largekernel train / eval command lines, shipped configs (1-epoch smoke runs) and torchrun equivalence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from largekernel.cli import main as cli_main
from largekernel.train import load_checkpoint
from largekernel.train.cli import parse_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
EMBEDDED = [p for p in CONFIGS if yaml.safe_load(p.read_text()).get("dataset", "mnist1d")
            in ("mnist1d", "mnist1d_seq", "digits", "digits_seq", "digits_pseq")]
# A fast, DDP-friendly model (LayerNorm: batch statistics do not depend on how the batch is split).
# The direct backend: "auto" would time both paths in each process and could pick differently per rank.
SMALL = ["--model", "dwnet1d_tiny", "--model_kwargs.norm", "layer", "--model_kwargs.kernel_size", "9",
         "--model_kwargs.conv_kwargs", '{"backend": "direct"}',
         "--dataset", "mnist1d", "--train_subset", "256", "--test_subset", "64", "--batch_size", "64",
         "--epochs", "1", "--lr", "3e-3", "--seed", "1"]


def _exit_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_config(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv,key", [
    (["--lr", "-0.1"], "lr: got -0.1, expected > 0"),
    (["--batch_size", "0"], "batch_size: got 0, expected a positive integer"),
    (["--epochs", "many"], 'Parser key "epochs"'),
    (["--augment.hflip", "3"], "augment.hflip: got 3.0"),
    (["--no_such_key", "1"], "unrecognized arguments: --no_such_key"),
    (["--model", "no_such_model"], "model: got 'no_such_model', expected a registered model"),
    (["--optimizer", "lamb"], 'Parser key "optimizer"'),
])
def test_bad_arguments_exit_naming_the_key(argv, key, capsys):
    assert key in _exit_message(argv, capsys)


def test_yaml_unknown_key_and_wrong_type(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dwnet1d_tiny\nlearning_rate: 0.1\n")
    assert "learning_rate" in _exit_message(["--config", str(bad)], capsys)
    bad.write_text("model: dwnet1d_tiny\nbatch_size: [1, 2]\n")
    assert "batch_size" in _exit_message(["--config", str(bad)], capsys)
    bad.write_text("augment:\n  crop_padding: 1\n  zoom: 2\n")
    assert "zoom" in _exit_message(["--config", str(bad)], capsys)


def test_config_file_overrides_and_print_config(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: dwnet1d_tiny\nmodel_kwargs: {conv: fft, kernel_size: 21}\nlr: 0.01\n"
                        "augment: {crop_padding: 2}\n")
    cfg, quiet = parse_train_config(["--config", str(cfg_file), "--model_kwargs.kernel_size", "31",
                                     "--lr", "0.002", "--resume", "--output_dir", str(tmp_path / "o")])
    assert cfg.model_kwargs == {"conv": "fft", "kernel_size": 31} and cfg.lr == 0.002 and cfg.resume
    assert cfg.augment.crop_padding == 2 and cfg.output_dir == str(tmp_path / "o") and not quiet
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--config", str(cfg_file), "--epochs", "7", "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["epochs"] == 7 and printed["model_kwargs"] == {"conv": "fft", "kernel_size": 21}
    assert printed["augment"]["crop_padding"] == 2


def test_train_then_eval_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--ema_decay", "0.9", "--output_dir", str(out), "--quiet"]) == 0
    summary = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["acc"] == pytest.approx(summary["test_acc"]) and metrics["step"] == 4
    assert cli_main(["eval", "--checkpoint", str(out / "checkpoints" / "last"), "--ema"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"] == pytest.approx(summary["ema_acc"])
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", "--checkpoint", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "no checkpoint found" in capsys.readouterr().err


@pytest.mark.parametrize("config", EMBEDDED, ids=[p.stem for p in EMBEDDED])
def test_shipped_config_one_epoch_smoke(config, tmp_path):
    cfg, _ = parse_train_config(["--config", str(config), "--epochs", "1", "--train_subset", "64",
                                 "--test_subset", "32", "--batch_size", "32", "--output_dir", str(tmp_path)])
    from largekernel.train import train

    result = train(cfg, progress=False)
    assert result["epochs"] == 1 and 0.0 <= result["last_acc"] <= 1.0
    model, _, _ = load_checkpoint(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == result["params"]


def test_every_config_parses():
    assert len(CONFIGS) >= 10
    for config in CONFIGS:
        cfg, _ = parse_train_config(["--config", str(config)])
        assert cfg.epochs > 0


def test_torchrun_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "largekernel", "train", *SMALL, "--num_threads", "1",
                    "--output_dir", str(one), "--quiet"], check=True, env=env, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "largekernel", "train", *SMALL, "--output_dir", str(two), "--quiet"],
                          env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(one / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(two / "checkpoints" / "last" / "model.safetensors"))
    init = load_checkpoint(one)[0]  # same architecture; weights must have moved identically in both runs
    assert a.keys() == b.keys() == init.state_dict().keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    lines_one = (one / "metrics.jsonl").read_text().splitlines()
    lines_two = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines_one) == len(lines_two) == 1  # rank 0 alone writes logs
    assert json.loads(lines_two[0])["test_acc"] == pytest.approx(json.loads(lines_one[0])["test_acc"], abs=1 / 64)
    assert not any(p.name.startswith(".") for p in (two / "checkpoints").iterdir())
