"""Bad input, drawn at random: every call of the public functions and layers either does what torch's
convolution does or raises an error that names the argument (and is caught as torch's are), and a layer that
refused a call works normally afterwards."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import largekernel.nn as lnn
from largekernel.functional import ConvArgumentError, convolve, fft_conv

ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups", "padding_mode", "kernel",
             "channels", "in_channels", "out_channels", "kernel_size", "kernel_count", "dilated_kernel_size",
             "backend", "size", "dtype")
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _names_an_argument(error: Exception) -> bool:
    return any(name in str(error) for name in ARGUMENTS)


@st.composite
def calls(draw):
    nd = draw(st.integers(1, 3))
    input_rank = draw(st.sampled_from([nd + 2, nd + 2, nd + 1, nd, nd + 3]))
    cin = draw(st.integers(0, 4))
    shape = [draw(st.integers(0, 3))] + [cin] + [draw(st.integers(0, 7)) for _ in range(nd)]
    shape = shape[-input_rank:] if input_rank <= len(shape) else [2] * (input_rank - len(shape)) + shape
    groups = draw(st.sampled_from([1, 1, 2, 0, -1]))
    cout = draw(st.integers(0, 4))
    kernel = [draw(st.integers(0, 5)) for _ in range(nd)]
    wshape = [cout, draw(st.integers(0, 3))] + kernel
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32, torch.int64, torch.complex64]))
    wdtype = draw(st.sampled_from([dtype, dtype, torch.float32]))
    kw = dict(
        stride=draw(st.sampled_from([1, 2, 0, -1, (1,) * nd, (1,) * (nd + 1), 1.5])),
        padding=draw(st.sampled_from([0, 1, -1, "same", "valid", "full", (1,) * nd, ((1, 0),) * nd])),
        dilation=draw(st.sampled_from([1, 2, 0])),
        groups=groups,
    )
    bias = draw(st.sampled_from([None, cout, cout + 1]))
    return shape, wshape, dtype, wdtype, bias, kw


def _tensor(shape, dtype):
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    return torch.randint(0, 3, shape, dtype=dtype)


@settings(max_examples=150)
@given(calls(), st.sampled_from(["fft", "direct", "auto"]))
def test_functions_match_torch_or_name_the_argument(call, backend):
    shape, wshape, dtype, wdtype, bias, kw = call
    x, w = _tensor(shape, dtype), _tensor(wshape, wdtype)
    b = None if bias is None else _tensor([bias], wdtype)
    nd = len(wshape) - 2
    try:
        expected = TORCH_CONV[nd](x, w, b, **kw)
    except Exception:  # torch refuses: so must we, naming the argument, as an error torch's handlers catch
        expected = None
    try:
        got = convolve(x, w, b, backend=backend, **kw) if backend != "fft" else fft_conv(x, w, b, **kw)
    except ConvArgumentError as error:
        assert isinstance(error, RuntimeError) and isinstance(error, ValueError)
        assert _names_an_argument(error), f"unclear error: {error}"
        return
    assert expected is not None, f"torch refuses {call}, we returned {tuple(got.shape)}"
    torch.testing.assert_close(got, expected)


def _layers():
    return {
        "Conv2d": lambda **kw: lnn.Conv2d(4, 4, 5, padding=2, **kw),
        "DclsConv2d": lambda **kw: lnn.DclsConv2d(4, 4, kernel_count=4, dilated_kernel_size=7, padding=3, **kw),
        "FlexConv2d": lambda **kw: lnn.FlexConv2d(4, 4, kernel_size=7, **kw),
        "CKConv1d": lambda **kw: lnn.CKConv1d(4, 4, causal=True, **kw),
        "NIFFConv2d": lambda **kw: lnn.NIFFConv2d(4, **kw),
        "SGConv1d": lambda **kw: lnn.SGConv1d(4, kernel_size=16, **kw),
        "S4DConv1d": lambda **kw: lnn.S4DConv1d(4, **kw),
        "RepLKConv2d": lambda **kw: lnn.RepLKConv2d(4, 4, 7, groups=4, **kw),
    }


_BAD_OPTIONS = [dict(groups=3), dict(groups=0), dict(stride=0), dict(padding=-1), dict(padding_mode="mirror"),
                dict(backend="cuda"), dict(bias="yes"), dict(dtype=torch.int32)]


@pytest.mark.parametrize("name", list(_layers()))
@pytest.mark.parametrize("options", _BAD_OPTIONS, ids=[next(iter(o)) for o in _BAD_OPTIONS])
def test_layer_constructors_name_the_argument(name, options):
    try:
        _layers()[name](**options)
    except TypeError as error:  # an option the layer does not take at all: Python's own message names it
        assert next(iter(options)) in str(error) or _names_an_argument(error)
    except (ConvArgumentError, ValueError, RuntimeError) as error:
        assert _names_an_argument(error), f"unclear error: {error}"


@st.composite
def bad_inputs(draw, nd: int):
    kind = draw(st.sampled_from(["rank", "channels", "dtype", "zero", "type"]))
    if kind == "rank":
        return torch.randn(*[2] * draw(st.sampled_from([1, nd + 3])))
    if kind == "channels":
        return torch.randn(2, draw(st.sampled_from([1, 3, 5])), *[8] * nd)
    if kind == "dtype":
        return torch.randint(0, 3, (2, 4, *[8] * nd))
    if kind == "zero":
        return torch.randn(2, 4, *([0] + [8] * (nd - 1)))
    return [[1.0]]


@settings(max_examples=10)
@given(st.sampled_from(list(_layers())), st.data())
def test_layers_refuse_bad_inputs_and_keep_working(name, data):
    torch.manual_seed(0)
    layer = _layers()[name]().eval()
    nd = 1 if name.endswith("1d") else 2
    good = torch.randn(2, 4, *[8] * nd)
    with torch.no_grad():
        before = layer(good)
    for _ in range(3):
        bad = data.draw(bad_inputs(nd))
        with pytest.raises((ConvArgumentError, TypeError)) as caught:
            layer(bad)
        assert _names_an_argument(caught.value) or "Tensor" in str(caught.value), str(caught.value)
    with torch.no_grad():
        torch.testing.assert_close(layer(good), before)  # not poisoned by the refused calls
