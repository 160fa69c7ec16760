"""Complex convolutions, as torch's convolutions compute them: ``convolve``, ``fft_conv`` and the ``Conv{n}d`` layers
against ``torch.nn.functional.conv{n}d`` on complex tensors (the independent reference), with their gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import largekernel.nn as lnn
from largekernel.functional import ConvArgumentError, choose_backend, convolve, execute, fft_conv, plan_conv

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

CASES = [  # nd, cin, cout, kernel, size, keyword arguments
    (1, 4, 4, 31, 64, dict(padding=15, groups=4)),
    (1, 3, 5, 9, 40, dict(padding=(4,), stride=2, dilation=2)),
    (2, 4, 4, 9, 16, dict(padding=4, groups=4)),
    (2, 4, 6, 7, 13, dict(padding="same")),
    (2, 4, 4, 5, 12, dict(padding="valid", stride=(1, 2))),
    (3, 2, 4, 5, 8, dict(padding=2, groups=2)),
]


def _complex(*shape, dtype=torch.complex128):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("how", ["fft_conv", "fft", "direct", "auto"])
@pytest.mark.parametrize("nd, cin, cout, k, n, kw", CASES)
def test_complex_operands_give_torchs_complex_convolution(nd, cin, cout, k, n, kw, how):
    """Output and the gradients of input, weight and bias (Wirtinger, as torch's) equal torch's complex
    convolution, in complex128."""
    torch.manual_seed(0)
    groups = kw.get("groups", 1)
    x = _complex(2, cin, *(n,) * nd).requires_grad_()
    w = _complex(cout, cin // groups, *(k,) * nd).requires_grad_()
    b = _complex(cout).requires_grad_()
    target = _complex(*TORCH_CONV[nd](x, w, b, **kw).shape)  # a loss with a complex dependence on the output

    def loss(y):
        return (y * target.conj()).real.sum() + y.abs().square().sum()

    expected = TORCH_CONV[nd](x, w, b, **kw)
    want = torch.autograd.grad(loss(expected), (x, w, b))
    got = fft_conv(x, w, b, **kw) if how == "fft_conv" else convolve(x, w, b, backend=how, **kw)
    assert got.dtype == torch.complex128
    torch.testing.assert_close(got, expected)
    for g, e, name in zip(torch.autograd.grad(loss(got), (x, w, b)), want, ("input", "weight", "bias")):
        torch.testing.assert_close(g, e, msg=lambda m: f"{name} gradient: {m}")


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize("backend", ["fft", "direct"])
def test_complex_layer_is_torchs_layer(padding_mode, backend):
    """A complex ``Conv2d`` (``dtype=torch.complex64``) with a padding mode equals ``torch.nn.Conv2d`` holding the
    same state_dict, unbatched input included; the layer's state_dict loads into torch's unchanged."""
    torch.manual_seed(0)
    ours = lnn.Conv2d(3, 4, 7, padding=3, padding_mode=padding_mode, dtype=torch.complex64, backend=backend)
    theirs = torch.nn.Conv2d(3, 4, 7, padding=3, padding_mode=padding_mode, dtype=torch.complex64)
    theirs.load_state_dict(ours.state_dict())
    assert ours.weight.dtype == torch.complex64
    for x in (_complex(2, 3, 12, 10, dtype=torch.complex64), _complex(3, 12, 10, dtype=torch.complex64)):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_conjugated_and_channels_last_inputs():
    """A conjugate view (``x.conj()``, torch's lazy conjugation) is convolved as its values; a channels_last input
    gives a channels_last output, as torch's convolution does."""
    torch.manual_seed(0)
    x, w = _complex(2, 4, 12, 12), _complex(4, 1, 9, 9)
    for given in (x.conj(), x.contiguous(memory_format=torch.channels_last)):
        expected = F.conv2d(given, w, padding=4, groups=4)
        got = convolve(given, w, padding=4, groups=4, backend="fft")
        torch.testing.assert_close(got, expected)
        layout = torch.channels_last if expected.is_contiguous(memory_format=torch.channels_last) \
            and not expected.is_contiguous() else torch.contiguous_format
        assert got.is_contiguous(memory_format=layout)
    assert not got.is_contiguous() and got.is_contiguous(memory_format=torch.channels_last)


def test_complex_fft_path_is_twice_differentiable():
    """torch's own numerical checks, first and second order, in complex128 on the FFT path."""
    torch.manual_seed(0)
    x = _complex(2, 2, 9).requires_grad_()
    w = _complex(2, 1, 5).requires_grad_()
    b = _complex(2).requires_grad_()

    def f(x, w, b):
        return fft_conv(x, w, b, padding=2, groups=2)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_a_complex_sample_never_changes_another(value):
    """NaN, Inf or a huge value in one sample's real or imaginary part leaves the other samples' outputs and input
    gradients as they are without it, bit for bit."""
    torch.manual_seed(0)
    x, w = _complex(3, 4, 24, 24, dtype=torch.complex64), _complex(4, 1, 13, 13, dtype=torch.complex64)

    def run(x):
        x = x.clone().requires_grad_()
        y = convolve(x, w, padding=6, groups=4, backend="fft")
        y.abs().square().sum().backward()
        return y.detach(), x.grad

    clean_y, clean_g = run(x)
    for part in (0, 1):
        bad = torch.view_as_real(x.clone())
        bad[0, 1, 5, 7, part] = value
        y, g = run(torch.view_as_complex(bad))
        assert torch.equal(y[1:], clean_y[1:]) and torch.equal(g[1:], clean_g[1:])


def test_plans_and_execute_take_complex_operands():
    """``plan_conv`` and ``choose_backend`` plan a complex call as its parts' real calls; ``execute`` runs a
    plan on complex operands (the three real calls), giving torch's result."""
    torch.manual_seed(0)
    x, w, b = _complex(2, 4, 16, 16), _complex(4, 1, 9, 9), _complex(4)
    plan = plan_conv(x, w, b, padding=4, groups=4, backend="fft")
    assert plan.path == "fft" and plan.dtype == torch.float64
    assert choose_backend(x, w, b, padding=4, groups=4) in ("direct", "fft")
    torch.testing.assert_close(execute(plan, x, w, b), F.conv2d(x, w, b, padding=4, groups=4))


def test_mixed_real_and_complex_operands_are_refused_naming_the_argument():
    """torch refuses a complex input with a real weight (and the reverse); so do we, naming the operand, with an
    error torch's handlers catch."""
    x, w = _complex(2, 4, 16), _complex(4, 4, 3)
    for args, name in (((x, w.real), "weight"), ((x.real, w), "weight"), ((x, w, torch.randn(4, dtype=torch.float64)),
                                                                        "bias")):
        with pytest.raises(RuntimeError):
            F.conv1d(*args)
        for fn in (fft_conv, convolve):
            with pytest.raises(ConvArgumentError, match=f"{name} dtype must match input dtype") as error:
                fn(*args)
            assert isinstance(error.value, RuntimeError)


def test_other_families_refuse_complex_inputs_by_name():
    """Layers whose kernels the library builds (here DCLS) take real inputs only, and say so."""
    layer = lnn.DclsConv2d(4, 4, kernel_count=4, dilated_kernel_size=7, padding=3)
    with pytest.raises(ConvArgumentError, match="input must be a real floating-point tensor.*complex64"):
        layer(_complex(2, 4, 8, 8, dtype=torch.complex64))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_complex_layer_matches_eager(backend):
    """``torch.compile`` of a complex FFT layer: the forward and the input gradient equal eager's."""
    torch.manual_seed(0)
    layer = lnn.Conv2d(4, 4, 9, padding=4, groups=4, dtype=torch.complex64, backend="fft")
    x = _complex(2, 4, 16, 16, dtype=torch.complex64).requires_grad_()
    expected = layer(x)
    (want,) = torch.autograd.grad(expected.abs().sum(), x)
    torch.compiler.reset()
    compiled = torch.compile(copy.deepcopy(layer), backend=backend, fullgraph=True)
    got = compiled(x)
    (grad,) = torch.autograd.grad(got.abs().sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-5)


def test_convert_keeps_a_complex_convolution_or_skips_it_saying_why():
    """``convert(model, "fft")`` of a model with a complex ``torch.nn.Conv2d`` keeps its output (torch's); a family
    that builds real kernels skips the layer, with the reason in the report, and leaves it as it was."""
    import largekernel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 7, padding=3, groups=4, dtype=torch.complex64))
    x = _complex(2, 4, 16, 16, dtype=torch.complex64)
    expected = model(x)
    converted, report = largekernel.convert(copy.deepcopy(model), "fft", "*", report=True)
    assert [r.name for r in report.replaced] == ["0"] and isinstance(converted[0], lnn.Conv2d)
    torch.testing.assert_close(converted(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.warns(UserWarning, match="skipped 1"):
        kept, report = largekernel.convert(copy.deepcopy(model), "dcls", "*", report=True)
    assert not report.replaced and "complex weights" in report.skipped[0].reason
    assert type(kept[0]) is torch.nn.Conv2d


def test_autocast_leaves_a_complex_convolution_in_its_dtype():
    """Under ``torch.autocast`` (bfloat16) torch computes a complex convolution in its own precision (autocast
    casts no complex tensor); so does the library: the same values as without autocast."""
    torch.manual_seed(0)
    x, w = _complex(2, 4, 16, 16, dtype=torch.complex64), _complex(4, 1, 9, 9, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.conv2d(x, w, padding=4, groups=4)
        got = {backend: convolve(x, w, padding=4, groups=4, backend=backend) for backend in ("fft", "direct")}
    assert expected.dtype == torch.complex64
    torch.testing.assert_close(expected, F.conv2d(x, w, padding=4, groups=4))
    for backend, y in got.items():
        assert y.dtype == torch.complex64
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("backend", ["fft", "direct"])
def test_complex_convolution_under_vmap_and_jvp(backend):
    """``torch.func.vmap`` over a batch of complex inputs and a forward-mode ``jvp`` give what they give on torch's
    complex convolution."""
    torch.manual_seed(0)
    x, w = _complex(3, 2, 4, 16), _complex(4, 1, 9)

    def ours(xi):
        return convolve(xi, w, padding=4, groups=4, backend=backend)

    def torchs(xi):
        return F.conv1d(xi, w, padding=4, groups=4)

    torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(torchs)(x))
    tangent = _complex(2, 4, 16)
    for got, want in zip(torch.func.jvp(ours, (x[0],), (tangent,)), torch.func.jvp(torchs, (x[0],), (tangent,))):
        torch.testing.assert_close(got, want)
