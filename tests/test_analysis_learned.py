"""DCLS position statistics and FlexConv mask extents."""

import numpy as np
import pytest
import torch
from torch import nn

from largekernel.analysis import dcls_positions, flexconv_mask_extents, position_histograms


class _FakeDcls(nn.Module):
    """Holds DCLS's position parameter P (ndim, out, in/groups, count) like the official package."""

    def __init__(self, ndim, dilated=9):
        super().__init__()
        self.dilated_kernel_size = (dilated,) * ndim
        self.P = nn.Parameter(torch.randn(ndim, 4, 1, 3).clamp(-4, 4))


class _FakeFlex(nn.Module):
    def __init__(self, extent):
        super().__init__()
        self.kernel_size = (33,)
        self.extent = extent

    def effective_kernel_size(self):
        return torch.tensor([self.extent])


def test_positions_and_1d_histograms_per_stage():
    model = nn.Module()
    model.stages = nn.Sequential(_FakeDcls(1), nn.Sequential(_FakeDcls(1), _FakeDcls(1)))
    positions = dcls_positions(model)
    assert list(positions) == ["stages.0", "stages.1.0", "stages.1.1"]
    assert positions["stages.0"].shape == (1, 12)
    hist = position_histograms(model, bins=9, density=False)
    assert list(hist) == ["stage0", "stage1"]
    pooled = torch.cat([positions["stages.1.0"], positions["stages.1.1"]], dim=1)[0].numpy()
    counts, edges = np.histogram(pooled, bins=9, range=(-4.5, 4.5))
    np.testing.assert_array_equal(hist["stage1"]["counts"].numpy(), counts)
    np.testing.assert_allclose(hist["stage1"]["edges"][0], edges)
    assert hist["stage1"]["num_positions"] == 24
    assert hist["stage1"]["mean_abs"] == pytest.approx([float(np.abs(pooled).mean())])
    density = position_histograms(model, bins=9)["stage0"]["counts"]
    assert float(density.sum() * 1.0) == pytest.approx(1.0)  # bin width is 1 tap


def test_2d_histogram_matches_numpy():
    layer = _FakeDcls(2)
    model = nn.Sequential(layer)
    hist = position_histograms(model, bins=6, density=False)["0"]
    pos = layer.P.detach().reshape(2, -1).numpy()
    counts, _, _ = np.histogram2d(pos[0], pos[1], bins=6, range=[(-4.5, 4.5), (-4.5, 4.5)])
    np.testing.assert_array_equal(hist["counts"].numpy(), counts)
    assert position_histograms(nn.Linear(2, 2)) == {}
    with pytest.raises(ValueError, match="bins"):
        position_histograms(model, bins=0)


def test_flexconv_extents():
    model = nn.Module()
    model.blocks = nn.Sequential(_FakeFlex(5.0), _FakeFlex(17.5))
    rows = flexconv_mask_extents(model)
    assert [(r["name"], r["stage"], r["extent"], r["max_extent"]) for r in rows] == [
        ("blocks.0", "block0", [5.0], [33]), ("blocks.1", "block1", [17.5], [33])]
    with pytest.raises(TypeError, match="model"):
        flexconv_mask_extents("model")


def test_position_evolution_reads_each_checkpoint(tmp_path):
    from largekernel.analysis import position_evolution
    from largekernel.data import dataset_info
    from largekernel.train import TrainConfig, save_checkpoint
    from largekernel.train.checkpoint import create_run_model

    cfg = TrainConfig(model="dwnet1d_tiny", model_kwargs={"conv": "dcls", "kernel_size": 9}, dataset="mnist1d")
    info = dataset_info("mnist1d")
    model = create_run_model(cfg, info)
    paths, expected = [], []
    for epoch in (1, 2):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".P"):
                    p.uniform_(-epoch, epoch)  # positions spread out as "training" goes on
        paths.append(save_checkpoint(tmp_path / f"epoch{epoch}", model, cfg, info, {"epoch": epoch}))
        expected.append(position_histograms(model, bins=9, density=False))
    evolution = position_evolution(paths, bins=9)
    assert [e["epoch"] for e in evolution] == [1, 2]
    for got, want in zip(evolution, expected):
        assert got["histograms"].keys() == want.keys()
        for stage in want:
            assert got["histograms"][stage]["mean_abs"] == pytest.approx(want[stage]["mean_abs"])
    assert evolution[1]["histograms"]["block0"]["mean_abs"][0] > evolution[0]["histograms"]["block0"]["mean_abs"][0]
