"""SGConv and S4D long convolutions against formulas written here and torch's conv1d."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from largekernel.nn import S4DConv1d, SGConv1d
from largekernel.nn.sequence import S4DKernel, SGConv2d, SGKernel
from largekernel.optim import param_groups


def _direct_conv(x, causal, anticausal=None):
    """y[t] = sum_s causal[s] x[t - s] + sum_s anticausal[s] x[t + 1 + s], by loops over taps."""
    b, c, length = x.shape
    y = torch.zeros_like(x)
    for s in range(causal.shape[-1]):
        y[..., s:] += causal[:, s, None] * x[..., : length - s]
    if anticausal is not None:
        for s in range(anticausal.shape[-1]):
            if s + 1 < length:
                y[..., : length - 1 - s] += anticausal[:, s, None] * x[..., s + 1:]
    return y


def test_s4d_kernel_is_the_vandermonde_formula():
    kernel = S4DKernel(3, d_state=8, dtype=torch.float64)
    length = 20
    dt = kernel.log_dt.exp()
    a = -kernel.log_A_real.exp() + 1j * kernel.A_imag
    c = torch.view_as_complex(kernel.C)
    expected = torch.zeros(3, length, dtype=torch.float64)
    for h in range(3):
        for n in range(4):
            coef = c[h, n] * (torch.exp(dt[h] * a[h, n]) - 1) / a[h, n]
            for l in range(length):
                expected[h, l] += 2 * (coef * torch.exp(dt[h] * a[h, n] * l)).real
    torch.testing.assert_close(kernel(length), expected)


def _s4d_naive(kernel: S4DKernel, length: int):
    """The reference's formula, every power materialised: 2 Re(einsum(C', exp(dtA * l)))."""
    dt = kernel.log_dt.exp()[:, None]
    a = torch.complex(-kernel.log_A_real.exp(), kernel.A_imag)
    dta = a * dt
    c = torch.view_as_complex(kernel.C) * (dta.exp() - 1) / a
    positions = torch.arange(length, dtype=dt.dtype, device=dt.device)
    return 2 * torch.einsum("hn,hnl->hl", c, (dta[..., None] * positions).exp()).real


def test_s4d_chunked_vandermonde_values_and_gradients(device):
    """A kernel long enough to be computed in chunks of positions (about 4M powers at a time: 128 states x 32
    channels -> 1024 positions) gives the naive formula's kernel and gradients."""
    kernel = S4DKernel(32, d_state=256, device=device)
    with torch.no_grad():
        kernel.log_A_real.uniform_(-3, 0)  # varied decays, so the chunks see different magnitudes
    length = 2500  # three chunks, the last one partial
    grad = torch.randn(32, length, device=device)
    ours = kernel(length)
    params = list(kernel.parameters())
    got = torch.autograd.grad(ours, params, grad)
    expected = _s4d_naive(kernel, length)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(got, torch.autograd.grad(expected, params, grad)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_s4d_kernel_gradcheck():
    kernel = S4DKernel(2, d_state=6, dtype=torch.float64)
    params = tuple(kernel.parameters())

    def build(*values):
        return torch.func.functional_call(kernel, dict(zip([n for n, _ in kernel.named_parameters()], values)), (23,))

    assert torch.autograd.gradcheck(build, params)


def test_s4d_init_is_s4d_lin():
    kernel = S4DKernel(2, d_state=6, dt_min=0.01, dt_max=0.1)
    torch.testing.assert_close(kernel.log_A_real.exp(), torch.full((2, 3), 0.5))
    torch.testing.assert_close(kernel.A_imag, math.pi * torch.arange(3.0).expand(2, 3))
    assert ((kernel.log_dt.exp() >= 0.01) & (kernel.log_dt.exp() <= 0.1)).all()


def _sg_reference(kernel: SGKernel):
    """SGConv 'cat' mode written out: scale i upsampled 2**max(0, i-1) times, weighted alpha**(n-1-i)."""
    pieces = []
    n = kernel.num_scales
    for i, k in enumerate(kernel.kernels):
        factor = 2 ** max(0, i - 1)
        k = k * kernel.multiplier ** (n - 1 - i)
        pieces.append(F.interpolate(k[None], scale_factor=factor, mode="linear")[0])
    return torch.cat(pieces, -1)[:, : kernel.span]


def test_sgconv_kernel_structure_and_normalisation():
    kernel = SGKernel(4, span=100, kernel_dim=16, dtype=torch.float64)
    # 16 * 2**(n-1) >= 100 -> n = 4 scales covering 128 taps
    assert kernel.num_scales == 4 and kernel.length == 128
    raw = _sg_reference(kernel)
    k = kernel(100)
    # normalised by the norm at initialisation: unit norm per channel
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(k, raw / raw.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(kernel(30), k[:, :30])


@pytest.mark.parametrize("cls,kwargs", [
    (SGConv1d, {"kernel_size": 40, "kernel_dim": 8}),
    (SGConv1d, {"kernel_size": 40, "kernel_dim": 8, "bidirectional": True}),
    (S4DConv1d, {"d_state": 8}),
    (S4DConv1d, {"d_state": 8, "bidirectional": True, "kernel_size": 12}),
])
def test_output_equals_direct_convolution(cls, kwargs, device):
    layer = cls(3, dtype=torch.float64, device=device, **kwargs)
    x = torch.randn(2, 3, 33, dtype=torch.float64, device=device)
    causal, anti = layer.kernels(33)
    expected = _direct_conv(x, causal, anti) + layer.D[:, None] * x + layer.bias[:, None]
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kwargs", [{"d_state": 8}, {"d_state": 8, "bidirectional": True, "kernel_size": 12}])
def test_s4d_exports_to_onnx_unbaked(run_onnx, kwargs):
    """ONNX has no complex numbers: the exported SSM kernel is recorded in real arithmetic. ONNX Runtime's output
    against the convolution by loops over taps with the kernels from the Vandermonde formula (tested above)."""
    layer = S4DConv1d(3, **kwargs).eval()
    x = torch.randn(2, 3, 33)
    out = run_onnx(layer, x)
    with torch.no_grad():
        causal, anti = layer.kernels(33)
        expected = _direct_conv(x.double(), causal.double(), None if anti is None else anti.double())
        expected += layer.D.double()[:, None] * x.double() + layer.bias.double()[:, None]
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls,kwargs", [(SGConv1d, {"kernel_size": 64, "kernel_dim": 8}), (S4DConv1d, {})])
def test_causal_by_perturbation(cls, kwargs, device):
    layer = cls(4, dtype=torch.float64, device=device, **kwargs)
    x = torch.randn(1, 4, 50, dtype=torch.float64, device=device)
    x2 = x.clone()
    x2[..., 30] += 1.0
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[..., :30], y2[..., :30], rtol=0, atol=1e-12)
    assert (y[..., 30:] - y2[..., 30:]).abs().max() > 1e-3
    # a bidirectional layer does look ahead
    both = cls(4, bidirectional=True, dtype=torch.float64, device=device, **kwargs)
    assert (both(x)[..., :30] - both(x2)[..., :30]).abs().max() > 1e-6


def test_length_agnostic_and_l_max():
    layer = S4DConv1d(2)
    for length in (5, 17, 64):
        assert layer(torch.randn(1, 2, length)).shape == (1, 2, length)
    fixed = SGConv1d(2, l_max=32, kernel_dim=8)
    assert fixed(torch.randn(1, 2, 32)).shape == (1, 2, 32)
    assert fixed(torch.randn(1, 2, 7)).shape == (1, 2, 7)
    with pytest.raises(ValueError, match="l_max=32"):
        fixed(torch.randn(1, 2, 33))


def test_kernel_shorter_than_input_is_zero_beyond_span():
    layer = SGConv1d(2, kernel_size=10, kernel_dim=4, skip=False, bias=False, dtype=torch.float64)
    x = torch.zeros(1, 2, 40, dtype=torch.float64)
    x[..., 0] = 1.0
    impulse = layer(x)
    expected = torch.cat([layer.kernels(40)[0], torch.zeros(2, 30, dtype=torch.float64)], -1)
    torch.testing.assert_close(impulse[0], expected)


@pytest.mark.parametrize("cls,kwargs", [
    (SGConv1d, {"kernel_size": 24, "kernel_dim": 4, "bidirectional": True}),
    (S4DConv1d, {"d_state": 4}),
    (S4DConv1d, {"d_state": 4, "out_channels": 5}),
])
def test_bake_and_construct_kernel(cls, kwargs):
    layer = cls(3, dtype=torch.float64, **kwargs)
    baked = layer.bake(24)
    for length in (24, 11):
        x = torch.randn(2, 3, length, dtype=torch.float64)
        torch.testing.assert_close(baked(x), layer(x), rtol=1e-5, atol=1e-5)
    # The protocol: construct_kernel(size) applied by torch's conv with the layer's declared per-side padding.
    weight = layer.construct_kernel(24)
    x = torch.randn(2, 3, 24, dtype=torch.float64)
    groups = 3 if layer.pointwise is None else 1
    ((before, after),) = layer.kernel_padding(weight.shape[2:])
    expected = F.conv1d(F.pad(x, (before, after)), weight, layer.bias, groups=groups)
    torch.testing.assert_close(expected, layer(x))
    with pytest.raises(ValueError, match="baked .* for inputs of spatial size up to"):
        baked(torch.randn(2, 3, 25, dtype=torch.float64))


def test_pointwise_mixing(device):
    layer = S4DConv1d(3, 5, d_state=4, dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 16, dtype=torch.float64, device=device)
    causal, _ = layer.kernels(16)
    depthwise = _direct_conv(x, causal) + layer.D[:, None] * x
    expected = torch.einsum("oi,bil->bol", layer.pointwise, depthwise) + layer.bias[:, None]
    torch.testing.assert_close(layer(x), expected)


def test_ssm_parameters_are_marked_for_param_groups():
    model = torch.nn.Sequential(S4DConv1d(4, ssm_lr_scale=0.1), torch.nn.Linear(4, 4))
    groups = {g["kind"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.05)}
    ssm = groups["ssm"]
    assert sorted(n.rsplit(".", 1)[-1] for n in ssm["names"]) == ["A_imag", "log_A_real", "log_dt"]
    assert ssm["weight_decay"] == 0.0 and ssm["lr"] == pytest.approx(1e-4)
    assert any(n.endswith("kernel.C") for n in groups["default"]["names"])


@pytest.mark.parametrize("cls,kwargs", [(SGConv1d, {"kernel_size": 8, "kernel_dim": 2, "bidirectional": True}),
                                        (S4DConv1d, {"d_state": 4})])
def test_gradcheck(cls, kwargs):
    layer = cls(2, dtype=torch.float64, **kwargs)
    x = torch.randn(1, 2, 9, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert gradcheck(fn, (x, *layer.parameters()), fast_mode=True)


def test_bad_inputs():
    layer = S4DConv1d(3)
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), layer(x[None])[0])  # unbatched, as torch.nn.Conv1d takes it
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(10))
    with pytest.raises(RuntimeError, match="input must have shape"):  # caught as torch's conv errors are
        layer(torch.randn(10))
    with pytest.raises(ValueError, match="3 input channels"):
        layer(torch.randn(1, 2, 10))
    with pytest.raises(ValueError, match="d_state must be even"):
        S4DConv1d(3, d_state=5)
    with pytest.raises(ValueError, match="kernel_size, l_max or num_scales"):
        SGConv1d(3)
    with pytest.raises(ValueError, match="interpolation"):
        SGConv1d(3, kernel_size=8, interpolation="cubic")


