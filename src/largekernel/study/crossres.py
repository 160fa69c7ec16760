"""Cross-resolution: a model trained at the native resolution, evaluated at a higher one (FlexConv's claim).

Romero et al. (ICLR 2022) deploy FlexNets at resolutions not seen in training:
a continuous kernel is resampled on the finer grid
(:func:`largekernel.nn.flexconv.set_resolution`), then evaluated as is and
after a short fine-tune at the target resolution (their ``run_crossres.py``;
here one pass over 1024 training samples (``plan_transfers``) at a tenth of
the learning rate).
NIFF's filter is a function of the integer frequency, so the same network
applies to any input size unchanged; a dense kernel keeps its taps and covers
less of the finer input (the control). Each result is cached as
``transfer_<target>.json`` beside the source run and validated like
``result.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from largekernel.study.cache import config_hash, transfer_config, write_json
from largekernel.study.runs import run_dir

__all__ = ["transfer_path", "transfer_one", "to_resolution", "FINETUNE_LR_SCALE"]

FINETUNE_LR_SCALE = 0.1  # fine-tune at a tenth of the recipe's peak lr, constant: adapt, do not retrain


def transfer_path(out: Path, job: dict[str, Any]) -> Path:
    return run_dir(out, job["source"]) / f"transfer_{job['target']}.json"


def to_resolution(model: torch.nn.Module, size: int, train_size: int) -> torch.nn.Module:
    """Resample ``model``'s continuous kernels (CKConv / FlexConv) for inputs of ``size`` instead of ``train_size``;
    other layers are left as they are (NIFF adapts by itself, a dense kernel keeps its taps)."""
    from largekernel.nn.flexconv import continuous_layers, set_resolution

    if any(True for _ in continuous_layers(model)):
        set_resolution(model, size, train_size)
    return model


def _finetune(model: torch.nn.Module, cfg, samples: int, seed: int) -> None:
    """One pass of AdamW over ``samples`` random training samples at the target resolution (cross-entropy only)."""
    from largekernel.data import load_dataset
    from largekernel.optim import param_groups

    data = load_dataset(cfg.dataset, "train", cfg.data_dir, **cfg.dataset_kwargs)
    if cfg.train_subset is not None:
        data = data.subset(cfg.train_subset)
    lr = cfg.lr * FINETUNE_LR_SCALE
    optimizer = torch.optim.AdamW(param_groups(model, lr, cfg.weight_decay), lr=lr)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:samples]
    model.train()
    for index in order.split(cfg.batch_size):
        x, y = data.get_batch(index)  # (B, C, *spatial), (B,)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def transfer_one(out: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the source run's model at ``job["target"]`` as is, then after the fine-tune; cache the record."""
    from largekernel.study.plan import DATASETS
    from largekernel.train import TrainConfig, evaluate, load_checkpoint

    source = job["source"]
    plan = DATASETS[source["dataset"]]
    directory = run_dir(out, source)
    model, _, _ = load_checkpoint(directory)
    torch.manual_seed(source["seed"])
    cfg = TrainConfig(**{**source["config"], "dataset_kwargs": {plan.resolution_key: job["target"]}},
                      output_dir=str(directory))
    to_resolution(model, job["target"], source["resolution"])
    acc = evaluate(model, cfg)["acc"]
    start = time.perf_counter()
    _finetune(model, cfg, job["finetune_samples"], source["seed"])
    finetune_time = time.perf_counter() - start
    finetuned = evaluate(model, cfg)["acc"]
    n_test = len(_test_set(cfg))
    config = transfer_config(job)
    record = {"target": job["target"], "config": config, "config_hash": config_hash(config),
              "metrics": {"acc": 100 * acc, "finetuned_acc": 100 * finetuned, "n_test": n_test,
                          "finetune_time_s": finetune_time}}
    write_json(transfer_path(out, job), record)
    return {**record, "job": job}


def _test_set(cfg) -> Any:
    from largekernel.data import load_dataset

    data = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.dataset_kwargs)
    return data.subset(cfg.test_subset) if cfg.test_subset is not None else data
