"""NIFF (Grabinski et al., TMLR 2024) against the paper's formula and torch's own convolution."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from largekernel.nn import NIFFConv1d, NIFFConv2d
from largekernel.nn.niff import PRESETS, NIFFConv3d, SpectralPointwise, Spectrum


def _reference_filter(layer, h, w):
    """The reference code's filter: both networks on the fftshift-ed grid of (k_x, k_y), then ifftshift."""
    device = layer.mlp_real[0].weight.device
    ky = torch.arange(h, dtype=torch.float64, device=device) - h // 2
    kx = torch.arange(w, dtype=torch.float64, device=device) - w // 2
    grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
    coords = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # channel 0 varies along the width
    weights = torch.complex(layer.mlp_real(coords), layer.mlp_imag(coords)).t().reshape(-1, h, w)
    return weights  # fftshift layout


def _reference_niff(layer, x):
    """Paper, eq. of section 3: Re(ifft2(ifftshift(W * fftshift(fft2(x)))))."""
    h, w = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    return torch.fft.ifft2(torch.fft.ifftshift(_reference_filter(layer, h, w) * spectrum, dim=(-2, -1))).real


def _circular_conv_torch(x, kernel):
    """Circular *convolution* of x (B, C, H, W) with centred kernels (C, H, W) by torch's conv2d."""
    c, h, w = kernel.shape
    # conv2d correlates: flip the kernel; centred index h//2 is offset 0.
    padded = F.pad(x, (w - 1 - w // 2, w // 2, h - 1 - h // 2, h // 2), mode="circular")
    return F.conv2d(padded, kernel.flip(-2, -1).unsqueeze(1), groups=c)


@pytest.mark.parametrize("size", [(8, 8), (6, 9), (7, 5)])
def test_matches_reference_formula(size, fft_path, device):
    torch.manual_seed(1)
    layer = NIFFConv2d(5, bias=False, dtype=torch.float64, device=device)
    x = torch.randn(2, 5, *size, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer(x), _reference_niff(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", ["small", "big"])
def test_parameter_gradients_match_the_reference(preset, fft_path, device):
    """Every parameter's gradient (the frequency nets' from the library's native kernels on the CPU, where they run;
    ``fft_path``'s ``-torch`` cases without them) equals autograd's through the paper's formula."""
    torch.manual_seed(4)
    layer = NIFFConv2d(3, preset=preset, dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    grad = torch.randn_like(x)
    params = list(layer.parameters())
    got = torch.autograd.grad(layer(x), params, grad)
    expected = torch.autograd.grad(_reference_niff(layer, x) + layer.bias.view(1, -1, 1, 1), params, grad)
    for name, a, b in zip([n for n, _ in layer.named_parameters()], got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_big_preset_and_bias_match_reference(fft_path, device):
    layer = NIFFConv2d(3, preset="big", dtype=torch.float64, device=device)
    assert [m.out_features for m in layer.mlp_real if isinstance(m, torch.nn.Linear)] == [*PRESETS["big"], 3]
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64, device=device)
    expected = _reference_niff(layer, x) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_parameter_count_independent_of_input_size():
    layer = NIFFConv2d(16, bias=False)
    # two networks 2 -> 8 -> 4 -> 16 (weights and biases)
    per_net = (2 * 8 + 8) + (8 * 4 + 4) + (4 * 16 + 16)
    assert sum(p.numel() for p in layer.parameters()) == 2 * per_net
    for size in [(4, 4), (32, 20), (9, 13)]:
        assert layer(torch.randn(1, 16, *size)).shape == (1, 16, *size)


def test_sizes_change_between_calls(fft_path, device):
    layer = NIFFConv2d(3, dtype=torch.float64, device=device)
    for size in [(6, 6), (11, 4), (6, 6), (16, 15)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
        expected = _reference_niff(layer, x) + layer.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), expected)


def test_inference_cache_follows_parameter_updates():
    layer = NIFFConv2d(2, bias=False, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        layer.mlp_real[0].weight.add_(0.5)
        second = layer(x)
        torch.testing.assert_close(second, _reference_niff(layer, x))
    assert not torch.allclose(first, second)


def test_inference_cache_follows_replaced_and_loaded_parameters():
    layer = NIFFConv2d(2, bias=False, dtype=torch.float64).eval()
    other = NIFFConv2d(2, bias=False, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        layer.mlp_imag[-1].weight = torch.nn.Parameter(torch.randn_like(layer.mlp_imag[-1].weight))
        torch.testing.assert_close(layer(x), _reference_niff(layer, x))
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), _reference_niff(other, x))


def test_activations_replaced_in_one_net_follow_the_reference():
    # The two nets apply their hidden layers together; an activation of the user's own in either net still runs
    # on that net's features only.
    layer = NIFFConv2d(3, bias=False, preset="big", dtype=torch.float64)
    layer.mlp_imag[1] = torch.nn.Tanh()
    layer.mlp_real[3] = torch.nn.GELU()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference_niff(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", [{}, {"preset": "big"}, {"hidden_channels": ()}, {"hidden_channels": (5,)},
                                    {"mode": "linear"}, {"out_channels": 3, "groups": 1},
                                    {"padding": 2, "padding_mode": "reflect"}, {"padding": (1, 2)}])
def test_gradients_match_autograd_through_the_reference(kwargs, fft_path, device):
    """Input and parameter gradients equal autograd's through the paper's complex-FFT formula."""
    torch.manual_seed(2)
    layer = NIFFConv2d(2, dtype=torch.float64, device=device, **kwargs)
    x = torch.randn(3, 2, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(3, layer.out_channels, 6, 7, dtype=torch.float64, device=device)
    params = dict(layer.named_parameters())

    def reference(x):
        h, w = x.shape[-2:]
        if layer.mode == "linear":
            return _reference_niff(layer, F.pad(x, (0, w, 0, h)))[..., :h, :w]
        if any(layer.padding):
            (ph, pw), mode = layer.padding, layer.padding_mode
            padded = F.pad(x, (pw, pw, ph, ph), mode="constant" if mode == "zeros" else mode)
            return _reference_niff(layer, padded)[..., ph:ph + h, pw:pw + w]
        return _reference_niff(layer, x)

    y = reference(x)
    if layer.pointwise is not None:
        y = torch.einsum("oi,bihw->bohw", layer.pointwise, y)
    expected = torch.autograd.grad(y + layer.bias.view(1, -1, 1, 1), [x, *params.values()], grad)
    got = torch.autograd.grad(layer(x), [x, *params.values()], grad)
    for name, e, g in zip(["input", *params], expected, got):
        torch.testing.assert_close(g, e, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_spatial_kernel_is_a_circular_convolution(size, device):
    layer = NIFFConv2d(4, bias=False, dtype=torch.float64, device=device)
    x = torch.randn(2, 4, *size, dtype=torch.float64, device=device)
    kernel = layer.spatial_kernel(size)
    assert kernel.shape == (4, *size)
    torch.testing.assert_close(_circular_conv_torch(x, kernel), layer(x))
    # and it is the real part of the inverse transform of the (unsymmetrised) filter, centred
    expected = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(_reference_filter(layer, *size),
                                                                       dim=(-2, -1))).real, dim=(-2, -1))
    torch.testing.assert_close(kernel, expected)
    torch.testing.assert_close(layer.filter(size), torch.fft.ifftshift(_reference_filter(layer, *size), dim=(-2, -1)))


def test_linear_mode_is_zero_padded_convolution_with_the_same_kernel(fft_path, device):
    h, w = 6, 5
    layer = NIFFConv2d(3, bias=False, mode="linear", dtype=torch.float64, device=device)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, device=device)
    kernel = layer.spatial_kernel((h, w))  # centred on the (2h, 2w) grid
    assert kernel.shape == (3, 2 * h, 2 * w)
    # offsets -(n-1)..(n-1) of the grid kernel, as a (2h-1, 2w-1) linear kernel; conv2d correlates: flip.
    linear = kernel[:, h - (h - 1): h + h, w - (w - 1): w + w]
    expected = F.conv2d(x, linear.flip(-2, -1).unsqueeze(1), padding=(h - 1, w - 1), groups=3)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular", "replicate"])
def test_padding_ablation_is_pad_filter_crop(padding_mode, fft_path, device):
    layer = NIFFConv2d(2, padding=2, padding_mode=padding_mode, bias=False, dtype=torch.float64, device=device)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, device=device)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = F.pad(x, (2, 2, 2, 2), mode=mode)
    expected = _reference_niff(layer, padded)[..., 2:9, 2:8]
    torch.testing.assert_close(layer(x), expected)


def test_full_variant_is_depthwise_then_pointwise(fft_path, device):
    layer = NIFFConv2d(4, 6, groups=1, dtype=torch.float64, device=device)
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64, device=device)
    depthwise = _reference_niff(layer, x)
    expected = torch.einsum("oi,bihw->bohw", layer.pointwise, depthwise) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_channel_multiplier(fft_path, device):
    layer = NIFFConv2d(3, 6, bias=False, dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer(x), _reference_niff(layer, x.repeat_interleave(2, dim=1)))