@pytest.mark.parametrize("cls,kwargs", [(SGConv1d, {"kernel_size": 30, "kernel_dim": 8}), (S4DConv1d, {})])
def test_low_precision_input_is_transformed_in_float32(cls, kwargs):
    layer = cls(4, **kwargs)
    x = torch.randn(2, 4, 30).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 parameters: autocast casts, as for torch's conv
        y = layer(x)
    torch.testing.assert_close(y.float(), layer(x.float()), rtol=3e-2, atol=3e-2)
    with pytest.raises(TypeError, match="dtype"):  # without autocast, mixed dtypes are an error (as in torch)
        layer(x)
    assert layer.bfloat16()(x).dtype == torch.bfloat16


def _two_sided(kernel: SGKernel, channels: int, size: int):
    """Taps at offsets -(size-1)//2 .. size//2: the second half of the generator's kernels mirrored in front."""
    k = kernel(size)
    left = (size - 1) // 2
    return torch.cat([k[channels:, :left].flip(-1), k[:channels, : size - left]], dim=-1)


@pytest.mark.parametrize("kernel_size", [7, (6, 9)])
def test_sgconv2d_is_the_outer_product_kernel(kernel_size, device):
    layer = SGConv2d(3, kernel_size=kernel_size, kernel_dim=2, dtype=torch.float64, device=device)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    box = torch.einsum("ci,cj->cij", _two_sided(layer.kernel_h, 3, kh), _two_sided(layer.kernel_w, 3, kw))
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, device=device)
    # torch's "same" layout: (K - 1) // 2 zeros before, the rest after
    padded = F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
    expected = F.conv2d(padded, box.unsqueeze(1), groups=3) + layer.D.view(-1, 1, 1) * x + layer.bias.view(-1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("out_channels", [None, 5])
def test_sgconv2d_forward_and_bake(out_channels):
    """The layer, batched and unbatched (as torch's convolutions take it), and its one baked convolution compute
    the paper's layer: the outer-product box, D x, the pointwise map, the bias."""
    layer = SGConv2d(3, out_channels, kernel_size=9, kernel_dim=4, dtype=torch.float64)
    x = torch.randn(1, 3, 12, 8, dtype=torch.float64)
    baked = layer.bake()
    assert type(baked).__name__ == "Conv2d"
    box = torch.einsum("ci,cj->cij", _two_sided(layer.kernel_h, 3, 9), _two_sided(layer.kernel_w, 3, 9))
    y = F.conv2d(F.pad(x, (4, 4, 4, 4)), box.unsqueeze(1), groups=3) + layer.D.view(-1, 1, 1) * x
    if layer.pointwise is not None:
        y = torch.einsum("oi,bihw->bohw", layer.pointwise, y)
    expected = y + layer.bias.view(-1, 1, 1)
    torch.testing.assert_close(baked(x), expected)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[0]), expected[0])


def test_sgconv2d_from_the_layer_factory():
    from largekernel.models.layers import create_conv

    layer = create_conv("sgconv", 4, 4, 7, dim=2, groups=4)
    assert isinstance(layer, SGConv2d) and layer(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)
    with pytest.raises(ValueError, match="two-sided"):
        SGConv2d(4, kernel_size=7, bidirectional=False)
    assert layer(torch.randn(4, 9, 9)).shape == (4, 9, 9)  # unbatched, as torch
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(9, 9))
