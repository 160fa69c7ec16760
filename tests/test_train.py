"""largekernel.train: config validation, schedule, optimizer groups, hooks, EMA, checkpoints, bit-identical resume."""

import contextlib
import json
import math
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from largekernel.models import is_model, register_model
from largekernel.optim import mark
from largekernel.train import TrainConfig, build_optimizer, evaluate, load_checkpoint, lr_factor, save_checkpoint, train
from largekernel.train.config import ConfigError


class _Clamped(nn.Module):
    """A layer with the per-family hooks the loop must discover: clamping, a regulariser, a progress schedule."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 5) * 0.3)
        self.pos = mark(nn.Parameter(torch.zeros(channels)), kind="position")
        self.clamp_calls = 0

    def forward(self, x):
        return F.conv1d(x, self.weight, padding=2, groups=x.shape[1]) + self.pos.view(1, -1, 1)

    def clamp_parameters(self):
        self.clamp_calls += 1
        with torch.no_grad():
            self.pos.clamp_(-0.01, 0.01)



class _Tiny(nn.Module):
    def __init__(self, num_classes=10, in_chans=1, width=8, dropout=0.1):
        super().__init__()
        self.stem = nn.Conv1d(in_chans, width, 3, padding=1)
        self.mix = _Clamped(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.gelu(self.mix(self.stem(x)))
        return self.head(self.drop(x.mean(-1)))


if not is_model("_test_train_tiny"):
    @register_model
    def _test_train_tiny(**kwargs):
        return _Tiny(**kwargs)


class _TinyDcls(nn.Module):
    """A Gaussian DCLS layer (learned positions, scheduled widths) between a stem and a head."""

    def __init__(self, num_classes=10, in_chans=1, width=4):
        super().__init__()
        from largekernel.nn import DclsConv1d

        self.stem = nn.Conv1d(in_chans, width, 3, padding=1)
        self.dcls = DclsConv1d(width, width, 4, 9, padding=4, groups=width, interpolation="gaussian")
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(F.gelu(self.dcls(self.stem(x))).mean(-1))


if not is_model("_test_train_tiny_dcls"):
    @register_model
    def _test_train_tiny_dcls(**kwargs):
        return _TinyDcls(**kwargs)


def _cfg(tmp_path, **kw):
    base = dict(model="_test_train_tiny", dataset="mnist1d", epochs=2, batch_size=32, lr=1e-2, train_subset=160,
                test_subset=64, output_dir=str(tmp_path / "run"), seed=3)
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("key,value,expected", [
    ("lr", -1.0, "lr: got -1.0, expected > 0"),
    ("batch_size", 0, "batch_size: got 0, expected a positive integer"),
    ("epochs", 0, "epochs: got 0"),
    ("label_smoothing", 1.0, "label_smoothing: got 1.0"),
    ("ema_decay", 1.0, "ema_decay: got 1.0"),
    ("dataset", "imagenet", "dataset: got 'imagenet'"),
    ("optimizer", "lamb", "optimizer: got 'lamb'"),
    ("augment", {"hflip": 2.0}, "augment.hflip: got 2.0"),
    ("augment", {"erase_prob": 1.5}, "augment.erase_prob: got 1.5"),
    ("augment", {"resized_crop_scale": [0.5, 0.1]}, "augment.resized_crop_scale: got (0.5, 0.1)"),
    ("augment", {"rand_augment_ops": -1}, "augment.rand_augment_ops: got -1"),
    ("augment", {"rand_augment_magnitude": 11.0}, "augment.rand_augment_magnitude: got 11.0"),
    ("regularizers", {"nocolon": 1.0}, "regularizers: got 'nocolon'"),
    # inf and nan pass range checks such as "> 0": refused by name
    ("lr", float("inf"), "lr: got inf, expected a finite number"),
    ("weight_decay", float("inf"), "weight_decay: got inf, expected a finite number"),
    ("lr", float("nan"), "lr: got nan, expected a finite number"),
    ("betas", (0.9, float("nan")), "betas: got (0.9, nan), expected finite numbers"),
    ("augment", {"hflip": float("nan")}, "augment.hflip: got nan"),
    ("regularizers", {"a.b:c": float("inf")}, "regularizers.a.b:c: got inf, expected a finite number >= 0"),
    ("output_dir", "", "output_dir: got '', expected a directory path"),
    ("data_dir", " ", "data_dir: got ' ', expected None or a directory path"),
    ("dist_timeout", 0.0, "dist_timeout: got 0.0, expected > 0 seconds"),
])
def test_config_rejects_impossible_values(key, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        TrainConfig(**{key: value})
    assert issubclass(ConfigError, ValueError)  # code catching ValueError catches it


def test_config_resume_and_overwrite_exclude_each_other():
    with pytest.raises(ConfigError, match=r"overwrite: got True, expected False with resume=True"):
        TrainConfig(resume=True, overwrite=True)


def test_lr_schedule_formula():
    total, warm = 100, 10
    assert lr_factor(0, total, warm, 0.01, 0.0) == pytest.approx(0.01)
    assert lr_factor(5, total, warm, 0.01, 0.0) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, total, warm, 0.01, 0.0) == pytest.approx(1.0)
    for step in (30, 55, 90):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert lr_factor(step, total, warm, 0.01, 0.1) == pytest.approx(expected)
    assert lr_factor(100, total, warm, 0.01, 0.1) == pytest.approx(0.1)


def test_optimizer_groups_follow_marks(tmp_path):
    model = _Tiny()
    model.k = nn.Linear(3, 3)
    mark(model.k.weight, kind="kernel_net")
    model.omega = mark(nn.Parameter(torch.ones(2, 2)), kind="kernel_net", weight_decay=0.0)
    opt = build_optimizer(model, _cfg(tmp_path, lr=0.1, weight_decay=0.05, kernel_net_weight_decay=0.2))
    assert isinstance(opt, torch.optim.AdamW)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.mix.pos)]["lr"] == pytest.approx(0.5) and by_param[id(model.mix.pos)]["weight_decay"] == 0
    assert by_param[id(model.stem.weight)]["weight_decay"] == 0.05
    assert by_param[id(model.stem.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.k.weight)]["weight_decay"] == 0.2  # configured kernel-net decay
    assert by_param[id(model.omega)]["weight_decay"] == 0.0  # an explicit mark wins
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sgd = build_optimizer(model, _cfg(tmp_path, optimizer="sgd", momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]


# --------------------------------------------------------------------------- training loop


def test_train_runs_hooks_logs_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, ema_decay=0.9, label_smoothing=0.1, clip_grad=1.0)
    result = train(cfg, progress=False)
    steps = 2 * (160 // 32)
    assert result["step"] == steps and result["epochs"] == 2 and len(result["history"]) == 2
    assert set(result["history"][0]) >= {"epoch", "train_loss", "test_acc", "lr", "time_s", "ema_acc"}
    assert result["best_acc"] == max(h["test_acc"] for h in result["history"])
    assert result["last_acc"] == result["history"][-1]["test_acc"] and result["ema_acc"] is not None
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,test_acc")
    for name in ("last", "best"):
        assert {p.name for p in (run / "checkpoints" / name).iterdir()} == {
            "model.safetensors", "config.json", "state.json", "state.safetensors", "manifest.json"}
    model, cfg2, state = load_checkpoint(run)
    # hooks ran inside the loop: one clamp per optimizer step, progress fractions step / total
    assert state["step"] == steps
    trained = _Tiny()
    trained.load_state_dict(load_file(str(run / "checkpoints" / "last" / "model.safetensors")))
    assert trained.mix.pos.abs().max() <= 0.01 + 1e-7
    assert cfg2 == cfg and not model.training
    # evaluate() against a direct computation on the test split
    from largekernel.data import load_dataset

    test = load_dataset("mnist1d", "test")
    with torch.no_grad():
        logits = model(test.x[:64])
    metrics = evaluate(model, cfg2)
    assert metrics["acc"] == pytest.approx((logits.argmax(-1) == test.y[:64]).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, test.y[:64]).item(), rel=1e-5)
    assert metrics["acc"] == pytest.approx(result["last_acc"])
    ema_model, _, _ = load_checkpoint(run, ema=True)
    assert evaluate(ema_model, cfg2)["acc"] == pytest.approx(result["ema_acc"])


def test_hooks_are_called_per_step(tmp_path, monkeypatch):
    calls = []
    original = _Clamped.clamp_parameters

    def counting(self):
        calls.append(1)
        original(self)

    monkeypatch.setattr(_Clamped, "clamp_parameters", counting)
    train(_cfg(tmp_path, epochs=1), progress=False)
    assert len(calls) == 5


def test_regularizer_functions_enter_the_loss(tmp_path):
    # Plain SGD: a regulariser 100 * ||w||^2 multiplies w by (1 - 2 * 100 * lr) = 0.8 per step on top of the
    # task gradient, so after 5 steps the depthwise weights are about 3x smaller than without it.
    kw = dict(epochs=1, optimizer="sgd", momentum=0.0, lr=1e-3, weight_decay=0.0, warmup_epochs=0.0,
              min_lr_ratio=1.0)
    train(_cfg(tmp_path / "plain", **kw), progress=False)
    train(_cfg(tmp_path / "reg", regularizers={"tests.test_train:_weight_energy": 100.0}, **kw), progress=False)
    plain = load_checkpoint(tmp_path / "plain" / "run")[0].mix.weight.abs().mean()
    reg = load_checkpoint(tmp_path / "reg" / "run")[0].mix.weight.abs().mean()
    assert reg < 0.5 * plain
    with pytest.raises(ValueError, match="regularizers: cannot import 'tests.test_train:missing'"):
        train(_cfg(tmp_path, regularizers={"tests.test_train:missing": 1.0}), progress=False)


def _weight_energy(model):
    return model.mix.weight.square().sum()


@pytest.mark.parametrize("stops", [[3], [5, 7]])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, stops):
    # Dropout, mixup, crop and EMA consume every random stream the loop has.
    kw = dict(ema_decay=0.9, augment={"crop_padding": 3, "mixup_alpha": 0.4, "hflip": 0.5}, epochs=2)
    full = train(_cfg(tmp_path / "full", **kw), progress=False)
    for i, stop in enumerate(stops):  # stop mid-epoch (3, 7) and exactly at an epoch boundary (5)
        with pytest.warns(UserWarning, match="resume: no checkpoint") if i == 0 else contextlib.nullcontext():
            part = train(_cfg(tmp_path / "part", max_steps=stop, resume=True, **kw), progress=False)
        assert part["step"] == stop and part["stopped_early"]
    resumed = train(_cfg(tmp_path / "part", resume=True, **kw), progress=False)
    assert resumed["step"] == full["step"] == 10
    a = load_file(str(tmp_path / "full" / "run" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, _, sa = load_checkpoint(tmp_path / "full" / "run")
    _, _, sb = load_checkpoint(tmp_path / "part" / "run")
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    assert [h["test_acc"] for h in full["history"]] == [h["test_acc"] for h in resumed["history"]]
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in resumed["history"]]
    log = (tmp_path / "part" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_dcls_sigma_schedule_and_repulsion_resume_exactly(tmp_path):
    from largekernel.nn import DclsConv1d

    kw = dict(model="_test_train_tiny_dcls", epochs=1, dcls_sigma=(2.0, 0.5), dcls_repulsion=0.1)
    full = train(_cfg(tmp_path / "full", **kw), progress=False)
    train(_cfg(tmp_path / "part", max_steps=2, **kw), progress=False)
    train(_cfg(tmp_path / "part", resume=True, **kw), progress=False)
    a = load_checkpoint(tmp_path / "full" / "run")[0]
    b = load_checkpoint(tmp_path / "part" / "run")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # after the last step the widths are the schedule's end value, as set_sigma(0.5) writes them
    reference = DclsConv1d(4, 4, 4, 9, padding=4, groups=4, interpolation="gaussian")
    reference.set_sigma(0.5)
    assert torch.equal(a.dcls.SIG, reference.SIG) and full["step"] == 5
    # positions stayed in the box (the clamp ran) and moved (their lr is the position lr)
    assert a.dcls.P.abs().max() <= 4 and not torch.equal(a.dcls.P, _fresh_positions())
    with pytest.raises(ValueError, match="no DCLS layer"):
        train(_cfg(tmp_path / "x", dcls_repulsion=0.1), progress=False)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_decay_warms_up_as_timm_model_ema_v3(tmp_path, warmup):
    # timm's ModelEmaV3 (use_warmup, gamma 1, power 2/3): decay min(ema_decay, 1 - n^(-2/3)) at the n-th step
    kw = dict(ema_decay=0.99, ema_warmup=warmup)
    states = [load_checkpoint(train(_cfg(tmp_path / str(n), max_steps=n, **kw), progress=False)["output_dir"])
              for n in (1, 2)]
    torch.manual_seed(3)
    init = _Tiny().state_dict()
    weights = [dict(m.state_dict()) for m, _, _ in states]
    emas = [state["ema"] for _, _, state in states]
    decays = [min(0.99, 1 - n ** (-2 / 3)) if warmup else 0.99 for n in (1, 2)]
    for k in init:
        ema1 = decays[0] * init[k] + (1 - decays[0]) * weights[0][k]
        torch.testing.assert_close(emas[0][k], ema1)
        torch.testing.assert_close(emas[1][k], decays[1] * ema1 + (1 - decays[1]) * weights[1][k])
    if warmup:  # the first update copies the trained weights: no trace of the initialisation
        assert all(torch.equal(emas[0][k], weights[0][k]) for k in init)


def test_resume_rewrites_the_log_from_the_checkpoint(tmp_path):
    train(_cfg(tmp_path, max_steps=5), progress=False)  # epoch 1 of 2, then stop
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"epoch": 2, "step": 7, "tra')  # a crash while appending epoch 2's row
    train(_cfg(tmp_path, resume=True), progress=False)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3


def _fresh_positions():
    torch.manual_seed(3)
    return _TinyDcls().dcls.P


def test_precision_bf16_on_cpu_and_fp16_rejected(tmp_path):
    """bf16 autocast trains like float32: the same run's losses agree within bf16 accuracy."""
    low = train(_cfg(tmp_path / "bf16", epochs=1, precision="bf16"), progress=False)
    full = train(_cfg(tmp_path / "fp32", epochs=1), progress=False)
    a, b = low["history"][0]["train_loss"], full["history"][0]["train_loss"]
    assert math.isfinite(a) and abs(a - b) < 0.05 * b
    with pytest.raises(ValueError, match="precision: got 'fp16' on device cpu"):
        train(_cfg(tmp_path, epochs=1, precision="fp16"), progress=False)