def test_split_form_stays_in_frequency_domain(device):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8, 6, dtype=torch.float64, device=device)
    first = NIFFConv2d(4, output="spectrum", dtype=torch.float64, device=device)
    mix = SpectralPointwise(4, 5, output="spectrum", dtype=torch.float64, device=device)
    second = NIFFConv2d(5, output="spatial", dtype=torch.float64, device=device)
    spectrum = first(x)
    assert isinstance(spectrum, Spectrum) and spectrum.grid == (8, 6)
    y = second(mix(spectrum))
    # the same layers, each in the spatial domain
    a = _reference_niff(first, x) + first.bias.view(1, -1, 1, 1)
    b = torch.einsum("oi,bihw->bohw", mix.weight, a) + mix.bias.view(1, -1, 1, 1)
    c = _reference_niff(second, b) + second.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, c)


def test_spectrum_input_with_channel_multiplier():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    spectrum = Spectrum(torch.fft.rfft2(x), (6, 5))
    layer = NIFFConv2d(2, 4, bias=False, dtype=torch.float64)
    torch.testing.assert_close(layer(spectrum), layer(x))


def test_stride_is_average_pooling_after_the_filter(fft_path, device):
    layer = NIFFConv2d(2, stride=2, dtype=torch.float64, device=device)
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, device=device)
    expected = F.avg_pool2d(_reference_niff(layer, x) + layer.bias.view(1, -1, 1, 1), 2)
    assert layer(x).shape == (2, 2, 4, 4)
    torch.testing.assert_close(layer(x), expected)


