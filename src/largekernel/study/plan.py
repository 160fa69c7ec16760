"""What the study trains: datasets, resolutions, the variant of each family, matched parameter counts.

A *point* is one dataset at one resolution (``mnist1d_160``: MNIST-1D generated
at length 160). Every family is trained at the dataset's native resolution;
the families of the resolution sweep again at each higher one, with the same
recipe, so that accuracy can be read against resolution. The small dense
kernel keeps its taps (its receptive field covers less and less of the
pattern); every large or learnable kernel spans the input from its centre at
every resolution (``extent = resolution - 1`` at the native size, scaled with
it), and DCLS and FlexConv keep the size knob matched at the native resolution,
so their parameter count does not change with the input; only the dense large
kernel pays one weight per tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

__all__ = ["DatasetPlan", "DATASETS", "VARIANTS", "LABELS", "TRANSFORMER_VARIANTS", "MNIST1D_BASELINES",
           "point_name", "extent_at", "plan_runs", "plan_transfers", "num_params"]

# Greydanus (2020), "Scaling down deep learning", Table 1: test accuracy (%) on MNIST-1D.
MNIST1D_BASELINES = {"logistic regression": 32, "MLP": 68, "CNN": 94, "GRU": 91, "human": 96}

VARIANTS = ("small", "large", "dilated", "dcls", "flexconv", "niff", "fft", "sgconv", "vit", "fit")
LABELS = {
    "small": "small dense", "large": "large dense", "dilated": "dilated", "dcls": "DCLS", "flexconv": "FlexConv",
    "niff": "NIFF", "fft": "FFT (large dense)", "sgconv": "SGConv", "vit": "ViT", "fit": "FiT",
}
# Families whose size knob (the layer class's ``size_knob``) is chosen to match a reference model's parameter count
# (``--match``).
_MATCHED = ("dcls", "flexconv")
_TRANSFORMERS = {"vit": "vit_tiny", "fit": "fit_tiny"}
TRANSFORMER_VARIANTS = tuple(_TRANSFORMERS)  # token mixers: no spatial kernel to measure
_CONV_VARIANTS = tuple(v for v in VARIANTS if v not in _TRANSFORMERS)


@dataclass
class DatasetPlan:
    """What a study trains on one dataset: the model, the two kernel extents, the resolutions and the recipe."""

    model: str
    small: int  # extent of the small dense kernel (the same at every resolution)
    large: int  # extent of every large / learnable-extent kernel at the native resolution
    variants: tuple[str, ...]  # trained at the native resolution
    epochs: int
    seeds: int
    quick_epochs: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    resolutions: tuple[int, ...] = ()  # native first, then the sweep's higher ones
    quick_resolutions: tuple[int, ...] = ()
    quick_train_subset: int | None = None  # --quick trains on the first samples only (a smoke run)
    resolution_key: str | None = None  # the dataset keyword that sets the resolution (``length``, ``size``)
    sweep_variants: tuple[str, ...] = ()  # trained again above the native resolution
    sweep_skip: dict[int, tuple[str, ...]] = field(default_factory=dict)  # resolution -> sweep variants left out
    transfer_variants: tuple[str, ...] = ()  # native models evaluated (and fine-tuned) at the higher resolutions
    transformer_kwargs: dict[str, Any] = field(default_factory=dict)  # sizes of the ViT / FiT variants
    train_samples: int = 1  # size of the training split: orders the runs by cost (longest first)


_SWEEP = ("small", "large", "dcls", "flexconv", "niff", "sgconv")
DATASETS: dict[str, DatasetPlan] = {
    # MNIST-1D: (1, L) sequences, generated at L = 40 (published), 160 and 640: the same digits, 4x and 16x more
    # samples per feature. A kernel of L - 1 taps sees the whole sequence from its centre. Four blocks: stacking
    # matters more than width on MNIST-1D. Width 16, batch 32 and 3 epochs keep the 640-sample point affordable
    # on two CPU cores (the same recipe at every resolution). DCLS is left out at 640: with its matched count of
    # elements, initialised around the centre, it tracks the small dense kernel at 160 already, and the 640 runs
    # are the study's most expensive.
    "mnist1d": DatasetPlan("dwnet1d_tiny", small=5, large=39, variants=_CONV_VARIANTS, epochs=3, seeds=2,
                           quick_epochs=1, model_kwargs=dict(depth=4, width=16),
                           train_kwargs=dict(batch_size=32, lr=3e-3, weight_decay=0.05),
                           resolutions=(40, 160, 640), quick_resolutions=(40, 160), quick_train_subset=512,
                           resolution_key="length", sweep_variants=_SWEEP, sweep_skip={640: ("dcls",)},
                           transfer_variants=("small", "flexconv", "niff"), train_samples=4000),
    # scikit-learn digits: (1, S, S) images, bilinearly resampled from 8x8 to 32x32; a kernel of S - 1 taps
    # sees the whole image from its centre. ViT and FiT (patch 2: 16 then 256 tokens) test FiT's scaling claim.
    # Batch 16: 1347 images give few steps per epoch.
    "digits": DatasetPlan("dwnet2d_tiny", small=3, large=7,
                          variants=tuple(v for v in VARIANTS if v != "sgconv"), epochs=5, seeds=2, quick_epochs=1,
                          model_kwargs=dict(width=16),
                          train_kwargs=dict(batch_size=16, lr=3e-3, weight_decay=0.05),
                          resolutions=(8, 32), quick_resolutions=(8, 16), quick_train_subset=512,
                          resolution_key="size",
                          sweep_variants=tuple(v for v in _SWEEP if v != "sgconv") + ("vit", "fit"),
                          transfer_variants=("small", "flexconv", "niff"),
                          transformer_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=2,
                                                  global_pool="avg"), train_samples=1347),
    # CIFAR-10: the stride-2 stem gives 16x16 maps; a 15x15 kernel sees all of one from its centre. No sweep.
    "cifar10": DatasetPlan("dwnet2d_small", small=3, large=15,
                           variants=tuple(v for v in _CONV_VARIANTS if v != "sgconv"),
                           epochs=100, seeds=1, quick_epochs=2, model_kwargs=dict(stem_stride=2),
                           train_kwargs=dict(batch_size=128, lr=2e-3, weight_decay=0.05, label_smoothing=0.1,
                                             augment=dict(crop_padding=4, hflip=0.5)),
                           resolutions=(32,), train_samples=50000),
}


def point_name(dataset: str, resolution: int) -> str:
    """The name of one dataset at one resolution: ``mnist1d_160``, ``digits_32``."""
    return f"{dataset}_{resolution}"


def extent_at(plan: DatasetPlan, resolution: int) -> int:
    """The large kernels' extent at ``resolution``: the native extent plus one, scaled with the input, minus one."""
    return max(1, round((plan.large + 1) * resolution / plan.resolutions[0]) - 1)


