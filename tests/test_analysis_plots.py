"""Every figure is written as a PNG and carries a title and labelled axes."""

import pytest
import torch

from largekernel.analysis import gaussian_fit, kernel_pca, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def captured(monkeypatch):
    figures = []
    original = plots._save

    def save(fig, path):
        figures.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def _check(path, fig):
    assert path.read_bytes()[:8] == PNG_MAGIC
    titles = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes]
    assert any(titles), "figure has no title"
    for ax in fig.axes:
        if ax.axison and not ax.images and ax.get_label() != "<colorbar>":
            assert ax.get_xlabel() or fig._supxlabel, f"axis without x label in {path.name}"
            assert ax.get_ylabel() or fig._supylabel, f"axis without y label in {path.name}"


def test_all_figures(tmp_path, captured):
    k2 = torch.randn(5, 7, 7)
    k1 = torch.randn(3, 15)
    hist1 = {"stage0": {"edges": [[-1.0, 0.0, 1.0]], "counts": torch.tensor([0.3, 0.7]), "num_positions": 10}}
    hist2 = {"all": {"edges": [[-1.0, 0.0, 1.0]] * 2, "counts": torch.rand(2, 2), "num_positions": 10}}
    paths = [
        plots.plot_kernel_gallery(k2, tmp_path / "g2.png", "spatial"),
        plots.plot_kernel_gallery(k2, tmp_path / "g2s.png", "spectral", spectral=True),
        plots.plot_kernel_gallery(k1, tmp_path / "g1.png", "1-D"),
        plots.plot_mass_ratio({"a": ([1, 3, 5], [0.2, 0.6, 1.0])}, tmp_path / "m.png", "mass"),
        plots.plot_erf(torch.rand(9, 9), tmp_path / "e2.png", "erf 2-D"),
        plots.plot_erf({"a": torch.rand(9), "b": torch.rand(9)}, tmp_path / "e1.png", "erf 1-D"),
        plots.plot_position_histograms(hist1, tmp_path / "p1.png", "positions"),
        plots.plot_position_histograms(hist2, tmp_path / "p2.png", "positions 2-D"),
        plots.plot_mask_extents([{"name": "l0", "extent": [5.0], "max_extent": [33]}], tmp_path / "f.png", "masks"),
        plots.plot_gaussian_fit(gaussian_fit(k2, 2), tmp_path / "gf.png", "fit"),
        plots.plot_gaussian_fit(gaussian_fit(k1, 1), tmp_path / "gf1.png", "fit 1-D"),
        plots.plot_pca(kernel_pca(k2, 3, 2), tmp_path / "pca.png", "pca"),
        plots.plot_pca(kernel_pca(k1, 2, 1), tmp_path / "pca1.png", "pca 1-D"),
        plots.plot_effective_sizes({"m": {"0.5": 3, "0.9": 5}}, tmp_path / "s.png", "sizes"),
    ]
    assert len(captured) == len(paths)
    for path, fig in zip(paths, captured):
        _check(path, fig)


def test_study_figures(tmp_path, captured):
    curves = {"small dense": {40: (95.0, 1.0), 160: (90.0, 2.0), 640: (60.0, 5.0)}, "FlexConv": {40: (93.0, 0.5)}}
    models = {"a": {"acc": 90.0, "acc_std": 1.0, "train_time_s": 2.0, "macs": 100},
              "b": {"acc": 95.0, "acc_std": 0.5, "train_time_s": 5.0, "macs": None}}
    bars = {"FlexConv -> 160": {"native": (93.0, 0.5), "as is": (40.0, 2.0), "fine-tuned": (85.0, 1.0)},
            "NIFF -> 160": {"native": (90.0, 1.0), "trained there": (80.0, 3.0)}}
    paths = [
        plots.plot_accuracy_vs_resolution(curves, tmp_path / "sweep.png", "sweep", xlabel="length (samples)"),
        plots.plot_cost_tradeoff(models, tmp_path / "cost.png", "cost", fronts={"train_time_s": ["a", "b"],
                                                                                 "macs": ["a"]}),
        plots.plot_transfer(bars, tmp_path / "transfer.png", "transfer"),
    ]
    for path, fig in zip(paths, captured):
        _check(path, fig)
    assert any(ax.get_legend() for ax in captured[0].axes)  # one line per family, named
    assert captured[1].legends and "Pareto front" in [t.get_text() for t in captured[1].legends[0].get_texts()]
    for plot in (plots.plot_accuracy_vs_resolution, plots.plot_transfer):
        with pytest.raises(ValueError, match="empty"):
            plot({}, tmp_path / "x.png", "t", **({"xlabel": "x"} if plot is plots.plot_accuracy_vs_resolution
                                                 else {}))


def test_bad_input():
    with pytest.raises(ValueError, match="kernels"):
        plots.plot_kernel_gallery(torch.randn(2, 2, 2, 2), "x.png", "t")
    with pytest.raises(ValueError, match="histograms"):
        plots.plot_position_histograms({}, "x.png", "t")
    with pytest.raises(ValueError, match="erf"):
        plots.plot_erf(torch.rand(2, 2, 2), "x.png", "t")