def test_niff1d_matches_formula(fft_path, device):
    layer = NIFFConv1d(3, bias=False, dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 11, dtype=torch.float64, device=device)
    k = torch.fft.fftfreq(11, 1 / 11).to(device, torch.float64).unsqueeze(-1)  # integer frequencies, FFT order
    weights = torch.complex(layer.mlp_real(k), layer.mlp_imag(k)).t()  # (3, 11)
    expected = torch.fft.ifft(weights * torch.fft.fft(x)).real
    torch.testing.assert_close(layer(x), expected)


def test_niff3d_runs_and_bakes(fft_path):
    layer = NIFFConv3d(2, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer.bake((4, 5, 6))(x), layer(x))


@pytest.mark.parametrize("kwargs", [
    {}, {"mode": "linear"}, {"padding": 2}, {"padding": (1, 2), "padding_mode": "reflect"},
    {"padding": 1, "padding_mode": "circular"}, {"out_channels": 5, "groups": 1}, {"out_channels": 6},
    {"stride": 2},
])
def test_bake_equivalence(kwargs, device):
    """The baked convolution computes the paper's formula (padding, pooling and pointwise written out here)."""
    layer = NIFFConv2d(3, dtype=torch.float64, device=device, **kwargs)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, device=device)
    baked = layer.bake((7, 8))
    assert not any(isinstance(m, (NIFFConv2d,)) for m in baked.modules())
    torch.testing.assert_close(baked(x), _reference_layer(layer, x), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="baked .* for inputs of spatial size"):
        baked(torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device))


