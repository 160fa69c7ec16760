"""Figures (PNG) for the analyses: kernel galleries, mass-ratio curves, ERF maps,
DCLS position histograms, FlexConv mask sizes, Gaussian fits and PCA; and the
study's comparisons: accuracy against resolution, against cost (with the Pareto
front) and across resolutions.

Drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so no
pyplot state or global backend is touched. Every function writes one PNG to
``path`` and returns it; every figure has a title and labelled axes with units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from largekernel._files import replacing

__all__ = [
    "plot_kernel_gallery",
    "plot_mass_ratio",
    "plot_erf",
    "plot_position_histograms",
    "plot_mask_extents",
    "plot_gaussian_fit",
    "plot_pca",
    "plot_effective_sizes",
    "plot_accuracy_vs_resolution",
    "plot_cost_tradeoff",
    "plot_transfer",
]


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # grids of many small panels are laid out by hand: the constrained solver costs ~3x the drawing
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp)
    return path


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 8)
    return math.ceil(count / cols), cols


def plot_kernel_gallery(kernels: Tensor, path: str | Path, title: str, *, spectral: bool = False,
                        max_kernels: int = 16) -> Path:
    """The first ``max_kernels`` kernels of ``(N, *k)`` (1-D as curves, 2-D as images).

    ``spectral=True`` shows ``|FFT|`` of each kernel (zero frequency centred) instead.
    """
    if not isinstance(kernels, Tensor) or kernels.dim() not in (2, 3):
        raise ValueError(f"kernels must be a (N, k) or (N, H, W) tensor, got "
                         f"{tuple(kernels.shape) if isinstance(kernels, Tensor) else type(kernels).__name__}")
    data = kernels[:max_kernels].detach().to(torch.float32).cpu()
    ndim = data.dim() - 1
    if spectral:
        dims = tuple(range(1, data.dim()))
        data = torch.fft.fftshift(torch.fft.fftn(data, dim=dims).abs(), dim=dims)
    rows, cols = _grid(data.shape[0])
    fig = _figure(1.6 * cols + 0.8, 1.5 * rows + 0.8, layout=None)
    fig.subplots_adjust(left=0.7 / (1.6 * cols + 0.8), right=0.98, bottom=0.5 / (1.5 * rows + 0.8),
                        top=1 - 0.45 / (1.5 * rows + 0.8), wspace=0.35, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= data.shape[0]:
            ax.set_axis_off()
            continue
        k = data[i].numpy()
        length = k.shape[0]
        offsets = [j - (length // 2 if spectral else (length - 1) // 2) for j in range(length)]
        if ndim == 1:
            ax.plot(offsets, k, lw=1)
            ax.axhline(0, color="0.7", lw=0.5)
        else:
            lim = max(abs(float(k.min())), abs(float(k.max()))) or 1.0
            cmap, vmin = ("magma", 0.0) if spectral else ("RdBu_r", -lim)
            h, w = k.shape
            extent = (-0.5 - (w // 2 if spectral else (w - 1) // 2), w - 0.5 - (w // 2 if spectral else (w - 1) // 2),
                      h - 0.5 - (h // 2 if spectral else (h - 1) // 2), -0.5 - (h // 2 if spectral else (h - 1) // 2))
            ax.imshow(k, cmap=cmap, vmin=vmin, vmax=lim, extent=extent, interpolation="nearest")
        ax.set_title(f"#{i}", fontsize=7)
        ax.tick_params(labelsize=6)
    unit = "frequency bin" if spectral else "offset (taps)"
    fig.supxlabel(unit, fontsize=8)
    fig.supylabel(("|FFT| magnitude" if spectral else "weight") if ndim == 1 else unit, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_mass_ratio(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path,
                    title: str) -> Path:
    """NIFF's kernel mass ratio: share of |kernel| mass inside a centred window vs its side.

    Args:
        curves: ``{label: (window sizes, mass ratios)}``, one curve per layer or model.
    """
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    for label, (sizes, ratios) in curves.items():
        ax.plot(list(sizes), [100 * r for r in ratios], marker=".", lw=1.2, label=label)
    for level in (50, 90, 99):
        ax.axhline(level, color="0.75", lw=0.6, ls="--")
    ax.set_xlabel("centred window side (taps)")
    ax.set_ylabel("kernel mass inside window (%)")
    ax.set_ylim(0, 101)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=6, ncol=2 if len(curves) > 8 else 1)
    return _save(fig, path)


def plot_erf(erf: Tensor | Mapping[str, Tensor], path: str | Path, title: str, *, log_scale: bool = True) -> Path:
    """ERF heatmap(s) (2-D) or curve(s) (1-D); several models side by side when given a mapping.

    ``log_scale`` shows ``log10(1 + erf / mean)`` (RepLKNet rescales the same way
    for readability), normalised to ``[0, 1]``.
    """
    maps = dict(erf) if isinstance(erf, Mapping) else {"": erf}
    ndim = next(iter(maps.values())).dim()
    if ndim not in (1, 2):
        raise ValueError(f"erf must be 1-D or 2-D, got {ndim} dims")

    def prepared(m: Tensor) -> Tensor:
        m = m.detach().to(torch.float64).cpu().clamp_min(0)
        if log_scale:
            m = torch.log10(1 + m / m.mean().clamp_min(1e-300))
        return m / m.max().clamp_min(1e-300)

    scale = "log10(1 + ERF / mean), normalised" if log_scale else "ERF / max"
    if ndim == 1:
        fig = _figure(6.5, 4.0)
        ax = fig.subplots()
        for label, m in maps.items():
            p = prepared(m)
            ax.plot([i - len(p) // 2 for i in range(len(p))], p.numpy(), lw=1.2, label=label or None)
        ax.set_xlabel("input offset from centre (samples)")
        ax.set_ylabel(f"contribution ({scale})")
        if len(maps) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        return _save(fig, path)
    rows, cols = _grid(len(maps))
    fig = _figure(2.4 * cols + 1.2, 2.4 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for ax, (label, m) in zip(axes.flat, maps.items()):
        p = prepared(m).numpy()
        h, w = p.shape
        image = ax.imshow(p, cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                          extent=(-0.5 - w // 2, w - 0.5 - w // 2, h - 0.5 - h // 2, -0.5 - h // 2))
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("x offset (pixels)", fontsize=7)
        ax.set_ylabel("y offset (pixels)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(maps):]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes, label=scale, shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_position_histograms(histograms: Mapping[str, Mapping], path: str | Path, title: str) -> Path:
    """DCLS position histograms per stage (from ``position_histograms``); 2-D as density maps."""
    if not histograms:
        raise ValueError("histograms is empty: the model has no DCLS layer")
    stages = list(histograms)
    fig = _figure(3.0 * len(stages) + 0.6, 3.0)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        hist = histograms[stage]
        counts = hist["counts"].to(torch.float64).cpu()
        edges = hist["edges"]
        if counts.dim() == 1:
            centres = [(a + b) / 2 for a, b in zip(edges[0][:-1], edges[0][1:])]
            ax.bar(centres, counts.numpy(), width=edges[0][1] - edges[0][0], color="tab:blue")
            ax.set_xlabel("position offset from centre (taps)")
            ax.set_ylabel("density (1 / tap)")
        else:
            image = ax.imshow(counts.numpy(), origin="upper", cmap="magma", interpolation="nearest",
                              extent=(edges[1][0], edges[1][-1], edges[0][-1], edges[0][0]))
            ax.set_xlabel("x offset (taps)")
            ax.set_ylabel("y offset (taps)")
            fig.colorbar(image, ax=ax, label="density (1 / tap^2)", shrink=0.8)
        ax.set_title(f"{stage}: {hist['num_positions']} positions", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_mask_extents(rows: Sequence[Mapping], path: str | Path, title: str) -> Path:
    """Bar chart of each FlexConv layer's learned extent (first axis) beside its maximum."""
    if not rows:
        raise ValueError("rows is empty: the model has no FlexConv layer")
    fig = _figure(max(6.5, 0.45 * len(rows) + 2.0), 4.0)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    extents = [r["extent"][0] for r in rows]
    ax.bar(xs, extents, color="tab:green", label="learned extent")
    maxima = [(r["max_extent"][0] if isinstance(r["max_extent"], list) else r["max_extent"]) for r in rows]
    if all(m is not None for m in maxima):
        ax.plot(xs, maxima, "k_", markersize=14, label="maximum (kernel_size)")
    ax.set_xticks(xs, [r["name"] for r in rows], rotation=60, ha="right", fontsize=6)
    ax.set_xlabel("layer")
    ax.set_ylabel("kernel extent (taps)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def plot_gaussian_fit(fit: Mapping[str, Tensor], path: str | Path, title: str) -> Path:
    """NIFF's shape ablation: fitted Gaussian sigmas (major vs minor) and aspect ratios."""
    sigma = fit["sigma"].reshape(-1, fit["sigma"].shape[-1]).to(torch.float64).cpu()
    aspect = fit["aspect"].reshape(-1).to(torch.float64).cpu()
    fig = _figure(8.0, 3.6)
    left, right = fig.subplots(1, 2)
    if sigma.shape[1] >= 2:
        left.scatter(sigma[:, -1].numpy(), sigma[:, 0].numpy(), s=6, alpha=0.6)
        top = float(sigma.max()) * 1.05 or 1.0
        left.plot([0, top], [0, top], color="0.6", lw=0.8, ls="--", label="round / square")
        left.set_xlabel("minor-axis sigma (taps)")
        left.set_ylabel("major-axis sigma (taps)")
        left.legend(fontsize=7)
    else:
        left.hist(sigma[:, 0].numpy(), bins=30, color="tab:blue")
        left.set_xlabel("sigma (taps)")
        left.set_ylabel("kernels (count)")
    left.set_title("fitted Gaussian widths", fontsize=9)
    r2 = fit["r2"].reshape(-1).to(torch.float64).cpu()
    if sigma.shape[1] >= 2:
        right.hist(aspect.numpy(), bins=30, color="tab:orange")
        right.set_xlabel("aspect ratio (major / minor sigma)")
    else:  # a 1-D Gaussian has no aspect: show how well it fits instead
        right.hist(r2.clamp_min(-1).numpy(), bins=30, color="tab:orange")
        right.set_xlabel("R^2 of the fit (clipped at -1)")
    right.set_ylabel("kernels (count)")
    right.set_title(f"median aspect {float(aspect.median()):.2f}, median R^2 {float(r2.median()):.2f}", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_pca(pca: Mapping[str, Tensor], path: str | Path, title: str) -> Path:
    """Principal components of spatial kernels with their explained variance."""
    components = pca["components"].detach().to(torch.float32).cpu()
    ratio = pca["explained_variance_ratio"].tolist()
    count = components.shape[0]
    fig = _figure(2.0 * count + 0.6, 2.6, layout=None)
    fig.subplots_adjust(left=0.6 / (2.0 * count + 0.6), right=0.98, bottom=0.2, top=0.78, wspace=0.45)
    axes = fig.subplots(1, count, squeeze=False)[0]
    for i, ax in enumerate(axes):
        comp = components[i].numpy()
        if comp.ndim == 1:
            ax.plot([j - (len(comp) - 1) // 2 for j in range(len(comp))], comp, lw=1)
            ax.set_xlabel("offset (taps)", fontsize=7)
            ax.set_ylabel("loading", fontsize=7)
        else:
            lim = float(abs(comp).max()) or 1.0
            h, w = comp.shape
            ax.imshow(comp, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                      extent=(-0.5 - (w - 1) // 2, w - 0.5 - (w - 1) // 2, h - 0.5 - (h - 1) // 2, -0.5 - (h - 1) // 2))
            ax.set_xlabel("x offset (taps)", fontsize=7)
            ax.set_ylabel("y offset (taps)", fontsize=7)
        ax.set_title(f"PC{i + 1}: {100 * ratio[i]:.1f}% var.", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title)
    return _save(fig, path)


def plot_effective_sizes(sizes: Mapping[str, Mapping[str, float]], path: str | Path, title: str) -> Path:
    """Grouped bars: per model (or stage), the effective kernel size at each mass fraction."""
    labels = list(sizes)
    if not labels:
        raise ValueError("sizes is empty")
    fractions = list(next(iter(sizes.values())))
    fig = _figure(max(6.5, 0.9 * len(labels) + 2.0), 4.0)
    ax = fig.subplots()
    width = 0.8 / len(fractions)
    for j, fraction in enumerate(fractions):
        ax.bar([i + (j - (len(fractions) - 1) / 2) * width for i in range(len(labels))],
               [sizes[label][fraction] for label in labels], width=width,
               label=f"{100 * float(fraction):g}% of mass")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("effective kernel size (taps)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _save(fig, path)


def plot_accuracy_vs_resolution(curves: Mapping[str, Mapping[int, tuple[float, float]]], path: str | Path,
                                title: str, *, xlabel: str, colors: Mapping[str, str] | None = None) -> Path:
    """Test accuracy (mean, std as error bars) against input resolution, one line per family.

    Args:
        curves: ``{family: {resolution: (mean %, std %)}}``.
        xlabel: what the resolution counts (``"sequence length (samples)"``).
        colors: a colour per family (the same family the same colour across figures); default matplotlib's cycle.
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    resolutions = sorted({r for curve in curves.values() for r in curve})
    for label, curve in curves.items():
        xs = sorted(curve)
        ax.errorbar(xs, [curve[x][0] for x in xs], yerr=[curve[x][1] for x in xs], marker="o", ms=4, lw=1.2,
                    capsize=3, label=label, color=(colors or {}).get(label))
    ax.set_xscale("log", base=2)
    ax.set_xticks(resolutions, [str(r) for r in resolutions])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _log_axis(axis) -> None:
    """A log x axis labelled at 1, 2, 5 x 10^k with SI prefixes (2.5M): the default labels overlap on short ranges."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(EngFormatter(sep=""))
    axis.set_minor_formatter(NullFormatter())


def plot_cost_tradeoff(models: Mapping[str, Mapping[str, float | None]], path: str | Path, title: str, *,
                       fronts: Mapping[str, Sequence[str]], colors: Mapping[str, str] | None = None) -> Path:
    """Test accuracy against training time and against MACs per sample, one point per model, Pareto fronts drawn.

    Args:
        models: ``{label: {"acc": mean %, "acc_std": std %, "train_time_s": s, "macs": MACs or None}}``.
        fronts: ``{"train_time_s" | "macs": labels on that panel's Pareto front, cheapest first}``.
        colors: a colour per model; default matplotlib's cycle.
    """
    if not models:
        raise ValueError("models is empty")
    fig = _figure(11.0, 4.4)
    axes = fig.subplots(1, 2)
    panels = (("train_time_s", "training time per run (s)"), ("macs", "MACs per sample (FFT counted)"))
    colours = {label: (colors or {}).get(label, f"C{i % 10}") for i, label in enumerate(models)}
    for ax, (key, xlabel) in zip(axes, panels):
        for label, m in models.items():
            if m[key] is None:
                continue
            ax.errorbar([m[key]], [m["acc"]], yerr=[m["acc_std"]], fmt="o", ms=6, capsize=3, color=colours[label],
                        label=label)
        front = [label for label in fronts.get(key, ()) if models[label][key] is not None]
        if front:
            ax.step([models[label][key] for label in front], [models[label]["acc"] for label in front], where="post",
                    color="0.3", ls="--", lw=1, label="Pareto front", zorder=0)
            ax.scatter([models[label][key] for label in front], [models[label]["acc"] for label in front], s=140,
                       facecolors="none", edgecolors="0.2", lw=1.2, zorder=3)
        _log_axis(ax.xaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
    axes[0].set_title("accuracy against training time", fontsize=9)
    axes[1].set_title("accuracy against compute", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_transfer(rows: Mapping[str, Mapping[str, tuple[float, float]]], path: str | Path, title: str) -> Path:
    """Grouped bars per (family, target resolution): accuracy trained at the native resolution, there as is,
    after fine-tuning, and trained at the target resolution.

    Args:
        rows: ``{"FlexConv -> 160": {"native": (mean, std), "as is": ..., "fine-tuned": ..., "trained there": ...}}``
            (missing bars are left out).
    """
    if not rows:
        raise ValueError("rows is empty")
    kinds = ("native", "as is", "fine-tuned", "trained there")
    fig = _figure(max(6.5, 1.3 * len(rows) + 2.0), 4.2)
    ax = fig.subplots()
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i, r in enumerate(rows.values()) if kind in r]
        values = [r[kind] for r in rows.values() if kind in r]
        ax.bar(xs, [v[0] for v in values], width=width, yerr=[v[1] for v in values], capsize=2, label=kind)
    ax.set_xticks(range(len(rows)), list(rows), rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("family -> evaluated at resolution")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    return _save(fig, path)