# --------------------------------------------------------------------------- checkpoints (faults: test_train_checkpoint.py)


def test_checkpoint_state_roundtrip_is_exact(tmp_path):
    from largekernel.data import DatasetInfo

    model = _Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 40)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, None]}}
    save_checkpoint(tmp_path / "c", model, _cfg(tmp_path), DatasetInfo(10, 1, (40,), 1), state)
    _, _, back = load_checkpoint(tmp_path / "c")
    assert torch.equal(back["rng"], state["rng"]) and back["nested"] == {"a": [1, 2.5, None]}
    opt2 = torch.optim.AdamW(_Tiny().parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"].items():
        assert all(torch.equal(v[name], opt2.state_dict()["state"][k][name]) for name in v)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no EMA weights"):
        load_checkpoint(tmp_path / "c", ema=True)


@pytest.mark.parametrize("dataset, augment, expected", [
    ("mnist1d", {"resized_crop_scale": (0.5, 1.0)}, "augment.resized_crop_scale: got (0.5, 1.0), expected it off"),
    ("mnist1d", {"erase_prob": 0.5}, "augment.erase_prob: got 0.5, expected it off for the 1-D"),
    ("digits", {"rand_augment_ops": 2}, "augment.rand_augment_ops: got 2, expected 0 for dataset 'digits'"),
])
def test_image_augmentations_need_image_datasets(tmp_path, dataset, augment, expected):
    model = "dwnet2d_tiny" if dataset == "digits" else "dwnet1d_tiny"
    with pytest.raises(ValueError, match=re.escape(expected)):
        train(_cfg(tmp_path, dataset=dataset, model=model, augment=augment), progress=False)


def test_augment_order_and_pixel_space(monkeypatch):
    """RandAugment sees [0, 1] pixels (the loader's normalisation undone) and its output is normalised again."""
    from largekernel.data import Normalize
    from largekernel.train import engine

    seen = {}

    def fake_rand_augment(pixels, *args, **kwargs):
        seen["pixels"] = pixels.clone()
        return 1.0 - pixels

    monkeypatch.setattr(engine, "rand_augment", fake_rand_augment)
    norm = Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    pixels = torch.rand(4, 3, 6, 6)
    cfg = TrainConfig(augment={"rand_augment_ops": 1})
    x, _ = engine._augment(norm(pixels), torch.zeros(4, dtype=torch.long), cfg, 10, torch.Generator(), norm)
    torch.testing.assert_close(seen["pixels"], pixels)
    torch.testing.assert_close(x, norm(1.0 - pixels))


def test_training_on_file_datasets(tmp_path):
    """ImageFolder streams through a DataLoader (with a test subset), CIFAR batches stay uint8 in memory."""
    rng = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(3):
            (tmp_path / "tree" / split / f"class{c}").mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (10, 10, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "tree" / split / f"class{c}" / f"{i}.png")
    kw = dict(model="dwnet2d_tiny", epochs=1, batch_size=4, augment={"crop_padding": 1, "hflip": 0.5,
              "mixup_alpha": 0.2, "cutmix_alpha": 1.0})
    # The ImageNet recipe's augmentations: random resized crop, RandAugment (pixel space), random erasing.
    recipe = dict(kw, augment={"resized_crop_scale": (0.08, 1.0), "hflip": 0.5, "rand_augment_ops": 2,
                               "erase_prob": 0.25, "mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    result = train(_cfg(tmp_path / "folder", dataset="imagefolder", data_dir=str(tmp_path / "tree"),
                        dataset_kwargs={"image_size": 8}, train_subset=None, test_subset=5, **recipe), progress=False)
    assert result["step"] == 3

    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [0, 1, 2, 3]}, f)
    result = train(_cfg(tmp_path / "cifar_run", dataset="cifar10", data_dir=str(root), train_subset=None,
                        test_subset=None, **kw), progress=False)
    assert result["step"] == 5