def _reference_layer(layer, x):
    """The paper's layer on ``x``: pad in its mode (or zero-pad to twice the size), filter by the reference
    formula, crop, pointwise map, bias, average pooling."""
    h, w = x.shape[-2:]
    x = x.repeat_interleave(layer.filters // layer.in_channels, dim=1)  # a channel multiplier's filters
    if layer.mode == "linear":
        y = _reference_niff(layer, F.pad(x, (0, w, 0, h)))[..., :h, :w]
    elif any(layer.padding):
        (ph, pw), mode = layer.padding, layer.padding_mode
        y = _reference_niff(layer, F.pad(x, (pw, pw, ph, ph), mode="constant" if mode == "zeros" else mode))
        y = y[..., ph:ph + h, pw:pw + w]
    else:
        y = _reference_niff(layer, x)
    if layer.pointwise is not None:
        y = torch.einsum("oi,bihw->bohw", layer.pointwise, y)
    if layer.bias is not None:
        y = y + layer.bias.view(1, -1, 1, 1)
    return F.avg_pool2d(y, layer.stride) if any(s > 1 for s in layer.stride) else y


def test_construct_kernel_layout():
    layer = NIFFConv2d(3, bias=False, dtype=torch.float64)
    weight = layer.construct_kernel((6, 7))
    assert weight.shape == (3, 1, 6, 7)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    # torch's "same" padding for an even kernel puts (k-1)//2 before, the rest after
    padded = F.pad(x, (3, 3, 2, 3), mode="circular")
    torch.testing.assert_close(F.conv2d(padded, weight, groups=3), layer(x))


@pytest.mark.parametrize("kwargs,size,batch", [({}, (4, 5), 2), ({}, (3, 4), 3), ({"mode": "linear"}, (3, 4), 2),
                                               ({"out_channels": 3, "groups": 1}, (4, 5), 3),
                                               ({"out_channels": 4}, (3, 3), 2),
                                               ({"padding": 1, "padding_mode": "reflect"}, (3, 4), 3)])
def test_gradcheck(kwargs, size, batch, fft_path):
    torch.manual_seed(0)
    layer = NIFFConv2d(2, dtype=torch.float64, **kwargs)
    x = torch.randn(batch, 2, *size, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert gradcheck(fn, (x, *layer.parameters()), fast_mode=True)


@pytest.mark.parametrize("frozen", ["networks", "pointwise", "all"])
def test_partial_requires_grad_matches_full_gradients(frozen, fft_path):
    """Frozen parts get no gradient; the others equal the gradients with everything trainable (the packed
    product keeps its input spectra only when a filter or pointwise gradient needs them)."""
    torch.manual_seed(3)
    layer = NIFFConv2d(2, 3, groups=1, dtype=torch.float64)
    x = torch.randn(4, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 3, 6, 5, dtype=torch.float64)
    params = dict(layer.named_parameters())
    full = dict(zip(["input", *params], torch.autograd.grad(layer(x), [x, *params.values()], grad)))
    for name, p in params.items():
        p.requires_grad_(not (frozen == "all" or (frozen == "networks") == name.startswith("mlp_")))
    trainable = [n for n, p in params.items() if p.requires_grad]
    got = torch.autograd.grad(layer(x), [x, *(params[n] for n in trainable)], grad)
    for name, g in zip(["input", *trainable], got):
        torch.testing.assert_close(g, full[name], msg=lambda m: f"{name}: {m}")


def test_bad_inputs():
    layer = NIFFConv2d(3)
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(layer(x), layer(x[None])[0])  # unbatched, as torch's convolutions take it
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(8, 8))
    assert layer(torch.randn(0, 3, 8, 8)).shape == (0, 3, 8, 8)  # an empty batch, as torch
    with pytest.raises(ValueError, match="3 input channels"):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        NIFFConv2d(3, mode="spiral")
    with pytest.raises(ValueError, match="preset"):
        NIFFConv2d(3, preset="huge")
    with pytest.raises(ValueError, match="groups"):
        NIFFConv2d(4, 6, groups=2)
    with pytest.raises(ValueError, match="padding must be 0"):
        NIFFConv2d(3, padding=1, mode="linear")
    with pytest.raises(ValueError, match="output='spectrum'"):
        NIFFConv2d(3, stride=2, output="spectrum")
    with pytest.raises(TypeError, match="padding"):
        NIFFConv2d(3, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="Spectrum data"):
        layer(Spectrum(torch.fft.rfft2(torch.randn(1, 3, 8, 8)), (8, 12)))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(1, 3, 8, 8, dtype=torch.int64))


