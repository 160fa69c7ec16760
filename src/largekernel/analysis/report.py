"""Every analysis of one trained model, as figures and a JSON summary.

Gathers NIFF's kernel-size analyses (mass ratio, effective size, Gaussian fit,
PCA; Grabinski et al., TMLR 2024), RepLKNet's effective receptive field (Ding et
al., CVPR 2022), DCLS positions (Khalfaoui-Hassani et al., ICLR 2023) and
FlexConv mask extents (Romero et al., ICLR 2022) for whatever families the model
contains. Used by ``largekernel analyze`` and ``largekernel study``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from largekernel.analysis import plots
from largekernel.analysis.erf import effective_receptive_field, erf_area_ratios
from largekernel.analysis.kernels import (gaussian_fit, kernel_layers, kernel_pca, kernel_size_report,
                                          layer_input_sizes, spatial_kernels, stage_summary)
from largekernel.analysis.learned import dcls_positions, flexconv_mask_extents, position_histograms

__all__ = ["analyze_model", "plot_position_evolution"]


def analyze_model(model: nn.Module, example: Tensor, out_dir: str | Path, *, title: str = "model",
                  prefix: str = "", max_gallery: int = 8) -> tuple[dict, list[Path]]:
    """Write every applicable figure of ``model`` to ``out_dir`` and return ``(summary, paths)``.

    Args:
        model: a trained model (put in eval mode).
        example: input images ``(B, C, *spatial)``; all of them are used for the
            ERF (RepLKNet averages over images), the first for layer input sizes.
        out_dir: where the PNGs go (created).
        title: start of every figure title.
        prefix: start of every file name.
        max_gallery: kernels shown per gallery.

    Returns:
        ``summary``: ``{"layers": kernel_size_report, "stages": stage_summary, "erf_area": ...,
        "dcls": {stage: mean |offset|}, "flexconv": mask extents}``; ``paths``: the PNGs written.
    """
    if not isinstance(example, Tensor) or example.dim() < 3:
        raise ValueError(f"example must be an input batch (B, C, *spatial), got "
                         f"{tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__}")
    out_dir = Path(out_dir)
    model.eval()
    layers = kernel_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial kernel to analyse")
    sizes = layer_input_sizes(model, example[:1], layers)
    report = kernel_size_report(model, example[:1])
    paths: list[Path] = []

    def path(name: str) -> Path:
        return out_dir / f"{prefix}{name}.png"

    paths.append(plots.plot_mass_ratio({r["name"]: (r["sizes"], r["mass_ratio"]) for r in report}, path("mass_ratio"),
                                       f"{title}: kernel mass ratio per layer"))
    stages = stage_summary(report)
    paths.append(plots.plot_effective_sizes(stages, path("effective_size"),
                                            f"{title}: effective kernel size per stage"))
    erf = effective_receptive_field(model, example)
    paths.append(plots.plot_erf(erf, path("erf"), f"{title}: effective receptive field ({example.shape[0]} inputs)"))
    kernels = {name: spatial_kernels(module, sizes.get(name)) for name, module in layers}
    for name, k in kernels.items():
        if k.dim() - 1 > 2:
            continue
        safe = name.replace(".", "_") or "layer"
        paths.append(plots.plot_kernel_gallery(k, path(f"kernels_{safe}"), f"{title}: spatial kernels of {name}",
                                               max_kernels=max_gallery))
        paths.append(plots.plot_kernel_gallery(k, path(f"spectra_{safe}"), f"{title}: kernel spectra of {name}",
                                               spectral=True, max_kernels=max_gallery))
    # shapes and PCA pool the kernels of equal shape (the depthwise layers of one stage share it)
    by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for k in kernels.values():
        by_shape.setdefault(tuple(k.shape[1:]), []).append(k)
    shape, group = max(by_shape.items(), key=lambda item: sum(k.shape[0] for k in item[1]))
    pooled = torch.cat(group)  # (N, *shape)
    fit = gaussian_fit(pooled)
    paths.append(plots.plot_gaussian_fit(fit, path("gaussian_fit"), f"{title}: Gaussian fit of |kernel| {shape}"))
    if pooled.shape[0] >= 2 and len(shape) <= 2:
        paths.append(plots.plot_pca(kernel_pca(pooled, min(4, pooled.shape[0])), path("pca"),
                                    f"{title}: principal components of {shape} kernels"))
    summary = {"layers": report, "stages": stages, "erf_area": erf_area_ratios(erf),
               "gaussian": {"shape": list(shape), "median_aspect": float(fit["aspect"].median()),
                            "median_sigma": fit["sigma"].median(dim=0).values.tolist(),
                            "median_r2": float(fit["r2"].median())}}
    histograms = position_histograms(model)
    if histograms:
        paths.append(plots.plot_position_histograms(histograms, path("dcls_positions"),
                                                    f"{title}: DCLS learned positions per stage"))
        summary["dcls"] = {stage: h["mean_abs"] for stage, h in histograms.items()}
    masks = flexconv_mask_extents(model)
    if masks:
        paths.append(plots.plot_mask_extents(masks, path("flexconv_masks"),
                                             f"{title}: FlexConv learned kernel extent per layer"))
        summary["flexconv"] = masks
    return summary, paths


def plot_position_evolution(models: Sequence[tuple[str, nn.Module]], path: str | Path, title: str,
                            bins: int = 31) -> Path:
    """DCLS positions of all layers pooled, one panel per ``(label, model)`` (e.g. per checkpoint)."""
    histograms = {}
    for label, model in models:
        positions = dcls_positions(model)
        if not positions:
            raise ValueError(f"{label}: the model has no DCLS layer")
        limits = [float(k) / 2 for k in next(m for m in model.modules() if hasattr(m, "P")).dilated_kernel_size]
        pooled = {"all": torch.cat(list(positions.values()), dim=1)}
        histograms[label] = position_histograms(pooled, bins, limits)["all"]
    return plots.plot_position_histograms(histograms, path, title)
