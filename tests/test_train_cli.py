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
    (["--epochs", "many"], "epochs: got 'many', expected int"),
    (["--augment.hflip", "3"], "augment.hflip: got 3.0"),
    (["--no_such_key", "1"], "unrecognized arguments: --no-such-key"),
    (["--model", "no_such_model"], "model: got 'no_such_model', expected a registered model"),
    (["--optimizer", "lamb"], "optimizer: got 'lamb', expected one of 'adamw', 'sgd'"),
    (["--lr", ".inf"], "lr: got inf, expected a finite number"),
    (["--weight-decay", ".inf"], "weight_decay: got inf, expected a finite number"),
    (["--lr", ".nan"], "lr: got nan, expected a finite number"),
    (["--output-dir", ""], "output_dir: got '', expected a directory path"),
    (["--resume", "--overwrite"], "overwrite: got True, expected False with resume=True"),
])
def test_bad_arguments_exit_naming_the_key(argv, key, capsys):
    err = _exit_message(argv, capsys)
    assert key in err
    # one line and a pointer to --help, not the usage block
    assert err.splitlines() == [f"largekernel train: error: {err.splitlines()[0].split('error: ', 1)[1]}",
                                "see `largekernel train --help`"]


def test_yaml_unknown_key_and_wrong_type(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dwnet1d_tiny\nlearning_rate: 0.1\n")
    assert "learning_rate: unknown key" in _exit_message(["--config", str(bad)], capsys)
    bad.write_text("model: dwnet1d_tiny\nbatch_size: [1, 2]\n")
    assert "batch_size: got '[1, 2]', expected int" in _exit_message(["--config", str(bad)], capsys)
    bad.write_text("augment:\n  crop_padding: 1\n  zoom: 2\n")
    assert "augment.zoom: unknown key" in _exit_message(["--config", str(bad)], capsys)
    for text, expected in (("", "which is empty; expected a YAML mapping"), ("[1, 2]\n", "which holds a list"),
                           ("a: [\n", "which is not valid YAML"), ("lr: .inf\n", "lr: got inf")):
        bad.write_text(text)
        assert expected in _exit_message(["--config", str(bad)], capsys)
    assert "which does not exist" in _exit_message(["--config", str(tmp_path / "missing.yaml")], capsys)


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
    # crop_padding: augmented batches once had a layout whose weight gradients DDP's buckets warned about
    args = [*SMALL, "--augment.crop-padding", "2", "--quiet"]
    subprocess.run([sys.executable, "-m", "largekernel", "train", *args, "--num-threads", "1", "--output-dir", str(one)],
                   check=True, env=env, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "largekernel", "train", *args, "--output-dir", str(two)],
                          env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in proc.stderr
    a = load_file(str(one / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(two / "checkpoints" / "last" / "model.safetensors"))
    init = load_checkpoint(one)[0]  # same architecture; weights must have moved identically in both runs
    assert a.keys() == b.keys() == init.state_dict().keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    lines_one = (one / "metrics.jsonl").read_text().splitlines()
    lines_two = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines_one) == len(lines_two) == 1  # rank 0 alone writes logs
    row_one, row_two = json.loads(lines_one[0]), json.loads(lines_two[0])
    assert row_two["test_acc"] == pytest.approx(row_one["test_acc"], abs=1 / 64)
    # the logged loss is the mean over both processes' half batches: the single process's full-batch loss
    assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-5)
    assert not any(p.name.startswith(".") for p in (two / "checkpoints").iterdir())


def test_a_stopped_process_ends_the_job_after_dist_timeout(tmp_path):
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "largekernel", "train", *SMALL, "--epochs", "200", "--checkpoint-every-steps", "1",
            "--dist-timeout", "5", "--output-dir", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}
    procs = [subprocess.Popen(argv, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last").exists():  # both processes are training
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].stderr.read()[-3000:]
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)  # alive but silent, as a hung or preempted peer
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode != 0
    assert "Timed out" in err or "timed out" in err, err[-3000:]
    assert waited < 60  # the 5 s setting, not gloo's 30-minute default
# --------------------------------------------------------------------------- mistakes caught before any data loads