def test_docs_examples_run():
    """Every python block of docs/spectral.md runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "spectral.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "docs/spectral.md", "exec"), {})


@settings(max_examples=10)
@given(h=st.integers(1, 9), w=st.integers(1, 9), mode=st.sampled_from(["circular", "linear"]))
def test_property_any_size_matches_reference(h, w, mode):
    layer = NIFFConv2d(2, bias=False, mode=mode, dtype=torch.float64)
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    if mode == "circular":
        expected = _reference_niff(layer, x)
    else:
        expected = _reference_niff(layer, F.pad(x, (0, w, 0, h)))[..., :h, :w]
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.bake((h, w))(x), expected)


@pytest.mark.parametrize("how", ["bf16 layer", "autocast"])
def test_low_precision_input_is_transformed_in_float32(how):
    """bf16 input, to a bf16 layer or under bf16 autocast (float32 parameters): the paper's formula in float64 on
    the same (bf16-rounded) input and parameters, within bf16 output rounding; the output bf16, as torch's
    convolutions return it there."""
    torch.manual_seed(0)
    layer = NIFFConv2d(3, bias=False)
    if how == "bf16 layer":
        layer = layer.bfloat16()
    x = torch.randn(2, 3, 7, 9).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
        y = layer(x)
        if how == "autocast":  # a float32 input rounded to bf16 first, as torch's convolutions round it
            torch.testing.assert_close(layer(x.float()), y, rtol=0, atol=0)
    assert y.dtype == torch.bfloat16
    exact = _reference_niff(layer.double(), x.double())
    torch.testing.assert_close(y.double(), exact, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make", [lambda: NIFFConv2d(3, 3), lambda: SpectralPointwise(3, 3)],
                         ids=["NIFFConv2d", "SpectralPointwise"])
@pytest.mark.parametrize("params, given", [(torch.float32, torch.float64), (torch.float32, torch.bfloat16),
                                           (torch.float64, torch.float32), (torch.bfloat16, torch.float32)])
def test_an_input_of_another_dtype_than_the_parameters_is_refused_as_torch_refuses_it(make, params, given):
    """Outside autocast, torch's convolution (a 1x1 one for SpectralPointwise) refuses an input whose dtype is not
    its parameters' with a RuntimeError; these layers did too little: they computed in the input's precision with
    the filter cast to it. Now the same refusal (a RuntimeError naming both dtypes), and under autocast, where
    torch's accepts float32 and bf16 inputs alike, theirs match it."""
    torch.manual_seed(0)
    layer = make().to(params)
    torchs = torch.nn.Conv2d(3, 3, 1).to(params)
    x = torch.randn(2, 3, 6, 7, dtype=given)
    with pytest.raises(RuntimeError):
        torchs(x)
    with pytest.raises(RuntimeError, match=f"{params}.*{given}"):
        layer(x)
    if torch.float64 not in (params, given):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torchs(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("params", ["autocast", "same"])
def test_spectral_pointwise_keeps_a_low_precision_input_dtype(dtype, params):
    """A 1x1 map commutes with the Fourier transform: on a real input the layer is torch's 1x1 convolution, and,
    like it, returns the input's dtype (it returned float32 for bf16 and fp16 input): with parameters of that
    dtype, or float32 ones under autocast to it."""
    torch.manual_seed(0)
    layer = SpectralPointwise(3, 5)
    if params == "same":
        layer = layer.to(dtype)
    x = torch.randn(2, 3, 7, 9).to(dtype)
    with torch.autocast("cpu", dtype=dtype, enabled=params == "autocast"):
        y = layer(x)
    assert y.dtype == dtype
    expected = F.conv2d(x.double(), layer.weight.double()[:, :, None, None], layer.bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_spectral_pointwise_is_torchs_1x1_convolution_batched_and_unbatched(ndim):
    """On a real input the layer is torch's 1x1 convolution, which also takes an unbatched (C, *spatial) input."""
    layer = SpectralPointwise(3, 5, ndim=ndim, dtype=torch.float64)
    x = torch.randn(2, 3, *[7, 6, 5][:ndim], dtype=torch.float64)
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    expected = conv(x, layer.weight.view(5, 3, *[1] * ndim), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[1]), expected[1])
    with pytest.raises(ValueError, match=rf"expects a {ndim + 2}-D \(batch, channels, \*spatial\) or {ndim + 1}-D"):
        layer(x[0, 0])


@pytest.mark.parametrize("ndim,layout,dtype", [(2, torch.channels_last, torch.float64),
                                               (3, torch.channels_last_3d, torch.float32)])
def test_spectral_pointwise_keeps_a_channels_last_input_gradients_layout(ndim, layout, dtype):
    """As torch's 1x1 convolution: a channels-last input gives a channels-last output and input gradient (the
    gradient came back contiguous), with the same values; and the second derivative is torch's. (torch's own 3-D
    CPU convolution keeps channels_last_3d for float32 on several threads only: in 3-D the layout is checked
    against the input's, the library's rule for every layer.)"""
    torch.manual_seed(0)
    layer = SpectralPointwise(3, 5, ndim=ndim, dtype=dtype)
    x = torch.randn(2, 3, *[7, 6, 5][:ndim], dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]

    def reference(t):
        return conv(t, layer.weight.view(5, 3, *[1] * ndim), layer.bias)

    out, expected = layer(x), reference(x)
    torch.testing.assert_close(out, expected)
    probe = torch.randn_like(expected)
    grad, = torch.autograd.grad(out, x, probe, create_graph=True)
    expected_grad, = torch.autograd.grad(expected, x, probe, create_graph=True)
    torch.testing.assert_close(grad, expected_grad)
    assert out.is_contiguous(memory_format=layout) and grad.is_contiguous(memory_format=layout)
    if ndim == 2:
        assert out.stride() == expected.stride() and grad.stride() == expected_grad.stride()
    second, = torch.autograd.grad(grad.square().sum(), layer.weight)
    expected_second, = torch.autograd.grad(expected_grad.square().sum(), layer.weight)
    torch.testing.assert_close(second, expected_second)


def test_spectrum_output_keeps_a_channels_last_input_gradients_layout():
    """NIFF with output='spectrum' transforms its real input like SpectralPointwise: a channels-last input gets a
    channels-last gradient, with the values of the same layer on a contiguous copy of the input."""
    torch.manual_seed(0)
    layer = NIFFConv2d(4, 4, output="spectrum", dtype=torch.float64)
    x = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    grads = []
    for t in (x.contiguous(memory_format=torch.channels_last), x.clone()):
        t.requires_grad_()
        spectrum = layer(t).data
        grads.append(torch.autograd.grad(torch.view_as_real(spectrum).square().sum(), t)[0])
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grads[0], grads[1])


