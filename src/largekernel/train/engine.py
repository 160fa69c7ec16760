"""The training loop: AdamW / SGD on marked parameter groups, warmup + cosine, EMA, per-family hooks, resume, DDP.

The recipe is the one the large-kernel papers train with (ConvNeXt / DCLS:
AdamW, linear warmup then cosine decay, label smoothing, mixup / cutmix, EMA of
weights; Khalfaoui-Hassani et al., 2023, "Dilated convolution with learnable
spacings"; Romero et al., 2022, "FlexConv"). Family-specific techniques are
discovered on the model, so a model without them trains unchanged:

- after each optimizer step, every module with ``clamp_parameters()`` is
  called (``optim.install_dcls_clamp``: DCLS keeps its positions in the box);
- with ``dcls_sigma = (start, end)`` the Gaussian DCLS widths follow
  ``optim.SigmaSchedule`` over the optimizer steps;
- ``optim.dcls_repulsive_loss`` times ``dcls_repulsion``, and every ``"package.module:function"`` in
  ``regularizers`` as ``weight * function(model)`` (e.g. FlexConv's
  ``largekernel.nn.flexconv:antialiasing_loss``).

Determinism: batches are a function of ``(seed, epoch)``, augmentation draws
from a generator whose state is checkpointed together with torch's RNG, so a
run stopped after any step and resumed ends with bit-identical weights on CPU.
Under torchrun every process forms the same global batch and trains on its
``1 / world_size`` share: the averaged gradient equals the single-process one
(see docs/training.md for exactly when).

Order of work: the configuration is checked against the machine and the file
system and the model is built (``train.preflight``) before any data loads, so
a mistake stops the run in seconds with a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from largekernel.data import DatasetInfo, TensorDataset, load_dataset
from largekernel.data.randaugment import rand_augment
from largekernel.data.transforms import (Normalize, mixup_cutmix, random_crop, random_erasing, random_flip,
                                         random_resized_crop)
from largekernel.nn.marks import marks
from largekernel.optim import SigmaSchedule, dcls_repulsive_loss, install_dcls_clamp, param_groups
from largekernel.train.checkpoint import CheckpointChoice, CheckpointError, load_weights, save_checkpoint, select_checkpoint
from largekernel.train.config import ConfigError, TrainConfig, config_to_dict
from largekernel.train.distributed import DistInfo, all_reduce_sum, setup
from largekernel.train.logger import RunLogger
from largekernel.train.preflight import (build_model, check_data, check_disk_space, check_model_input, check_output,
                                         clear_run, resolve_device)

__all__ = ["train", "evaluate", "lr_factor", "build_optimizer", "count_parameters"]


# ---------------------------------------------------------------------------------------------
# building blocks


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (shared tensors once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def lr_factor(step: int, total_steps: int, warmup_steps: int, warmup_ratio: float, min_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from ``warmup_ratio`` then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over ``optim.param_groups`` (marks give positions / SSM / masks their own lr and decay)."""
    # timm's layout: each group's lr_scale multiplies the scheduled lr at every step (as timm's schedulers do).
    groups = [{**g, "lr": cfg.lr * g["lr_scale"]}
              for g in param_groups(model, weight_decay=cfg.weight_decay, position_lr_scale=cfg.position_lr_scale)]
    if cfg.kernel_net_weight_decay is not None:
        groups = _with_kernel_net_decay(groups, cfg.kernel_net_weight_decay, marks(model))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _with_kernel_net_decay(groups: list[dict], weight_decay: float, marked: dict[int, dict]) -> list[dict]:
    # Only "kernel_net" parameters whose mark left weight_decay unset take the configured decay;
    # an explicit mark (e.g. weight_decay=0.0 on SIREN frequencies) wins.
    out = []
    for g in groups:
        free = [p for p in g["params"] if g["kind"] == "kernel_net" and marked[id(p)]["weight_decay"] is None]
        fixed = [(p, n) for p, n in zip(g["params"], g["names"]) if not any(p is q for q in free)]
        if free:
            names = [n for p, n in zip(g["params"], g["names"]) if any(p is q for q in free)]
            out.append({**g, "params": free, "names": names, "weight_decay": weight_decay})
        if fixed:
            out.append({**g, "params": [p for p, _ in fixed], "names": [n for _, n in fixed]})
    return out


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _load_split(cfg: TrainConfig, split: str) -> Dataset:
    ds = load_dataset(cfg.dataset, split, cfg.data_dir, **cfg.dataset_kwargs)
    n = cfg.train_subset if split == "train" else cfg.test_subset
    if n is not None and n < len(ds):
        ds = ds.subset(n) if isinstance(ds, TensorDataset) else torch.utils.data.Subset(ds, range(n))
    return ds


