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


def test_bad_input():
    with pytest.raises(ValueError, match="kernels"):
        plots.plot_kernel_gallery(torch.randn(2, 2, 2, 2), "x.png", "t")
    with pytest.raises(ValueError, match="histograms"):
        plots.plot_position_histograms({}, "x.png", "t")
    with pytest.raises(ValueError, match="erf"):
        plots.plot_erf(torch.rand(2, 2, 2), "x.png", "t")