def test_loads_reference_checkpoint_keys():
    """A state dict in the reference's layout (1x1 Conv2d layers mlp_*.layer_mpl{i}) loads and computes its formula."""
    torch.manual_seed(5)
    widths = [2, 8, 4, 3]
    reference = {}
    for part in ("mlp_real", "mlp_imag"):
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            reference[f"{part}.layer_mpl{i}.weight"] = torch.randn(b, a, 1, 1, dtype=torch.float64)
            reference[f"{part}.layer_mpl{i}.bias"] = torch.randn(b, dtype=torch.float64)
    layer = NIFFConv2d(3, bias=False, dtype=torch.float64)
    layer.load_state_dict(reference)

    def net(part, mask):  # the reference MLP: 1x1 convs with SiLU between, on a (1, 2, H, W) mask
        h = mask.unsqueeze(0)
        for i in range(1, 4):
            h = F.conv2d(h, reference[f"{part}.layer_mpl{i}.weight"], reference[f"{part}.layer_mpl{i}.bias"])
            h = F.silu(h) if i < 3 else h
        return h

    n = 8  # the reference grid: arange(-n/2, n/2), channel 0 varying along the width
    axis = torch.arange(-n / 2, n / 2, dtype=torch.float64)
    mask = torch.stack([axis[None, :].repeat(n, 1), axis[:, None].repeat(1, n)])
    weights = torch.complex(net("mlp_real", mask), net("mlp_imag", mask))  # (1, 3, n, n), fftshift layout
    x = torch.randn(2, 3, n, n, dtype=torch.float64)
    expected = torch.fft.ifft2(torch.fft.ifftshift(weights * torch.fft.fftshift(torch.fft.fft2(x)))).real
    torch.testing.assert_close(layer(x), expected)


