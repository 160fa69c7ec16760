"""Effective kernel size, mass ratios, Gaussian fit and PCA on kernels with known answers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from torch import nn

from largekernel.nn import NIFFConv2d
from largekernel.nn._base import KernelConvNd

from largekernel.analysis import (effective_kernel_size, gaussian_fit, kernel_layers, kernel_mass_ratio, kernel_pca,
                                  kernel_size_report, spatial_kernels, stage_summary, window_sizes)


def _box(total: int, k: int, ndim: int) -> torch.Tensor:
    kernel = torch.zeros((1,) + (total,) * ndim)
    lo = (total - 1) // 2 - (k - 1) // 2
    kernel[(slice(None),) + (slice(lo, lo + k),) * ndim] = 1.0
    return kernel


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_delta_has_size_one(ndim):
    kernel = torch.zeros((4,) + (9,) * ndim)
    kernel[(slice(None),) + (4,) * ndim] = torch.randn(4)
    assert effective_kernel_size(kernel, ndim).tolist() == [[1, 1, 1]] * 4


@given(k=st.integers(0, 6).map(lambda i: 2 * i + 1), pad=st.integers(0, 4), ndim=st.integers(1, 2))
def test_box_has_size_k(k, pad, ndim):
    kernel = _box(k + 2 * pad, k, ndim)
    assert effective_kernel_size(kernel, ndim, fractions=(0.99, 1.0)).tolist() == [[k, k]]
    # a window of side k - 2 holds ((k - 2) / k) ** ndim of the mass, so any larger fraction needs k
    if k > 1:
        f = ((k - 2) / k) ** ndim
        assert effective_kernel_size(kernel, ndim, fractions=(f + 1e-6,)).item() == k
        assert effective_kernel_size(kernel, ndim, fractions=(f,)).item() == k - 2


def test_gaussian_mass_ratio_matches_closed_form():
    # pixel-integrated Gaussian: k[j] = Phi((j + 1/2) / s) - Phi((j - 1/2) / s), separable in 2-D, so the
    # mass inside the centred window of half-width h is (erf((h + 1/2) / (s sqrt 2)) / erf((R + 1/2) / (s sqrt 2)))^2
    sigma, radius = 3.0, 12
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    cdf = lambda x: 0.5 * (1 + torch.erf(x / (sigma * math.sqrt(2))))  # noqa: E731
    p = cdf(j + 0.5) - cdf(j - 0.5)
    kernel = (p[:, None] * p[None, :])[None]  # (1, 25, 25)
    ratios, sizes = kernel_mass_ratio(kernel, ndim=2)
    expected = [(math.erf((s // 2 + 0.5) / (sigma * math.sqrt(2))) / math.erf((radius + 0.5) / (sigma * math.sqrt(2))))
                ** 2 for s in sizes]
    assert sizes == list(range(1, 26, 2))
    np.testing.assert_allclose(ratios[0].numpy(), expected, rtol=1e-10)


def test_mass_ratio_uses_absolute_values_and_is_monotone():
    kernel = torch.randn(6, 7, 11)
    ratios, sizes = kernel_mass_ratio(kernel, ndim=2)
    assert sizes == [1, 3, 5, 7, 9, 11]
    assert torch.all(ratios[:, 1:] >= ratios[:, :-1])
    np.testing.assert_allclose(ratios[:, -1].numpy(), 1.0)
    centre = kernel[:, 3, 5].abs() / kernel.abs().sum((1, 2))
    np.testing.assert_allclose(ratios[:, 0].numpy(), centre.numpy(), rtol=1e-6)
    flipped, _ = kernel_mass_ratio(-kernel, ndim=2)
    assert torch.equal(flipped, ratios)


def test_window_sizes_even_axis_ends_with_full_length():
    assert window_sizes([4]) == [1, 3, 4]
    kernel = torch.ones(1, 4)  # centre is index 1, the 3-window covers indices 0..2
    ratios, sizes = kernel_mass_ratio(kernel, ndim=1)
    assert sizes == [1, 3, 4]
    np.testing.assert_allclose(ratios[0].numpy(), [0.25, 0.75, 1.0])


def test_zero_kernel_and_bad_arguments():
    ratios, _ = kernel_mass_ratio(torch.zeros(2, 5), ndim=1)
    assert torch.all(ratios == 1)
    with pytest.raises(ValueError, match="ndim"):
        kernel_mass_ratio(torch.zeros(2, 5), ndim=3)
    with pytest.raises(ValueError, match="fractions"):
        effective_kernel_size(torch.zeros(2, 5), 1, fractions=(1.5,))
    with pytest.raises(TypeError, match="kernel"):
        kernel_mass_ratio([1, 2, 3])


def test_dilated_conv_dense_kernel_reproduces_torch():
    conv = nn.Conv2d(3, 4, 3, dilation=(2, 3), bias=False)
    dense = spatial_kernels(conv).reshape(4, 3, 5, 7)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(F.conv2d(x, dense), conv(x))


class _Ramp(KernelConvNd):
    """A family written here: a kernel as long as the input, a learnable scale times a ramp (the protocol's one
    method plus its metadata)."""

    _nd = 1
    input_dependent = True

    def __init__(self):
        super().__init__(2, 2, groups=2, bias=False)
        self.w = nn.Parameter(torch.ones(()))

    def construct_kernel(self, input_size=None):
        (length,) = self._bake_size(input_size)
        return self.w * torch.arange(length, dtype=torch.float32).expand(2, 1, length)


def test_dispatcher_uses_the_kernel_protocol():
    assert torch.equal(spatial_kernels(_Ramp(), input_size=(9,)), torch.arange(9.0).expand(2, 9))
    with pytest.raises(ValueError, match="input_size"):
        spatial_kernels(_Ramp())
    niff = NIFFConv2d(3)
    assert spatial_kernels(niff, input_size=(8, 8)).shape == (3, 8, 8)  # circular: a kernel per channel, input-sized
    conv = nn.Conv1d(2, 2, 3, dilation=2, groups=2)
    dilated = spatial_kernels(conv)  # dilation written out as zeros
    assert dilated.shape == (2, 5) and torch.equal(dilated[:, ::2], conv.weight.detach()[:, 0])
    with pytest.raises(TypeError, match="module"):
        spatial_kernels(nn.Linear(2, 2))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(1, 4, 1)
        self.stages = nn.Sequential(nn.Conv1d(4, 4, 9, padding=4, groups=4), nn.Conv1d(4, 4, 9, padding=4, groups=4))
        with torch.no_grad():
            self.stages[0].weight.zero_()[:, :, 4] = 1.0  # deltas
            self.stages[1].weight.zero_()[:, :, 2:7] = 1.0  # boxes of 5

    def forward(self, x):
        return self.stages(self.stem(x))


def test_report_per_layer_and_stage():
    net = _Net()
    assert [name for name, _ in kernel_layers(net)] == ["stages.0", "stages.1"]
    report = kernel_size_report(net, example=torch.randn(1, 1, 20), fractions=(0.5, 0.99))
    by_name = {row["name"]: row for row in report}
    assert by_name["stages.0"]["effective_size"] == {"0.5": 1, "0.99": 1}
    assert by_name["stages.1"]["effective_size"] == {"0.5": 3, "0.99": 5}  # 3 of 5 taps hold 60%
    assert by_name["stages.1"]["stage"] == "stage1"
    summary = stage_summary(report)
    assert summary == {"stage0": {"0.5": 1, "0.99": 1}, "stage1": {"0.5": 3, "0.99": 5}}


def test_gaussian_fit_recovers_rotated_gaussian():
    sig_major, sig_minor, theta = 4.0, 2.0, math.radians(30)
    y, x = torch.meshgrid(torch.arange(-20, 21.0, dtype=torch.float64),
                          torch.arange(-20, 21.0, dtype=torch.float64), indexing="ij")
    u = x * math.cos(theta) + y * math.sin(theta)  # along the major axis
    v = -x * math.sin(theta) + y * math.cos(theta)
    kernel = 3.0 * torch.exp(-0.5 * ((u / sig_major) ** 2 + (v / sig_minor) ** 2))
    fit = gaussian_fit(-kernel[None], ndim=2)  # sign is ignored: the fit is on |kernel|
    np.testing.assert_allclose(fit["sigma"][0].numpy(), [sig_major, sig_minor], rtol=1e-4)
    np.testing.assert_allclose(fit["aspect"].item(), 2.0, rtol=1e-4)
    np.testing.assert_allclose(fit["angle"].item(), theta, atol=1e-4)
    np.testing.assert_allclose(fit["mean"][0].numpy(), [0, 0], atol=1e-9)
    assert fit["r2"].item() > 0.9999
    noise = gaussian_fit(torch.rand(1, 15, 15), ndim=2)
    assert noise["r2"].item() < 0.5


def test_pca_matches_sklearn():
    kernels = torch.randn(40, 5, 5, dtype=torch.float64)
    result = kernel_pca(kernels, num_components=4, ndim=2)
    reference = PCA(n_components=4).fit(kernels.reshape(40, 25).numpy())
    np.testing.assert_allclose(result["explained_variance_ratio"].numpy(), reference.explained_variance_ratio_,
                               rtol=1e-8)
    for mine, theirs in zip(result["components"].reshape(4, 25).numpy(), reference.components_):
        np.testing.assert_allclose(abs(mine @ theirs), 1.0, rtol=1e-8)
    with pytest.raises(ValueError, match="num_components"):
        kernel_pca(kernels, num_components=0)