def _train_exit(argv, capsys):
    """Exit status and stderr of `largekernel train ARGV` (parse errors exit, later ones return)."""
    try:
        code = cli_main(["train", *argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


# Each case runs on CIFAR-10 from an empty directory: had the mistake not been caught before the data loads,
# the error would be the missing data_batch_1 instead of the expected message.
LATE_MISTAKES = {
    "misspelled model_kwargs key": (["--model-kwargs.kernel_sise", "9"],
                                    "model_kwargs.kernel_sise: got 9, expected a value model 'dwnet2d_tiny' accepts"),
    "unknown conv": (["--model_kwargs.conv", "dclss"], "model_kwargs.conv: got 'dclss', expected a value"),
    "negative kernel_size": (["--model-kwargs.kernel-size", "-5"], "model_kwargs.kernel_size: got -5"),
    "kernel_size not a number": (["--model_kwargs.kernel_size", "abc"], "model_kwargs.kernel_size: got 'abc'"),
    "misspelled layer argument": (["--model-kwargs", '{"conv": "dcls", "conv_kwargs": {"kernel_cout": 4}}'],
                                  "model_kwargs.conv_kwargs.kernel_cout: got 4"),
    "unknown regulariser": (["--regularizers", '{"no.such.module:fn": 1.0}'],
                            "regularizers: cannot import 'no.such.module:fn'"),
    "repulsion without DCLS": (["--dcls-repulsion", "0.1"], "dcls_repulsion: got 0.1, expected 0 for model"),
    "sigma schedule without DCLS": (["--dcls-sigma", "[2, 0.5]"], "dcls_sigma: got (2.0, 0.5), expected None"),
    "fp16 on CPU": (["--precision", "fp16"], "precision: got 'fp16' on device cpu"),
    "unknown device": (["--device", "tpu9"], "device: got 'tpu9', expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    "CUDA without CUDA": (["--device", "cuda"], "device: got 'cuda', expected 'auto' or 'cpu': CUDA is not available"),
    "a model for other inputs": (["--model", "dwnet1d_tiny"], "model: 'dwnet1d_tiny' does not take the samples of "
                                                             "dataset 'cifar10', of shape (3, 32, 32)"),
    "batch not divisible": (["--batch-size", "3", "--overwrite"], None),  # a valid run: reaches the data
}


@pytest.mark.parametrize("case", list(LATE_MISTAKES))
def test_late_mistakes_exit_2_before_data_loads(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra, expected = LATE_MISTAKES[case]
    (tmp_path / "cifar").mkdir()
    out = tmp_path / "run"
    code, err = _train_exit(["--model", "dwnet2d_tiny", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                             "--output-dir", str(out), "--quiet", *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "see `largekernel train --help`"
    if expected is None:  # the control: without a mistake the run gets as far as reading the data
        assert "data_batch_1: file not found" in lines[0]
    else:
        assert expected in lines[0]
        assert not out.exists()  # refused before writing anything


@pytest.mark.parametrize("extra,expected", [
    (["--augment.erase-prob", "0.5"], "augment.erase_prob: got 0.5, expected it off for the 1-D inputs"),
    (["--augment.resized-crop-scale", "[0.5, 1.0]"], "augment.resized_crop_scale: got (0.5, 1.0), expected it off"),
    (["--dataset", "cifar10"], "data_dir: got None, expected the directory holding dataset 'cifar10'"),
    (["--dataset", "cifar10", "--data-dir", "/no/such/dir"], "data_dir: got '/no/such/dir', expected an existing"),
])
def test_data_mistakes_exit_2(extra, expected, tmp_path, capsys):
    code, err = _train_exit(["--output-dir", str(tmp_path / "run"), *extra], capsys)
    assert code == 2 and expected in err and not (tmp_path / "run").exists()


def test_output_paths_that_cannot_take_the_run(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, expected in ((a_file, "which is a file; expected a directory"),
                          (a_file / "run", f"but {a_file} is a file; expected a directory path")):
        code, err = _train_exit(["--output-dir", str(out)], capsys)
        assert code == 2 and f"output_dir: got '{out}'" in err and expected in err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last").write_text("not a checkpoint")
    code, err = _train_exit(["--output-dir", str(run), "--resume"], capsys)
    assert code == 2 and "whose checkpoints/last is a file; expected a directory" in err


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--output-dir", str(out), "--quiet"]) == 0
    (out / "notes.txt").write_text("mine")
    first = (out / "metrics.jsonl").read_text()
    code, err = _train_exit([*SMALL, "--output-dir", str(out), "--quiet"], capsys)
    assert code == 2 and "which is not empty (checkpoints, metrics.csv, metrics.jsonl, notes.txt)" in err
    assert "--resume" in err and "--overwrite" in err and (out / "metrics.jsonl").read_text() == first
    assert cli_main(["train", *SMALL, "--seed", "2", "--output-dir", str(out), "--quiet", "--overwrite"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and rows[0] != first.strip()  # replaced, not appended
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_with_changed_hyperparameters_warns(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--max-steps", "2", "--output-dir", str(out), "--quiet"]) == 0
    with pytest.warns(UserWarning, match=r"settings that differ from its run: lr 0\.003 -> 0\.01; the run continues"):
        assert cli_main(["train", *SMALL, "--lr", "0.01", "--output-dir", str(out), "--quiet", "--resume"]) == 0


# --------------------------------------------------------------------------- flags, help, eval


def test_flags_take_dashes_or_underscores(tmp_path):
    dashed, _ = parse_train_config(["--output-dir", "a", "--model-kwargs.kernel-size", "7", "--ema-decay", "0.9",
                                    "--augment.crop-padding", "2"])
    underscored, _ = parse_train_config(["--output_dir", "a", "--model_kwargs.kernel_size", "7", "--ema_decay=0.9",
                                         "--augment.crop_padding", "2"])
    assert dashed == underscored
    assert (dashed.output_dir, dashed.model_kwargs, dashed.ema_decay, dashed.augment.crop_padding) == ("a", {
        "kernel_size": 7}, 0.9, 2)

