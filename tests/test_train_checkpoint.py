"""largekernel.train.checkpoint under faults: training processes killed at every step of the save path (two
crashes in a row included), corrupted files of each kind, a full disk, the user's umask.

Every crashed run is resumed and must end bit-identical to an uninterrupted run: that is only possible when
resuming started from the newest complete checkpoint (never from step 0 while one exists) and read it intact.
"""

import collections
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from largekernel.cli import main as cli_main
from largekernel.data import DatasetInfo
from largekernel.train import TrainConfig, load_checkpoint, save_checkpoint, train
from largekernel.train.checkpoint import FAULT_POINTS, CheckpointError, select_checkpoint
from largekernel.train.config import ConfigError

# 2 epochs x 4 steps, a checkpoint after every step: saves last(1), last(2), last(3), best(4), last(4), last(5) ...
# Dropout, crop augmentation and EMA use every random stream a resume must restore.
RUN = dict(model="dwnet1d_tiny", model_kwargs={"width": 8, "depth": 1, "kernel_size": 5, "drop_rate": 0.1,
                                               "conv_kwargs": {"backend": "direct"}},
           dataset="mnist1d", train_subset=128, test_subset=64, batch_size=32, epochs=2, checkpoint_every_steps=1,
           ema_decay=0.9, augment={"crop_padding": 2}, num_threads=1, lr=3e-3)
RESUME_KEYS = ("step", "optimizer", "rng", "history")


def _argv(out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "largekernel", "train", "--model", RUN["model"],
            "--model-kwargs", json.dumps(RUN["model_kwargs"]), "--train-subset", "128", "--test-subset", "64",
            "--batch-size", "32", "--epochs", "2", "--checkpoint-every-steps", "1", "--ema-decay", "0.9",
            "--augment.crop-padding", "2", "--num-threads", "1", "--lr", "3e-3", "--output-dir", str(out), "--quiet",
            *(["--resume"] if resume else [])]