def _variant_spec(name: str, plan: DatasetPlan, resolution: int) -> tuple[str, dict[str, Any]]:
    """The model name and its keywords (before parameter matching) of variant ``name`` at ``resolution``."""
    if name in _TRANSFORMERS:
        return _TRANSFORMERS[name], {**plan.transformer_kwargs, "img_size": resolution}
    large = extent_at(plan, resolution)
    if name == "small":
        kwargs = {"conv": "conv", "kernel_size": plan.small}
    elif name == "dilated":  # the small kernel's taps, spread over the large extent
        kwargs = {"conv": "dilated", "kernel_size": large, "conv_kwargs": {"small_kernel_size": plan.small}}
    else:
        kwargs = {"conv": "conv" if name == "large" else name, "kernel_size": large}
    return plan.model, {**plan.model_kwargs, **kwargs}


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _build(model: str, info, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    from largekernel.models import create_model

    return create_model(model, num_classes=info.num_classes, in_chans=info.in_chans, **model_kwargs)


def _matched_knob(name: str, plan: DatasetPlan, info, target: int) -> dict[str, Any]:
    """The layer options setting ``name``'s size knob to the value whose native model's parameter count is closest
    to ``target`` (:func:`largekernel.surgery.match_params` over the family's ``size_kwargs``)."""
    from largekernel.models.layers import layer_class
    from largekernel.surgery import match_params

    cls = layer_class(name, info.dims)
    model, kwargs = _variant_spec(name, plan, plan.resolutions[0])
    value = match_params(lambda v: _build(model, info, {**kwargs, "conv_kwargs": cls.size_kwargs(v)}), target,
                         cls.size_limit((plan.large,) * info.dims))
    return cls.size_kwargs(value)


def _plan_resolutions(plan: DatasetPlan, quick: bool, sweep: bool) -> tuple[int, ...]:
    resolutions = (plan.quick_resolutions or plan.resolutions) if quick else plan.resolutions
    return resolutions if sweep else resolutions[:1]


def plan_runs(datasets: Sequence[str], variants: Sequence[str] | None = None, seeds: int | None = None,
              epochs: int | None = None, quick: bool = False, data_dir: str | None = None,
              train_overrides: dict[str, Any] | None = None, match: str = "large",
              sweep: bool = True) -> list[dict[str, Any]]:
    """The list of runs (one dict each: dataset, resolution, point, variant, seed, TrainConfig keywords, the
    input's spatial dims and a relative cost).

    ``match`` names the variant (``"large"`` or ``"small"``) whose native parameter count DCLS and FlexConv
    match; ``sweep=False`` trains the native resolution only.
    """
    if match not in ("large", "small"):
        raise ValueError(f"match must be 'large' or 'small', got {match!r}")
    from largekernel.data import dataset_info

    runs = []
    for dataset in datasets:
        plan = DATASETS[dataset]
        native = plan.resolutions[0]
        data_kwargs = (lambda r: {plan.resolution_key: r}) if plan.resolution_key else (lambda r: {})
        info = dataset_info(dataset, data_dir, **data_kwargs(native))
        reference, reference_kwargs = _variant_spec(match, plan, native)
        target = num_params(_build(reference, info, reference_kwargs))
        knobs = {name: _matched_knob(name, plan, info, target) for name in _MATCHED
                 if name in plan.variants and (variants is None or name in variants)}
        n_seeds = seeds if seeds is not None else (1 if quick else plan.seeds)
        n_epochs = epochs if epochs is not None else (plan.quick_epochs if quick else plan.epochs)
        recipe = {**plan.train_kwargs, **({"train_subset": plan.quick_train_subset}
                                          if quick and plan.quick_train_subset else {}), **(train_overrides or {})}
        for resolution in _plan_resolutions(plan, quick, sweep):
            trained = plan.variants if resolution == native else [
                v for v in plan.sweep_variants if v not in plan.sweep_skip.get(resolution, ())]
            for variant in (v for v in trained if variants is None or v in variants):
                model, model_kwargs = _variant_spec(variant, plan, resolution)
                if variant in knobs:
                    model_kwargs = {**model_kwargs, "conv_kwargs": knobs[variant]}
                for seed in range(n_seeds):
                    config = dict(model=model, model_kwargs=model_kwargs, dataset=dataset, data_dir=data_dir,
                                  dataset_kwargs=data_kwargs(resolution), epochs=n_epochs, seed=seed, save_best=False,
                                  **recipe)
                    # relative training cost: samples x positions x epochs (the workers take the longest first)
                    cost = (config.get("train_subset") or plan.train_samples) * resolution ** info.dims * n_epochs
                    runs.append({"dataset": dataset, "resolution": resolution,
                                 "point": point_name(dataset, resolution), "variant": variant, "seed": seed,
                                 "config": config, "dims": info.dims, "cost": cost})
    return runs


def plan_transfers(runs: Sequence[dict[str, Any]], finetune_samples: int = 1024) -> list[dict[str, Any]]:
    """Cross-resolution jobs: each native run of a transfer variant, at each higher resolution of its dataset.

    A job evaluates the model trained at the native resolution at the target one without retraining, then
    after one pass over ``finetune_samples`` training samples there (FlexConv's cross-resolution protocol,
    shortened).
    """

    targets: dict[str, list[int]] = {}
    for run in runs:
        targets.setdefault(run["dataset"], [])
        if run["resolution"] != DATASETS[run["dataset"]].resolutions[0] and run["resolution"] not in \
                targets[run["dataset"]]:
            targets[run["dataset"]].append(run["resolution"])
    jobs = []
    for run in runs:
        plan = DATASETS[run["dataset"]]
        if run["resolution"] != plan.resolutions[0] or run["variant"] not in plan.transfer_variants:
            continue
        for target in targets[run["dataset"]]:
            jobs.append({"source": run, "target": target, "point": point_name(run["dataset"], target),
                         "finetune_samples": finetune_samples, "cost": run["cost"] * (target / run["resolution"])})
    return jobs
