"""Kernel networks: shapes, the initial statistics of their papers, analytic frequency bounds, bad input."""

import math

import pytest
import torch

from largekernel.nn.kernelnets import (KERNEL_NETS, FourierKernel, GaborKernel, MAGNetKernel, MLPKernel,
                                       SIRENKernel, create_kernel_net)

ALL = list(KERNEL_NETS.values())


pytestmark = pytest.mark.usefixtures("one_thread")


def _grid(*sizes):
    axes = [torch.linspace(-1, 1, n) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_shapes_grid_and_points(cls, dim):
    net = cls(dim, 6, hidden_channels=8)
    sizes = (5, 4, 3)[:dim]
    coords = _grid(*sizes)
    out = net(coords)
    assert out.shape == (6, *sizes)
    # Scattered points give the same values as the grid: the net is pointwise in the coordinates.
    flat = net(coords.reshape(-1, dim))
    assert flat.shape == (6, math.prod(sizes))
    torch.testing.assert_close(flat, out.reshape(6, -1))
    # And the same as evaluating one point at a time.
    one = torch.stack([net(p[None])[:, 0] for p in coords.reshape(-1, dim)[:4]], dim=1)
    torch.testing.assert_close(one, flat[:, :4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("bias", [True, False])
def test_per_position_scale_equals_scaling_the_output(cls, bias):
    net = cls(2, 5, hidden_channels=8, bias=bias).double()
    coords = _grid(4, 3).double()
    scale = torch.rand(4, 3, dtype=torch.float64)
    torch.testing.assert_close(net(coords, scale), net(coords) * scale)
    with pytest.raises(ValueError, match=r"scale must have the grid's shape \(4, 3\), got \(12,\)"):
        net(coords, scale.reshape(-1))


@pytest.mark.parametrize("cls", ALL)
def test_gradients_reach_every_parameter(cls):
    net = cls(2, 3, hidden_channels=8).double()
    net(_grid(5, 5).double()).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [MAGNetKernel, SIRENKernel])
def test_gradcheck_coordinates_and_parameters(cls):
    net = cls(2, 2, hidden_channels=4, num_layers=2).double()
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in net.named_parameters()]
    coords = (torch.rand(3, 2, dtype=torch.float64) * 2 - 1).requires_grad_()

    def fn(c, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (c,))

    assert torch.autograd.gradcheck(fn, (coords, *params))


def test_siren_activation_statistics():
    # Sitzmann et al. 2020, Thm 1: with the SIREN init, hidden pre-activations omega_0 W x are ~ N(0, 1)
    # and sine outputs are arcsine distributed: mean 0, variance 1/2.
    net = SIRENKernel(1, 4, hidden_channels=512, num_layers=5, omega_0=30.0)
    h = torch.linspace(-1, 1, 4096)[:, None]
    with torch.no_grad():
        for idx, layer in enumerate(net.layers):
            pre = layer.omega_0 * (h @ layer.linear.weight.t())
            h = layer(h)
            if idx > 0:
                assert abs(pre.std().item() - 1.0) < 0.1
            assert abs(h.var().item() - 0.5) < 0.05
            assert abs(h.mean().item()) < 0.05


def test_siren_init_bounds_and_omega():
    net = SIRENKernel(2, 3, hidden_channels=64, num_layers=3, omega_0=10.0, learn_omega_0=True)
    first, second = net.layers
    assert first.linear.weight.abs().max() <= 1 / 2
    assert second.linear.weight.abs().max() <= math.sqrt(6 / 64) / 10.0
    assert isinstance(first.omega_0, torch.nn.Parameter) and first.omega_0.item() == 10.0
    x = torch.rand(7, 2)
    torch.testing.assert_close(first(x), torch.sin(10.0 * (x @ first.linear.weight.t() + first.linear.bias)))


def test_mlp_activation_choice():
    x = torch.rand(9, 1) * 2 - 1
    relu = MLPKernel(1, 2, hidden_channels=4, num_layers=2, activation="relu")
    lin = relu.body[0]
    expected = relu.output.weight @ torch.relu(lin(x)).t() + relu.output.bias[:, None]
    torch.testing.assert_close(relu(x), expected)
    assert isinstance(MLPKernel(1, 2, activation="gelu").body[1], torch.nn.GELU)


def test_magnet_initialisation_follows_the_paper():
    torch.manual_seed(1)
    hidden, layers, alpha, beta, scale = 1000, 3, 6.0, 1.0, 25.6
    net = MAGNetKernel(2, 2, hidden_channels=hidden, num_layers=layers, alpha=alpha, beta=beta, input_scale=scale,
                       init_spatial_value=0.5)
    for l, f in enumerate(net.filters):
        # gamma_l ~ Gamma(alpha / (l + 1), beta): mean alpha / (l + 1) / beta, variance alpha / (l + 1) / beta^2.
        g = f.gamma.detach()
        assert g.shape == (hidden, 2)  # anisotropic
        assert abs(g.mean().item() - alpha / (l + 1) / beta) < 0.1 * alpha / (l + 1)
        assert abs(g.var().item() - alpha / (l + 1) / beta ** 2) < 0.15 * alpha / (l + 1)
        assert f.mu.abs().max() <= 0.5
        # W = U(-1/sqrt(dim), 1/sqrt(dim)) * input_scale / sqrt(L + 1) * gamma, per unit and dimension.
        ratio = f.linear.weight.detach() / (g * scale / math.sqrt(layers + 1))
        assert ratio.abs().max() <= 1 / math.sqrt(2) + 1e-6
        assert f.linear.bias.abs().max() <= math.pi
    bound = math.sqrt(1.0 / hidden)
    for lin in net.linears:
        assert lin.weight.abs().max() <= bound


def test_gabor_is_isotropic_and_fourier_has_no_window():
    g = GaborKernel(2, 2, hidden_channels=16, num_layers=3)
    assert all(f.gamma.shape == (16, 1) for f in g.filters)
    x = torch.rand(5, 2) * 2 - 1
    f0 = g.filters[0]
    window = torch.exp(-0.5 * (f0.gamma[:, 0] ** 2 * ((x[:, None, :] - f0.mu) ** 2).sum(-1)))
    torch.testing.assert_close(f0(x), window * torch.sin(f0.linear(x)))
    fourier = FourierKernel(2, 2, hidden_channels=16)
    assert all(f.gamma is None for f in fourier.filters)
    torch.testing.assert_close(fourier.filters[0](x), torch.sin(fourier.filters[0].linear(x)))


@pytest.mark.parametrize("cls", [MAGNetKernel, GaborKernel, FourierKernel])
@pytest.mark.parametrize("seed", [0, 1])
def test_mfn_spectrum_respects_its_analytic_frequency_bound(cls, seed):
    # Sample the network densely on a wide domain; the fraction of spectral energy above the analytic bound
    # (sum over filters of max (|w| + 2 gamma) / 2 pi, in cycles per unit) must be negligible.
    torch.manual_seed(seed)
    net = cls(1, 4, hidden_channels=16).double()
    n, span = 2 ** 14, 64.0
    x = torch.linspace(-span / 2, span / 2, n + 1, dtype=torch.float64)[:-1]
    with torch.no_grad():
        y = net(x[:, None]) - net.output.bias[:, None]  # (4, n)
    if cls is FourierKernel:  # no window of its own: taper the domain edges
        y = y * torch.hann_window(n, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(y, dim=-1).abs().square()
    freq = torch.fft.rfftfreq(n, d=span / n)
    bound = net.frequency_bounds(gauss_stddevs=2.0).sum().item()
    assert bound < freq[-1]  # the test can see beyond the bound
    assert (power[:, freq > bound].sum() / power.sum()).item() < 1e-4
    # The bound is the reference formula, written out.
    expected = torch.stack([((f.linear.weight.abs() + (0 if f.gamma is None else 2.0 * f.gamma.abs()))
                             / (2 * math.pi)).max() for f in net.filters])
    torch.testing.assert_close(net.frequency_bounds(2.0), expected)


def test_factory_and_bad_input():
    assert isinstance(create_kernel_net("MAGNet", 2, 3), MAGNetKernel)
    with pytest.raises(ValueError, match="kernel_net must be one of"):
        create_kernel_net("bogus", 2, 3)
    net = SIRENKernel(2, 3)
    with pytest.raises(ValueError, match=r"coords must have shape \(\*grid, 2\).*\(4, 3\)"):
        net(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="coords must be a Tensor"):
        net([[0.0, 0.0]])
    with pytest.raises(ValueError, match="hidden_channels must be a positive int, got 0"):
        MLPKernel(1, 2, hidden_channels=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPKernel(1, 2, activation="tanh")
    with pytest.raises(ValueError, match="omega_0 must be > 0"):
        SIRENKernel(1, 2, omega_0=0.0)
    with pytest.raises(ValueError, match="input_scale must be > 0"):
        MAGNetKernel(1, 2, input_scale=-1.0)
    with pytest.raises(ValueError, match="num_layers must be"):
        MAGNetKernel(1, 2, num_layers=0)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_magnet_filter_is_an_anisotropic_gabor(dim):
    """MAGNet's filter l: exp(-1/2 sum_d (gamma_hd (x_d - mu_hd))^2) sin(W x + b), one width per unit and
    dimension (FlexConv, Sec. 3), written out per point, unit and dimension."""
    net = MAGNetKernel(dim, 3, hidden_channels=5, num_layers=2, dtype=torch.float64)
    x = torch.rand(7, dim, dtype=torch.float64) * 2 - 1
    for f in net.filters:
        expected = torch.empty(7, 5, dtype=torch.float64)
        for n in range(7):
            for h in range(5):
                exponent = sum((f.gamma[h, d] * (x[n, d] - f.mu[h, d])) ** 2 for d in range(dim))
                pre = sum(f.linear.weight[h, d] * x[n, d] for d in range(dim)) + f.linear.bias[h]
                expected[n, h] = torch.exp(-0.5 * exponent) * torch.sin(pre)
        torch.testing.assert_close(f(x), expected)


@pytest.mark.parametrize("name", ["fourier", "gabor", "magnet"])
@pytest.mark.parametrize("bias", [True, False])
def test_batched_filters_equal_each_filter(name, bias):
    """The MFN evaluates all filters in one batched pass; each must equal its own module's forward."""
    net = create_kernel_net(name, 2, 5, hidden_channels=6, num_layers=3, bias=bias, dtype=torch.float64)
    coords = torch.rand(17, 2, dtype=torch.float64) * 2 - 1
    batched = net._filter_outputs(coords)
    for l, f in enumerate(net.filters):
        torch.testing.assert_close(batched[l], f(coords))