@contextlib.contextmanager
def _threads_kept():
    """train(num_threads=1) sets torch's global thread count: give the test process its own back."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _train(out: Path, **kw) -> dict:
    with _threads_kept():
        return train(TrainConfig(**{**RUN, **kw}, output_dir=str(out)), progress=False)


def _weights(out: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / name / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert _train(out)["step"] == 8
    return out


# (faults of consecutive processes, each resuming the previous one's run) -> step of the newest complete
# checkpoint left on disk. A crash before "synced" loses the copy being written (step 3), never the previous.
SCENARIOS = {
    **{(f"{point}@3",): 2 for point in FAULT_POINTS if point.startswith("write:")},
    ("synced@3",): 3,
    ("to_old@2",): 3,  # between the two renames: last.old (2) and the new temporary copy (3)
    ("in_place@3",): 3,
    ("trash@2",): 3,  # deleting last.old of save 3: moved aside
    ("trash_partial@2",): 3,  # ... and half deleted
    ("old_removed@2",): 3,
    ("cleaned@3",): 3,
    ("write:model.safetensors@1",): 0,  # the very first save: no checkpoint was ever complete
    # The double faults: a crash between the renames, a resume (from the temporary copy), then a
    # crash right after deleting last.old, or in the middle of deleting it, or between the renames again.
    ("to_old@2", "trash@1"): 4,
    ("to_old@2", "trash_partial@1"): 4,
    ("to_old@2", "to_old@1"): 5,
}


# One process imports largekernel once (seconds), then forks a training process per fault (a fraction of a
# second each): the fault hook kills the fork exactly as a fresh `largekernel train` process would die.
_FORKER = """
import json, os, sys
from largekernel.train.cli import train_main
import largekernel.models, largekernel.train.engine
import torch._dynamo  # torch's optimizers load it at their first construction: once here, not in every fork
codes = []
for faults, runs in json.loads(sys.argv[1]):
    statuses = []
    for fault, argv in zip(faults, runs):
        pid = os.fork()
        if pid == 0:
            os.environ["LARGEKERNEL_CHECKPOINT_FAULT"] = fault
            try:
                code = train_main(argv)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            os._exit(code)
        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    codes.append(statuses)
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> dict[tuple[str, ...], tuple[Path, list[int]]]:
    """Every scenario's training processes, each killed by the checkpoint fault hook; their exit statuses."""
    base = tmp_path_factory.mktemp("faults")
    outs = [base / f"s{i}" / "run" for i in range(len(SCENARIOS))]
    jobs = [[list(faults), [_argv(out, resume=j > 0)[4:] for j in range(len(faults))]]
            for faults, out in zip(SCENARIOS, outs)]
    proc = subprocess.run([sys.executable, "-c", _FORKER, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.splitlines()[-1])
    return {faults: (out, code) for faults, out, code in zip(SCENARIOS, outs, codes)}


@pytest.mark.parametrize("faults", list(SCENARIOS), ids=["+".join(f) for f in SCENARIOS])
def test_killed_while_saving_resumes_from_newest_complete_checkpoint(faults, crashed, reference, tmp_path):
    crashed_run, codes = crashed[faults]
    assert codes == [86] * len(faults)  # the hook fired: each process died there
    out = tmp_path / "run"
    shutil.copytree(crashed_run, out)
    choice = select_checkpoint(out / "checkpoints", require=RESUME_KEYS)
    assert (choice.step if choice else 0) == SCENARIOS[faults]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "resuming from .last.tmp-...": checked below
        result = _train(out, resume=True)
    assert result["step"] == 8
    ref, got = _weights(reference), _weights(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    ref_ema, got_ema = load_checkpoint(reference)[2]["ema"], load_checkpoint(out)[2]["ema"]
    assert all(torch.equal(ref_ema[k], got_ema[k]) for k in ref_ema)
    # nothing left behind: no temporary, trash or .old copy, and the log has each epoch once
    assert sorted(os.listdir(out / "checkpoints")) == ["best", "last"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_says_which_checkpoint_and_why(crashed, tmp_path):
    out, _ = crashed[("to_old@2",)]
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    with pytest.warns(UserWarning, match=r"resuming from .*\.last\.tmp-.* \(step 3\): the newest verified checkpoint"):
        _train(copy, resume=True, max_steps=4)


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path):
    """``resume`` continues from a checkpoint when there is one; with none (a new run, or a mistyped
    ``output_dir``) it starts from step 0, and now says so."""
    with pytest.warns(UserWarning, match=r"resume: no checkpoint in .*run.checkpoints; starting from step 0"):
        _train(tmp_path / "run", resume=True, max_steps=1)


# --------------------------------------------------------------------------- corrupted files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (path.stat().st_size,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated model": ("model.safetensors", _truncate, "truncated"),
    "random model": ("model.safetensors", _random_bytes, "corrupted"),
    "flipped state tensors": ("state.safetensors", _flip_byte, "corrupted"),
    "flipped config": ("config.json", _flip_byte, "corrupted"),
    "deleted state": ("state.json", Path.unlink, "missing"),
    "deleted manifest": ("manifest.json", Path.unlink, "missing"),
    "garbled manifest": ("manifest.json", _random_bytes, "not readable JSON"),
}


@pytest.fixture
def run_copy(reference, tmp_path) -> Path:
    shutil.copytree(reference, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused_naming_the_file(kind, run_copy, capsys):
    name, corrupt, what = CORRUPTIONS[kind]
    last = run_copy / "checkpoints" / "last"
    corrupt(last / name)
    with pytest.raises(CheckpointError, match=rf"{last / name}: .*{what}"):
        load_checkpoint(last)
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", str(last)])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""  # no accuracy printed from a corrupt file
    assert str(last / name) in captured.err and len(captured.err.strip().splitlines()) == 2


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_skips_a_corrupt_last_for_best(kind, run_copy, reference):
    name, corrupt, _ = CORRUPTIONS[kind]
    corrupt(run_copy / "checkpoints" / "last" / name)
    best_step = json.loads((run_copy / "checkpoints" / "best" / "manifest.json").read_text())["step"]
    with pytest.warns(UserWarning, match=rf"resuming from .*best \(step {best_step}\).*skipped .*last/{name}"):
        result = _train(run_copy, resume=True)
    assert result["step"] == 8  # from best's step on, identical to the uninterrupted run
    ref, got = _weights(reference), _weights(run_copy)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_every_copy_corrupt_refuses_to_resume_naming_each(run_copy, capsys):
    for name in ("last", "best"):
        _flip_byte(run_copy / "checkpoints" / name / "model.safetensors")
    with pytest.raises(CheckpointError) as exc:
        _train(run_copy, resume=True)
    for name in ("last", "best"):
        assert str(run_copy / "checkpoints" / name / "model.safetensors") in str(exc.value)
    # the command line: exit status 2, one line, before anything is overwritten
    before = {p: p.read_bytes() for p in (run_copy / "checkpoints").rglob("*") if p.is_file()}
    with _threads_kept():
        assert cli_main(["train", *_argv(run_copy, resume=True)[4:]]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in (run_copy / "checkpoints").rglob("*") if p.is_file()}


def test_state_missing_keys_is_skipped_naming_them(run_copy, reference):
    model, cfg, _ = load_checkpoint(run_copy)
    save_checkpoint(run_copy / "checkpoints" / "last", model, cfg, DatasetInfo(10, 1, (40,), 1), {"step": 8})
    with pytest.raises(CheckpointError, match=r"last/state\.json: no 'history', 'best_acc'.*'optimizer'"):
        select_checkpoint(run_copy / "checkpoints", names=("last",), require=("step", "history", "best_acc",
                                                                                "optimizer"))
    with pytest.warns(UserWarning, match=r"best .*skipped .*last/state\.json: no 'history'"):
        assert _train(run_copy, resume=True)["step"] == 8


def test_checkpoint_without_manifest_from_older_versions_loads_unverified(run_copy):
    last = run_copy / "checkpoints" / "last"
    (last / "manifest.json").unlink()
    meta = json.loads((last / "config.json").read_text())
    del meta["checkpoint_format"]
    (last / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written without checksums"):
        model, _, state = load_checkpoint(last)
    assert state["step"] == 8
    _truncate(last / "model.safetensors")  # unverifiable, but still never used when unreadable
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=rf"{last}/model\.safetensors: not a readable"):
        load_checkpoint(last)


def test_eval_takes_a_run_checkpoint_or_checkpoints_directory(run_copy, capsys):
    for path in (run_copy, run_copy / "checkpoints" / "last", run_copy / "checkpoints"):
        assert cli_main(["eval", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["step"] == 8
    assert cli_main(["eval", "--checkpoint", str(run_copy), "--ema"]) == 0  # the older flag still works
    assert json.loads(capsys.readouterr().out)["ema"] is True
    # a rotation interrupted between its renames: last is gone, last.old is found (with a warning)
    os.rename(run_copy / "checkpoints" / "last", run_copy / "checkpoints" / "last.old")
    with pytest.warns(UserWarning, match="last.old"):
        assert cli_main(["eval", str(run_copy / "checkpoints" / "last")]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 8


# --------------------------------------------------------------------------- full disk, umask


def test_full_disk_while_writing_keeps_the_previous_checkpoint(run_copy, monkeypatch):
    last = run_copy / "checkpoints" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    model, cfg, _ = load_checkpoint(last)

    def no_space(fd):
        raise OSError(28, "No space left on device")  # where a full disk surfaces with delayed allocation

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=rf"could not write checkpoint file .*\.last\.tmp-.*model\.safetensors: "
                                      rf"No space left on device; {last} is unchanged"):
        save_checkpoint(last, model, cfg, DatasetInfo(10, 1, (40,), 1), {"step": 9})
    monkeypatch.undo()
    assert sorted(os.listdir(run_copy / "checkpoints")) == ["best", "last"]  # the temporary copy is removed
    assert before == {p.name: p.read_bytes() for p in last.iterdir()}
    assert load_checkpoint(last)[2]["step"] == 8


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(ConfigError, match=r"output_dir: got .* with 1\.0 MiB free, expected at least .* MiB"):
        _train(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before writing anything


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_follow_the_umask(umask, tmp_path):
    from largekernel.models import create_model

    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c", create_model("dwnet1d_tiny", width=4, depth=1),
                               TrainConfig(**RUN), DatasetInfo(10, 1, (40,), 1), {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask
