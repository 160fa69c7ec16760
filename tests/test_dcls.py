"""DCLS layers against the official ``dcls`` package, torch's own convolutions and formulas."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from largekernel import nn as lknn
from largekernel.nn import Dcls2_1d, Dcls3_1d, Dcls3_2d, DclsConv1d, DclsConv2d, DclsConv3d

from DCLS.construct import modules as ref_modules

_OURS = {1: DclsConv1d, 2: DclsConv2d, 3: DclsConv3d}
_REF = {1: ref_modules.Dcls1d, 2: ref_modules.Dcls2d, 3: ref_modules.Dcls3d}
_VERSION = {"bilinear": "v1", "gaussian": "gauss", "triangle": "max"}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _roundtrip(state_dict):
    """Save and reload as a user's checkpoint file would be (keeps the module version metadata)."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf)


def _reference(box, interpolation, channels, groups, bias, padding):
    kw = {"use_implicit_gemm": False} if len(box) == 2 else {}
    ref = _REF[len(box)](channels, channels, 5, dilated_kernel_size=box, groups=groups, bias=bias,
                         padding=padding, version=_VERSION[interpolation], **kw)
    with torch.no_grad():  # trained-looking positions, some near or past the box limits
        ref.P.uniform_(-max(box) / 2 - 0.5, max(box) / 2 + 0.5)
        if ref.SIG is not None:
            ref.SIG.uniform_(-0.8, 0.8)
    return ref


_CASES = [
    # (box, channels, groups, bias, spatial)
    ((9,), 4, 1, True, (40,)),
    ((8,), 4, 4, False, (33,)),
    ((7, 7), 4, 1, False, (15, 14)),
    ((9, 5), 6, 6, True, (16, 13)),
    ((5, 5, 5), 4, 4, True, (7, 8, 9)),
    ((3, 5, 4), 4, 2, False, (6, 9, 7)),
]


@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian", "triangle"])
@pytest.mark.parametrize("box, channels, groups, bias, spatial", _CASES)
def test_reference_checkpoint_loads_and_matches(box, channels, groups, bias, spatial, interpolation, device):
    padding = tuple(s // 2 for s in box)
    ref = _reference(box, interpolation, channels, groups, bias, padding).to(device)
    ours = _OURS[len(box)](channels, channels, 5, box, padding=padding, groups=groups, bias=bias,
                           interpolation=interpolation, device=device)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    x = torch.randn(2, channels, *spatial, device=device)
    expected = ref(x)
    for backend in ("direct", "fft"):
        ours.backend = backend
        got = ours(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian", "triangle"])
@pytest.mark.parametrize("box, channels, groups, bias, spatial", _CASES)
def test_half_precision_layer_is_the_reference_rounded(box, channels, groups, bias, spatial, interpolation, dtype):
    """A layer in float16 / bfloat16 (``.to(dtype)``, as for half-precision inference): its kernel is the official
    package's, computed in float64 from the same rounded parameters, rounded once; its output within twice the
    error of torch's own convolution of that kernel in ``dtype``. Before, the kernel was computed in ``dtype``:
    elements near the box's far edge moved out of it or took their whole weight onto one tap (bilinear kernels off
    by up to 50 %), float16 cut Gaussian tails below 4 % of the peak, and profiles outside the box gave NaN."""
    padding = tuple(s // 2 for s in box)
    ref = _reference(box, interpolation, channels, groups, bias, padding)
    with torch.no_grad():  # values that both packages' layouts (positions offset by whole cells) hold exactly in dtype
        ref.P.copy_((ref.P * 16).round() / 16)
        if ref.SIG is not None:
            ref.SIG.copy_((ref.SIG * 64).round() / 64)
        for p in (ref.weight, ref.bias):
            if p is not None:
                p.copy_(p.to(dtype))
    ours = _OURS[len(box)](channels, channels, 5, box, padding=padding, groups=groups, bias=bias,
                           interpolation=interpolation)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    ours, ref = ours.to(dtype), ref.double()
    kernel = ref.DCK(ref.weight, ref.P, ref.SIG)
    got = ours.construct_kernel()
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got.double(), kernel.to(dtype).double(), rtol=0, atol=eps * kernel.abs().max().item())

    x = torch.randn(2, channels, *spatial).to(dtype)
    expected = ref(x.double())
    b = None if ref.bias is None else ref.bias.to(dtype)
    torchs = _CONV[len(box)](x, kernel.to(dtype), b, padding=padding, groups=groups).double()
    for backend in ("direct", "fft"):
        ours.backend = backend
        y = ours(x)
        assert y.dtype == dtype
        error, torchs_error = (y.double() - expected).abs().max(), (torchs - expected).abs().max()
        assert error <= 2 * torchs_error + eps * expected.abs().max(), (backend, error, torchs_error)


def test_reference_n_md_checkpoint_loads_and_matches(device):
    ref = ref_modules.Dcls3_1d(4, 4, 3, padding=(1, 1, 4), dense_kernel_size=(3, 3), dilated_kernel_size=9,
                               version="gauss").to(device)
    ours = Dcls3_1d(4, 4, 3, (3, 3), 9, padding=(1, 1, 4), interpolation="gaussian", device=device)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    x = torch.randn(2, 4, 6, 5, 20, device=device)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian"])
def test_n_md_dense_slices_match_reference_lower_dim(interpolation, device):
    # Dcls2_1d: each dense row is a 1-D DCLS kernel; Dcls3_2d: each dense slice a 2-D one.
    for cls, ref_cls, dense, box in ((Dcls2_1d, ref_modules.Dcls1d, (3,), (9,)),
                                     (Dcls3_2d, ref_modules.Dcls2d, (2,), (7, 7))):
        ours = cls(2, 4, 3, dense, box, interpolation=interpolation, device=device)
        kernel = ours.construct_kernel()
        assert kernel.shape == (4, 2, *dense, *box)
        kw = {"use_implicit_gemm": False} if len(box) == 2 else {}
        ref = ref_cls(2, 4, 3, dilated_kernel_size=box, version=_VERSION[interpolation], **kw).to(device)
        for r in range(dense[0]):
            with torch.no_grad():
                ref.weight.copy_(ours.weight[:, :, r])
                ref.P.copy_(ours.P[:, :, :, r])
                if ref.SIG is not None:
                    ref.SIG.copy_(ours.SIG[:, :, :, r])
            torch.testing.assert_close(kernel[:, :, r], ref.DCK(ref.weight, ref.P, ref.SIG))


@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect"])
@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_forward_is_torch_conv_with_constructed_kernel(padding_mode, backend, device):
    layer = DclsConv2d(6, 4, 7, (9, 5), stride=(2, 1), padding=(4, 2), dilation=(1, 2), groups=2,
                       padding_mode=padding_mode, interpolation="gaussian", backend=backend, device=device)
    x = torch.randn(2, 6, 20, 17, device=device)
    kernel = layer.construct_kernel()
    assert kernel.shape == (4, 3, 9, 5)
    if padding_mode == "zeros":
        expected = F.conv2d(x, kernel, layer.bias, (2, 1), (4, 2), (1, 2), 2)
    else:
        expected = F.conv2d(F.pad(x, (2, 2, 4, 4), mode=padding_mode), kernel, layer.bias, (2, 1), 0, (1, 2), 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_same_padding_keeps_size_even_box():
    layer = DclsConv1d(3, 3, 4, 8, padding="same", groups=3)
    assert layer(torch.randn(2, 3, 25)).shape == (2, 3, 25)


@pytest.mark.parametrize("box, channels, groups, bias, spatial", _CASES)
@pytest.mark.parametrize("native", [False, True])
def test_bake_is_the_official_layer_as_one_conv(box, channels, groups, bias, spatial, native):
    """A DCLS layer loaded from the official package's checkpoint bakes into one convolution that computes what the
    official layer computes."""
    padding = tuple(s // 2 for s in box)
    ref = _reference(box, "bilinear", channels, groups, bias, padding)
    ours = _OURS[len(box)](channels, channels, 5, box, padding=padding, groups=groups, bias=bias)
    ours.load_state_dict(_roundtrip(ref.state_dict()))
    baked = ours.bake(native=native)
    assert isinstance(baked, nn.modules.conv._ConvNd) and not isinstance(baked, lknn.KernelConvNd)
    assert isinstance(baked, lknn.Conv1d | lknn.Conv2d | lknn.Conv3d) != native
    x = torch.randn(2, channels, *spatial)
    torch.testing.assert_close(baked(x), ref(x), rtol=1e-4, atol=1e-5)


def test_gradients_reach_positions_and_sigmas(device):
    layer = DclsConv2d(3, 3, 6, 7, padding=3, interpolation="gaussian", device=device)
    layer(torch.randn(2, 3, 12, 12, device=device)).square().sum().backward()
    for p in (layer.weight, layer.P, layer.SIG, layer.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("position_init", ["normal", "uniform"])
def test_initialisation(position_init):
    layer = DclsConv2d(64, 64, 34, (17, 9), groups=64, position_init=position_init, interpolation="gaussian")
    px, py = layer.P[0], layer.P[1]  # x moves along the last dim (9 wide), y along the first (17)
    assert px.abs().max() <= 4 and py.abs().max() <= 8
    if position_init == "normal":
        assert abs(py.std().item() - 0.5) < 0.03 and abs(py.mean().item()) < 0.03
    else:
        assert py.min() < -7.5 and py.max() > 7.5 and px.min() < -3.5 and px.max() > 3.5
    torch.testing.assert_close(layer.SIG, torch.full_like(layer.SIG, 0.23))
    assert layer.P._optim["kind"] == "position" and layer.SIG._optim["kind"] == "sigma"
    assert DclsConv1d(2, 2, 3, 5).SIG is None


def test_clamp_parameters_keeps_positions_in_box():
    layer = DclsConv2d(2, 2, 5, (9, 5))
    with torch.no_grad():
        layer.P.mul_(100)
    layer.clamp_parameters()
    assert layer.P[0].abs().max() == 2 and layer.P[1].abs().max() == 4


@pytest.mark.parametrize("interpolation", ["bilinear", "gaussian"])
@pytest.mark.parametrize("box", [(4,), (5,), (4, 6), (5, 3)])
def test_clamped_elements_keep_their_weight_and_gradient(box, interpolation):
    """After ``clamp_parameters()`` every element is on the box: its normalised profile puts its whole weight in the
    kernel, and its position has a gradient that can move it back in. In an even box the reference's bound
    ``size // 2`` is the cell after the last one, where a bilinear element adds nothing and has no gradient."""
    torch.manual_seed(0)
    layer = _OURS[len(box)](2, 2, 6, box, interpolation=interpolation)
    with torch.no_grad():
        layer.P.copy_(torch.randn_like(layer.P).sign() * 100)  # every element far outside, on every side
    layer.clamp_parameters()
    for i in range(len(box)):  # P[i] moves along box dimension M - 1 - i: from -(size // 2) to its last cell or beyond
        size = box[len(box) - 1 - i]
        assert layer.P[i].min() == -(size // 2)
        assert layer.P[i].max() == (size - 1 - size // 2 if interpolation == "bilinear" else size // 2)
    kernel = layer.construct_kernel()
    dims = tuple(range(2, kernel.dim()))
    torch.testing.assert_close(kernel.sum(dims), layer.weight.sum(-1))  # each element's weight, all in the box
    if interpolation == "bilinear":  # a tent: on a box edge the slope into the box is the difference of two cells
        ramp = sum(torch.arange(size, dtype=kernel.dtype).view(size, *[1] * (len(box) - 1 - d))
                   for d, size in enumerate(box))  # one more per cell along every dimension
        with torch.no_grad():
            layer.weight.fill_(1.0)
        (layer.construct_kernel() * ramp).sum().backward()
        torch.testing.assert_close(layer.P.grad, torch.ones_like(layer.P))


@pytest.mark.parametrize("offset, sigma", [(7.07, 1.0), (5.5, 0.8), (3.0, 0.27), (40.0, 1.0)])
def test_gaussian_element_far_outside_one_dimension_keeps_the_reference_share(offset, sigma):
    """A Gaussian element moved far outside the box along one dimension: the reference normalises its profile by
    ``sum + 1e-7``, so it keeps about ``mass / 1e-7`` of its weight (1.4e-4 at 7.07 sigmas, 5.5e-4 at 6.9; 1e-20
    at 11, nothing at 40). In float32 3-D the layer flushed the first two to zero (every profile's tail was cut
    at one absolute level, ~3e-10). Output and gradients in float32 against the official layer in float64, to
    1e-5 of what the element gives inside the box; the kernel's centre against the formula written out."""
    torch.manual_seed(0)
    box = (5, 1, 5)

    def official(position):
        ref = ref_modules.Dcls3d(1, 2, 1, dilated_kernel_size=box, version="gauss", bias=False).double()
        with torch.no_grad():
            ref.weight.copy_(torch.tensor([0.7, -1.3]).view(2, 1, 1))
            ref.P.zero_()
            ref.P[1].fill_(position)  # P[1] moves along the middle dimension, one cell wide
            ref.SIG.zero_()
            ref.SIG[1].fill_(sigma - 0.27)
        return ref

    x = torch.randn(2, 1, 7, 3, 7, dtype=torch.float64)
    grad = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64)
    names = ("weight", "P", "SIG")

    def outputs(layer, dtype):
        y = layer(x.to(dtype))
        return [y, *torch.autograd.grad(y, [getattr(layer, n) for n in names], grad.to(dtype))]

    inside = outputs(official(0.0), torch.float64)  # the scale of each quantity for an element in the box
    ref = official(offset)
    ours = DclsConv3d(1, 2, 1, box, interpolation="gaussian", bias=False)
    ours.load_state_dict(_roundtrip({k: v.float() for k, v in ref.state_dict().items()}))
    for name, want, have, scale in zip(("output",) + names, outputs(ref, torch.float64), outputs(ours, torch.float32),
                                       inside):
        torch.testing.assert_close(have.double(), want, rtol=1e-4, atol=1e-5 * scale.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")
    tail = sum(math.exp(-0.5 * (d / 0.27) ** 2) for d in (1, 2))
    along = 1 + 2 * tail  # the profile's sum along each of the other two dimensions (peak 1 at the centre)
    mass = math.exp(-0.5 * (offset / sigma) ** 2)
    centre = ref.weight.detach().view(2) * mass / (mass * along ** 2 + 1e-7)  # the reference's normalisation
    torch.testing.assert_close(ours.construct_kernel()[:, 0, 2, 0, 2].double(), centre, rtol=1e-4,
                               atol=1e-9 * ref.weight.abs().max().item())


@pytest.mark.parametrize("position_init", ["normal", "uniform"])
def test_bilinear_initial_positions_are_on_the_box(position_init):
    layer = DclsConv2d(64, 64, 34, (8, 5), groups=64, position_init=position_init)
    px, py = layer.P[0], layer.P[1]  # x moves along the last dim (5 wide: -2..2), y along the first (8: -4..3)
    assert px.min() >= -2 and px.max() <= 2 and py.min() >= -4 and py.max() <= 3


def test_own_state_dict_roundtrip_without_metadata():
    # safetensors-style dicts carry no module version: they are read as this library's layout
    layer = DclsConv2d(2, 2, 5, (9, 5), interpolation="gaussian")
    other = DclsConv2d(2, 2, 5, (9, 5), interpolation="gaussian")
    other.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    torch.testing.assert_close(other.construct_kernel(), layer.construct_kernel())
    other.load_state_dict(_roundtrip(layer.state_dict()))
    torch.testing.assert_close(other.construct_kernel(), layer.construct_kernel())


@pytest.mark.parametrize("key, shape", [("P", (2, 4, 1, 6)), ("weight", (4, 2, 5)), ("SIG", (1, 4, 1, 5))])
def test_wrong_shapes_in_state_dict(key, shape):
    layer = DclsConv2d(4, 4, 5, 7, groups=4, interpolation="gaussian")
    state = layer.state_dict()
    state[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"{key}: shape {tuple(shape)}".replace("(", r"\(").replace(")", r"\)")):
        layer.load_state_dict(state)


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_count": 0}, "kernel_count"),
    ({"dilated_kernel_size": 0}, "dilated_kernel_size"),
    ({"dilated_kernel_size": (5, 0)}, "dilated_kernel_size"),
    ({"dilated_kernel_size": (5, 5, 5)}, "dilated_kernel_size"),
    ({"groups": 3}, "groups"),
    ({"interpolation": "cubic"}, "interpolation"),
    ({"padding_mode": "mirror"}, "padding_mode"),
    ({"backend": "cudnn"}, "backend"),
    ({"position_init": "zeros"}, "position_init"),
    ({"padding": "full"}, "padding"),
    ({"dilated_kernel_size": "same"}, "dilated_kernel_size"),
    ({"stride": (1, 2, 3)}, "stride"),
])
def test_bad_arguments(kwargs, match):
    args = {"in_channels": 4, "out_channels": 4, "kernel_count": 3, "dilated_kernel_size": 5}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        DclsConv2d(**args)


def test_set_sigma():
    layer = DclsConv1d(2, 2, 3, 9, interpolation="gaussian")
    layer.set_sigma(2.0)
    torch.testing.assert_close(layer.SIG.abs() + 0.27, torch.full_like(layer.SIG, 2.0))
    with pytest.raises(ValueError, match="sigma"):
        layer.set_sigma(0.1)
    with pytest.raises(ValueError, match="interpolation"):
        DclsConv1d(2, 2, 3, 9).set_sigma(1.0)


def test_repr_names_non_defaults():
    text = repr(DclsConv2d(4, 4, 3, (5, 7), groups=4, interpolation="gaussian", backend="fft"))
    assert "dilated_kernel_size=(5, 7)" in text and "groups=4" in text and "'gaussian'" in text and "'fft'" in text


def test_documentation_examples_run():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "dcls.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    exec(compile(code, "docs/dcls.md", "exec"), {})


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_unbatched_input_as_torch(backend, device):
    layer = DclsConv1d(3, 4, 3, 7, padding=3, backend=backend, device=device)
    x = torch.randn(3, 20, device=device)
    torch.testing.assert_close(layer(x), F.conv1d(x, layer.construct_kernel(), layer.bias, padding=3),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input must have shape"):
        layer(torch.randn(20, device=device))


def test_triangle_width_learns_from_init():
    # |SIG| has zero gradient at SIG = 0 (the reference's init): ours must start where it can move
    layer = DclsConv1d(2, 2, 3, 9, padding=4, interpolation="triangle")
    layer(torch.randn(2, 2, 20)).square().sum().backward()
    assert layer.SIG.grad.abs().min() > 0


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_layer_gradcheck_end_to_end(backend):
    layer = DclsConv2d(2, 2, 3, (5, 4), padding=2, groups=2, interpolation="gaussian", backend=backend,
                       dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    names = ("weight", "P", "SIG")
    params = tuple(getattr(layer, n).detach().clone().requires_grad_(True) for n in names)

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)
