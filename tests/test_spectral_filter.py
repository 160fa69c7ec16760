"""spectral_filter(): circular convolution by filters given on the frequency grid, against the formula it documents,
``Re(ifftn(W * fftn(x)))`` written with torch.fft here, values and gradients (input, filter, mixing, bias), on every
FFT product (``fft_path``)."""

import pytest
import torch

from largekernel.functional import ConvArgumentError, spectral_filter


def _hermitian_filter(filters: int, grid: tuple[int, ...]) -> torch.Tensor:
    """The spectra of real kernels (what the function takes), as a leaf tensor."""
    kernel = torch.randn(filters, *grid, dtype=torch.float64)
    return torch.fft.fftn(kernel, dim=tuple(range(1, len(grid) + 1))).requires_grad_()


def _reference(x, w, mixing, bias, grid, out_start, out_size):
    nd = len(grid)
    dims = tuple(range(-nd, 0))
    per = w.shape[0] // x.shape[1]
    spectrum = torch.fft.fftn(x, s=grid, dim=dims).repeat_interleave(per, dim=1)  # (B, filters, *grid)
    y = torch.fft.ifftn(w * spectrum, dim=dims).real
    if mixing is not None:
        y = torch.einsum("of,bf...->bo...", mixing, y)
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * nd))
    return y[(..., *(slice(a, a + n) for a, n in zip(out_start, out_size)))]


@pytest.mark.parametrize("size, grid, per, mix, out_start", [
    ((9,), (16,), 1, False, (0,)),
    ((7,), (11,), 2, True, (2,)),
    ((6, 5), (6, 5), 1, False, (0, 0)),
    ((5, 6), (9, 12), 1, False, (3, 4)),
    ((5, 4), (8, 7), 3, False, (1, 0)),
    ((6, 6), (10, 10), 1, True, (0, 0)),
    ((3, 4, 5), (5, 6, 7), 1, False, (1, 1, 1)),
    ((4, 3, 4), (4, 6, 8), 2, False, (0, 2, 3)),
])
@pytest.mark.parametrize("channels", [4, 5])
def test_values_and_gradients_match_the_formula(size, grid, per, mix, out_start, channels, fft_path):
    x = torch.randn(3, channels, *size, dtype=torch.float64, requires_grad=True)
    w = _hermitian_filter(channels * per, grid)
    mixing = torch.randn(3, channels * per, dtype=torch.float64, requires_grad=True) if mix else None
    bias = torch.randn(3 if mix else channels * per, dtype=torch.float64, requires_grad=True)
    out_size = tuple(min(n, g - a) for n, g, a in zip(size, grid, out_start))
    got = spectral_filter(x, w, mixing=mixing, bias=bias, out_start=out_start, out_size=out_size)
    expected = _reference(x, w, mixing, bias, grid, out_start, out_size)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    inputs = [t for t in (x, w, mixing, bias) if t is not None]
    for name, g, e in zip(["input", "filter", "mixing", "bias"][: len(inputs)] if mix else ["input", "filter", "bias"],
                          torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(g, e, msg=lambda m: f"{name}: {m}")


def test_filter_gradient_is_the_spectrum_of_a_real_kernel_gradient(fft_path):
    """The filter's gradient is Hermitian, like the filter: a gradient step keeps it the spectrum of a real kernel."""
    x = torch.randn(2, 6, 10, 9, dtype=torch.float64)
    w = _hermitian_filter(6, (10, 9))
    (grad,) = torch.autograd.grad(spectral_filter(x, w).square().sum(), w)
    mirrored = torch.roll(torch.flip(grad, (1, 2)), (1, 1), (1, 2))
    torch.testing.assert_close(grad, mirrored.conj())


@pytest.mark.parametrize("size, grid, per, mix", [((9,), (16,), 1, False), ((5, 6), (9, 12), 2, False),
                                                   ((6, 6), (10, 10), 1, True), ((3, 4, 5), (5, 6, 7), 1, False)])
@pytest.mark.parametrize("layout", ["complex", "contiguous", "strided", "odd-offset"])
def test_gradients_of_every_order_match_the_formula(size, grid, per, mix, layout, fft_path):
    """First derivatives taken with ``create_graph=True`` and second derivatives match the formula's, for a complex
    filter and for one given as real and imaginary parts (a real ``(filters, *grid, 2)`` tensor, the complex filter
    ``parts[..., 0] + i parts[..., 1]``; its gradient comes as parts too)."""
    channels = 4
    x = torch.randn(2, channels, *size, dtype=torch.float64, requires_grad=True)
    spectrum = _hermitian_filter(channels * per, grid).detach()
    if layout == "complex":
        parts = filter = spectrum.requires_grad_()
    elif layout == "contiguous":
        parts = torch.view_as_real(spectrum).clone().requires_grad_()
        filter = parts
    elif layout == "strided":  # (re, im) pairs apart in memory: a transposed (2, filters, *grid) tensor
        parts = torch.view_as_real(spectrum).movedim(-1, 0).contiguous().requires_grad_()
        filter = parts.movedim(0, -1)
    else:  # contiguous, but each pair starts at an odd offset (no complex view of it exists)
        parts = torch.view_as_real(spectrum).clone().requires_grad_()
        storage = torch.cat([torch.zeros(1, dtype=parts.dtype), parts.flatten()])
        filter = storage[1:].view(parts.shape)
        assert filter.storage_offset() == 1
    mixing = torch.randn(3, channels * per, dtype=torch.float64, requires_grad=True) if mix else None
    bias = torch.randn(3 if mix else channels * per, dtype=torch.float64, requires_grad=True)
    got = spectral_filter(x, filter, mixing=mixing, bias=bias)
    complex_filter = filter if filter.is_complex() else torch.complex(filter[..., 0], filter[..., 1])
    expected = _reference(x, complex_filter, mixing, bias, grid, (0,) * len(grid), size)
    torch.testing.assert_close(got, expected)
    inputs = [t for t in (x, parts, mixing, bias) if t is not None]
    grads = [torch.autograd.grad(y.square().sum(), inputs, create_graph=True) for y in (got, expected)]
    for g, e in zip(*grads):
        torch.testing.assert_close(g, e)
    second = [torch.autograd.grad(sum(g.abs().square().sum() for g in gs), inputs) for gs in grads]
    for g, e in zip(*second):
        torch.testing.assert_close(g, e)


def test_bad_arguments_name_what_is_wrong():
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ConvArgumentError, match="complex"):
        spectral_filter(x, torch.randn(4, 8, 8))
    with pytest.raises(ConvArgumentError, match=r"filter must be complex .* \(filters, \*grid, 2\)"):
        spectral_filter(x, torch.randn(4, 8, 8, 3))
    with pytest.raises(ConvArgumentError, match="filter must be complex"):
        spectral_filter(x, torch.ones(4, 8, 8, 2, dtype=torch.int64))
    with pytest.raises(ConvArgumentError, match="2 spatial dims to match filter"):
        spectral_filter(torch.randn(2, 4, 8), torch.randn(4, 8, 8, 2))
    with pytest.raises(ConvArgumentError, match="multiple"):
        spectral_filter(x, torch.randn(6, 8, 8, dtype=torch.complex64))
    with pytest.raises(ConvArgumentError, match="fit"):
        spectral_filter(x, torch.randn(4, 6, 6, dtype=torch.complex64))
    with pytest.raises(ConvArgumentError, match="within the grid"):
        spectral_filter(x, torch.randn(4, 8, 8, dtype=torch.complex64), out_start=(1, 0))