def test_inference_under_torch_compile_matches_eager():
    """The inference filter cache steps aside under torch.compile (it cannot guard on version counters)."""
    layer = NIFFConv2d(4).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = layer(x)
        torch.compiler.reset()
        compiled = torch.compile(layer, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected)


@pytest.mark.parametrize("batch", [1, 2])
def test_double_backward_matches_the_reference(batch, fft_path, device):
    """Gradient-of-gradient (create_graph=True) through the layer equals it through the paper's formula."""
    torch.manual_seed(3)
    layer = NIFFConv2d(3, dtype=torch.float64, device=device)
    x = torch.randn(batch, 3, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for forward in (layer, lambda t: _reference_niff(layer, t) + layer.bias.view(1, -1, 1, 1)):
        (grad,) = torch.autograd.grad(forward(x).square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad.square().sum(), (x, *layer.parameters())))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_compiled_training_graphs_compute_no_complex_tensor():
    """Under torch.compile the filter reaches the FFT product as real and imaginary parts: inductor generates no
    code for complex tensors (and warns of any it would compute), so in the forward and backward graphs that
    AOTAutograd hands the compiler, complex values only pass between the library's operators (the spectra its
    forward keeps for its backward), which run eagerly. The compiled step still equals eager."""
    import operator

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def library(node):  # a call of a largekernel:: operator, or an item of its result
        if node.op != "call_function":
            return False
        if node.target is operator.getitem:
            return library(node.args[0])
        return str(node.target).startswith("largekernel.")

    computed = []

    def inspect(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            values = torch.utils._pytree.tree_leaves(node.meta.get("val"))
            if not any(isinstance(v, torch.Tensor) and v.is_complex() for v in values):
                continue
            if not (node.op == "placeholder" or library(node)) \
                    or not all(library(user) or user.op == "output" for user in node.users):
                computed.append(node.format_node())
        return make_boxed_func(graph_module.forward)

    torch.manual_seed(0)
    layer = torch.nn.Sequential(NIFFConv2d(4, 8), torch.nn.GELU(), NIFFConv2d(8, 8, padding=2, padding_mode="reflect"))
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    results = []
    torch.compiler.reset()
    for model in (layer, torch.compile(layer, backend=aot_autograd(fw_compiler=inspect, bw_compiler=inspect),
                                       fullgraph=True)):
        y = model(x)
        results.append([y, *torch.autograd.grad(y.square().sum(), (x, *layer.parameters()))])
    assert not computed, computed
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)