def _fetch(ds: Dataset, batches: list[torch.Tensor], num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` for each index tensor: one indexing op for in-memory data, a DataLoader otherwise."""
    if isinstance(ds, TensorDataset):
        for idx in batches:
            yield ds.get_batch(idx)
        return
    loader = DataLoader(ds, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                        persistent_workers=False)
    yield from loader


class _ModelEma:
    """Exponential moving average of a model's parameters and buffers (Polyak averaging), kept in fp32.

    With ``warmup`` the decay at the n-th optimizer step is ``min(decay, 1 - n^(-2/3))`` (timm's ModelEmaV3
    warm-up with its defaults, gamma 1 and power 2/3): 0 at the first step, so the average starts at the
    trained weights instead of the initialisation, which a decay of 0.999 would keep ~86 % of after 150 steps.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay applied by the update after optimizer step ``step`` (1 for the first)."""
        return min(self.decay, 1.0 - step ** (-2 / 3)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for e, m in zip(self.module.parameters(), model.parameters()):
            e.lerp_(m, weight)
        for e, m in zip(self.module.buffers(), model.buffers()):
            if e.dtype.is_floating_point:
                e.lerp_(m, weight)
            else:
                e.copy_(m)


class _FamilyHooks:
    """The per-family learning techniques, discovered once on the model before any data loads (a regulariser
    that does not import, repulsion or a sigma schedule without DCLS layers raise :class:`ConfigError`)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        modules = list(model.modules())
        self.has_clamp = any(callable(getattr(m, "clamp_parameters", None)) for m in modules)
        self.functions: list[tuple[Callable, float]] = []
        for key, weight in cfg.regularizers.items():
            module_name, _, fn_name = key.partition(":")
            try:
                fn = getattr(import_module(module_name), fn_name)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"regularizers: cannot import {key!r} ({err}); expected 'package.module:function'") from None
            if not callable(fn):
                raise ConfigError(f"regularizers: got {key!r}, a {type(fn).__name__}; expected a function of the model")
            self.functions.append((fn, weight))
        if cfg.dcls_repulsion > 0:
            self.functions.append((dcls_repulsive_loss, cfg.dcls_repulsion))
            try:
                dcls_repulsive_loss(model)
            except ValueError as err:
                raise ConfigError(f"dcls_repulsion: got {cfg.dcls_repulsion}, expected 0 for model {cfg.model!r} "
                                  f"({err})") from None
        # Widths are set by the schedule, not learned: SIG leaves the optimizer (requires_grad False).
        # Its length is set by install(), once the dataset's size is known.
        self.sigma = None
        if cfg.dcls_sigma is not None:
            try:
                self.sigma = SigmaSchedule(model, *cfg.dcls_sigma, total_steps=1)
            except ValueError as err:
                raise ConfigError(f"dcls_sigma: got {cfg.dcls_sigma}, expected None for model {cfg.model!r} "
                                  f"({err})") from None
        self.cfg = cfg

    def install(self, optimizer: torch.optim.Optimizer, model: nn.Module, step: int, total_steps: int) -> None:
        """Clamp after every optimizer step; stretch the sigma schedule over ``total_steps`` and put it at
        ``step`` (resumed runs)."""
        if self.has_clamp:
            install_dcls_clamp(optimizer, model)
        if self.sigma is not None:
            self.sigma.total_steps = max(1, total_steps)
            self.sigma.last_step = step

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        terms = [w * fn(model) for fn, w in self.functions]
        return sum(terms) if terms else None

    def after_step(self) -> None:
        if self.sigma is not None:
            self.sigma.step()


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of ``epoch``: a pure function of ``(seed, epoch)`` so any step can be resumed."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _augment(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, num_classes: int,
             g: torch.Generator, normalize: Normalize | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's order: crops, flip, RandAugment (in pixel space: ``normalize`` undone and redone), random erasing
    (on the normalised input), then batch-level mixup / cutmix."""
    a = cfg.augment
    x = random_crop(x, a.crop_padding, g)
    if a.resized_crop_scale is not None:
        x = random_resized_crop(x, a.resized_crop_scale, a.resized_crop_ratio, generator=g)
    x = random_flip(x, a.hflip, g)
    if a.rand_augment_ops:
        pixels = normalize.inverse(x).clamp_(0.0, 1.0)
        x = normalize(rand_augment(pixels, a.rand_augment_ops, a.rand_augment_magnitude,
                                   a.rand_augment_magnitude_std, generator=g))
    if a.erase_prob > 0:
        x = random_erasing(x, a.erase_prob, generator=g)
    if a.mixup_alpha > 0 or a.cutmix_alpha > 0:
        return mixup_cutmix(x, y, num_classes, mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha,
                            prob=a.mix_prob, switch_prob=a.switch_prob, label_smoothing=cfg.label_smoothing,
                            generator=g)
    return x, y


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def _evaluate(model: nn.Module, ds: Dataset, cfg: TrainConfig, device: torch.device,
              dist_info: DistInfo) -> dict[str, float]:
    was_training = model.training
    model.eval()
    order = torch.arange(len(ds))[dist_info.rank::dist_info.world_size]
    batches = list(order.split(cfg.eval_batch_size))
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for x, y in _fetch(ds, batches, cfg.num_workers):
        x, y = x.to(device), y.to(device)
        with _autocast(cfg, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], dist_info, device)
    model.train(was_training)
    return {"acc": correct / count, "loss": loss_sum / count}


def evaluate(model: nn.Module, cfg: TrainConfig, split: str = "test",
             dataset: Dataset | None = None) -> dict[str, float]:
    """Accuracy (a fraction in [0, 1]) and mean cross-entropy of ``model`` on ``split`` of ``cfg.dataset``.

    ``dataset`` overrides the dataset read from ``cfg``. Uses the model's device
    and ``cfg.precision``; the model's train/eval mode is restored afterwards.
    """
    ds = dataset if dataset is not None else _load_split(cfg, split)
    device = next(iter(model.parameters()), torch.empty(0)).device
    return _evaluate(model, ds, cfg, device, DistInfo(0, 0, 1))


# ---------------------------------------------------------------------------------------------
# training


def _rng_state(g: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": g.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], g: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    g.set_state(state["augment"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# Settings a resumed run may change without changing what it computes (or that only say when to stop).
_RESUME_FREE = {"resume", "overwrite", "output_dir", "max_steps", "device", "num_threads", "num_workers",
                "log_every_steps", "checkpoint_every_steps", "data_dir", "eval_batch_size", "dist_timeout", "save_best"}
# What a training state must hold to be resumed.
_RESUME_KEYS = ("step", "history", "best_acc", "train_time_s", "epoch_loss", "optimizer", "rng")


def _warn_changed(cfg: TrainConfig, choice: CheckpointChoice) -> None:
    now, then = config_to_dict(cfg), config_to_dict(choice.cfg)
    changed = [f"{k} {then[k]!r} -> {v!r}" for k, v in now.items() if k not in _RESUME_FREE and then.get(k) != v]
    if changed:
        warnings.warn(f"resuming from {choice.path} with settings that differ from its run: {'; '.join(changed)}; "
                      "the run continues with the new values", stacklevel=3)


def _restore(choice: CheckpointChoice, model: nn.Module, optimizer: torch.optim.Optimizer, ema: _ModelEma | None,
             scaler: torch.amp.GradScaler, aug_gen: torch.Generator, device: torch.device) -> None:
    """Load a resumable checkpoint into the run's objects; anything that does not fit names the checkpoint's file."""
    state, tensors = choice.state, choice.path / "state.safetensors"
    load_weights(model, choice.weights, choice.path / "model.safetensors")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], aug_gen, device)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{tensors}: the optimizer / RNG state does not fit this run "
                              f"({type(err).__name__}: {err})") from None
    if ema is not None and state.get("ema"):
        load_weights(ema.module, state["ema"], tensors)


def _mean_over_processes(epoch_loss: list[float], dist_info: DistInfo, device: torch.device) -> list[float]:
    """``[sum of per-step losses averaged over processes, steps]`` from this process's ``[sum, steps]``."""
    total = all_reduce_sum([epoch_loss[0]], dist_info, device)[0]
    return [total / dist_info.world_size, epoch_loss[1]]


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; write checkpoints and logs under ``cfg.output_dir``.

    Returns ``best_acc``, ``last_acc``, ``ema_acc`` (None without EMA), ``params``,
    ``train_time_s``, ``epochs``, ``output_dir``, ``history`` (one dict per epoch:
    ``epoch``, ``train_loss``, ``test_acc``, ``test_loss``, ``lr``, ``time_s`` and
    ``ema_acc``), ``step`` and ``stopped_early`` (``max_steps`` reached).
    Accuracies are fractions in [0, 1]. Under torchrun, call it in every process.

    Raises :class:`ConfigError` before any data loads when the configuration cannot
    work here (device, data_dir, output_dir, model_kwargs, ...), and
    :class:`CheckpointError` when ``resume`` finds checkpoints but none usable.
    """
    # Every check that can fail runs before the process group forms, so no process writes anything
    # another is still checking (e.g. whether output_dir is empty).
    device = resolve_device(cfg)
    info: DatasetInfo = check_data(cfg)
    check_output(cfg)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info)
    check_model_input(cfg, model, info)
    hooks = _FamilyHooks(model, cfg)
    check_disk_space(cfg, model)
    dist_info = setup(device, cfg.dist_timeout)
    world, rank = dist_info.world_size, dist_info.rank
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size: got {cfg.batch_size}, expected a multiple of the number of processes ({world})")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
    output_dir = Path(cfg.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    if cfg.overwrite and dist_info.is_main:
        clear_run(output_dir)
    model.to(device)
    train_ds, test_ds = _load_split(cfg, "train"), _load_split(cfg, "test")
    if cfg.augment.rand_augment_ops and train_ds.normalize is None:
        raise ConfigError(f"augment.rand_augment_ops: got {cfg.augment.rand_augment_ops}, expected 0 for dataset "
                          f"{cfg.dataset!r} (RandAugment works in pixel space and needs a per-channel normalisation "
                          "to undo: cifar10, mnist, fashion_mnist, imagefolder)")
    n = len(train_ds)
    batch = min(cfg.batch_size, n - n % world)  # the global batch; tiny subsets use all (world-divisible) samples
    steps_per_epoch = n // batch  # incomplete last batches are dropped so every step averages `batch` samples
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    params = count_parameters(model)
    optimizer = build_optimizer(model, cfg)
    ema = _ModelEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None else None
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")

    logger = RunLogger(output_dir, enabled=dist_info.is_main)
    step, history, best_acc, train_time = 0, [], 0.0, 0.0
    # running (sum of batch losses, number of batches) of the current epoch; under torchrun the sum is this
    # process's, and the checkpointed one the mean over processes (restored as every process's own)
    epoch_loss = [0.0, 0.0]
    if cfg.resume:
        choice = select_checkpoint(ckpt_dir, require=_RESUME_KEYS)
        if choice is not None:
            if dist_info.is_main:
                if choice.skipped or choice.path.name != "last":
                    warnings.warn(f"resuming from {choice.describe()}", stacklevel=2)
                elif progress:
                    print(f"resuming from {choice.describe()}", flush=True)
                _warn_changed(cfg, choice)
            _restore(choice, model, optimizer, ema, scaler, aug_gen, device)
            state = choice.state
            step, history, best_acc = state["step"], state["history"], state["best_acc"]
            train_time, epoch_loss = state["train_time_s"], state["epoch_loss"]
        elif dist_info.is_main:  # (an --output-dir typo would otherwise start over unannounced)
            warnings.warn(f"resume: no checkpoint in {ckpt_dir}; starting from step 0", stacklevel=2)
        logger.rewrite(history)  # rows logged after the checkpoint (or before any) are not part of this run
    hooks.install(optimizer, model, step, total_steps)
    net = model
    if dist_info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(name: str) -> None:
        # Called by every process: the logged loss is averaged over processes first.
        loss = _mean_over_processes(epoch_loss, dist_info, device)
        if not dist_info.is_main:
            return
        state = {"step": step, "epoch": step // steps_per_epoch, "history": history, "best_acc": best_acc,
                 "train_time_s": train_time, "epoch_loss": loss, "optimizer": optimizer.state_dict(),
                 "ema": ema.module.state_dict() if ema is not None else None,
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "rng": _rng_state(aug_gen, device), "params": params}
        save_checkpoint(ckpt_dir / name, model, cfg, info, state)

    if dist_info.is_main and progress:
        print(f"largekernel train: {cfg.model} ({params:,} parameters) on {cfg.dataset} ({n} train / "
              f"{len(test_ds)} test), {cfg.epochs} epochs x {steps_per_epoch} steps, device {device}, "
              f"{world} process(es) -> {output_dir}", flush=True)
    stopped_early = False
    model.train()
    start_epoch = step // steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        order = _epoch_order(cfg.seed, epoch, n)
        first = step - epoch * steps_per_epoch
        batches = [order[i * batch:(i + 1) * batch] for i in range(first, steps_per_epoch)]
        bar = None
        if progress and dist_info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        in_memory = isinstance(train_ds, TensorDataset)
        if not in_memory and dist_info.distributed:
            # Streamed data: each process decodes only its share of the global batch.
            batches = [b.chunk(world)[rank] for b in batches]
        for x, y in _fetch(train_ds, batches, cfg.num_workers):
            x, y = _augment(x, y, cfg, info.num_classes, aug_gen, train_ds.normalize)
            if in_memory and dist_info.distributed:
                x, y = x.chunk(world)[rank], y.chunk(world)[rank]  # this process's share of the global batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr_now = cfg.lr * lr_factor(step, total_steps, warmup_steps, cfg.warmup_lr_ratio, cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr_now * g.get("lr_scale", 1.0)
            with _autocast(cfg, device):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing if y.dim() == 1 else 0.0)
                extra = hooks.extra_loss(model)
                total = loss + extra if extra is not None else loss
            if not torch.isfinite(total):
                raise FloatingPointError(f"loss is {total.item()} at step {step} (epoch {epoch + 1}); "
                                         f"try a lower lr (got {cfg.lr}) or clip_grad")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            hooks.after_step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            epoch_loss = [epoch_loss[0] + loss.item(), epoch_loss[1] + 1]
            if bar is not None:
                bar.update(1)
                if step % cfg.log_every_steps == 0:
                    bar.set_postfix(loss=f"{epoch_loss[0] / epoch_loss[1]:.4f}", lr=f"{lr_now:.2e}")
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and step % steps_per_epoch:
                train_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint("last")
            if cfg.max_steps is not None and step >= cfg.max_steps and step % steps_per_epoch:
                stopped_early = True
                break
        if bar is not None:
            bar.close()
        train_time += time.perf_counter() - t0
        if stopped_early:
            checkpoint("last")
            break
        metrics = _evaluate(model, test_ds, cfg, device, dist_info)
        loss_sum, loss_steps = _mean_over_processes(epoch_loss, dist_info, device)
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(1, loss_steps),
               "test_acc": metrics["acc"], "test_loss": metrics["loss"], "lr": lr_now, "time_s": train_time,
               "ema_acc": _evaluate(ema.module, test_ds, cfg, device, dist_info)["acc"] if ema is not None else None}
        history.append(row)
        epoch_loss = [0.0, 0.0]
        logger.log_epoch(row)
        if metrics["acc"] > best_acc or not history[:-1]:
            best_acc = max(best_acc, metrics["acc"])
            if cfg.save_best:
                checkpoint("best")
        checkpoint("last")
        if progress and dist_info.is_main:
            ema_txt = f" ema_acc {row['ema_acc']:.4f}" if ema is not None else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {row['train_loss']:.4f} test_acc "
                  f"{row['test_acc']:.4f}{ema_txt} lr {lr_now:.2e} ({train_time:.1f}s)", flush=True)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            stopped_early = epoch + 1 < cfg.epochs
            break
    logger.close()
    last = history[-1] if history else {}
    result = {"best_acc": best_acc if history else None, "last_acc": last.get("test_acc"),
              "ema_acc": last.get("ema_acc"), "params": params, "train_time_s": train_time,
              "epochs": len(history), "output_dir": str(output_dir), "history": history, "step": step,
              "stopped_early": stopped_early}
    if dist_info.is_main and progress:
        acc = (lambda v: "n/a" if v is None else f"{100 * v:.2f}%")
        print(f"done: best_acc {acc(result['best_acc'])} last_acc {acc(result['last_acc'])} "
              f"ema_acc {acc(result['ema_acc'])} params {params:,} time {train_time:.1f}s -> {output_dir}", flush=True)
    return result
