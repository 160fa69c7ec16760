"""FourierMix (FNet) against the DFT written as a matrix product."""

import math

import pytest
import torch

from largekernel.nn import FourierMix
from largekernel.nn.mixing import fourier_mix


def _dft_matrix(n):
    k = torch.arange(n, dtype=torch.float64)
    angle = -2 * math.pi * torch.outer(k, k) / n
    return torch.complex(torch.cos(angle), torch.sin(angle))


@pytest.mark.parametrize("shape", [(2, 5, 6), (3, 7, 4), (1, 1, 1), (2, 3, 9, 8), (2, 8, 7), (1, 2, 2), (3, 1, 5), (3, 5, 1)])
def test_equals_real_part_of_two_dfts(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    n, d = shape[-2:]
    # Re(F_N X F_D): DFT along the hidden axis, then along the token axis
    expected = (_dft_matrix(n) @ x.to(torch.complex128) @ _dft_matrix(d).T).real
    torch.testing.assert_close(FourierMix()(x), expected)


def test_custom_axes():
    x = torch.randn(4, 3, 5, dtype=torch.float64)  # (tokens, batch, hidden)
    expected = (_dft_matrix(4) @ x.transpose(0, 1).to(torch.complex128) @ _dft_matrix(5).T).real.transpose(0, 1)
    torch.testing.assert_close(FourierMix(token_dim=0, hidden_dim=-1)(x), expected)
    torch.testing.assert_close(fourier_mix(x, 0, -1), expected)


def test_hidden_axis_before_token_axis():
    x = torch.randn(2, 6, 5, dtype=torch.float64)  # (batch, hidden, tokens)
    expected = (_dft_matrix(6) @ x.to(torch.complex128) @ _dft_matrix(5).T).real
    torch.testing.assert_close(FourierMix(token_dim=-1, hidden_dim=-2)(x), expected)


def test_complex_and_half_precision_inputs():
    x = torch.randn(2, 4, 6, dtype=torch.complex128)
    expected = (_dft_matrix(4) @ x @ _dft_matrix(6).T).real
    torch.testing.assert_close(fourier_mix(x), expected)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    expected = (_dft_matrix(4) @ x.to(torch.complex128) @ _dft_matrix(6).T).real
    for dtype in (torch.float16, torch.bfloat16):
        y = fourier_mix(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), expected, rtol=2e-2, atol=5e-2)


def test_second_derivatives():
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(FourierMix(), (x,))


def test_a_sample_never_affects_another():
    x = torch.randn(3, 6, 5, requires_grad=True)
    clean = FourierMix()(x)
    poisoned = x.detach().clone()
    poisoned[1, 2, 3] = float("nan")
    poisoned.requires_grad_(True)
    y = FourierMix()(poisoned)
    torch.testing.assert_close(y[[0, 2]], clean[[0, 2]])
    y.square().sum().backward()  # the gradient depends on y: NaN in sample 1's only
    assert torch.isfinite(poisoned.grad[[0, 2]]).all() and torch.isnan(poisoned.grad[1]).any()


def test_has_no_parameters_and_keeps_dtype_and_gradients():
    mix = FourierMix()
    assert not list(mix.parameters())
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    assert mix(x).dtype == torch.float64
    assert torch.autograd.gradcheck(mix, (x,), fast_mode=True)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 dims"):
        FourierMix()(torch.randn(5))
    with pytest.raises(ValueError, match="must differ"):
        FourierMix(token_dim=-1, hidden_dim=-1)


def test_exports_to_onnx(run_onnx):
    """The exported graph (ONNX DFT nodes), run by ONNX Runtime, against the DFT matrices."""
    x = torch.randn(2, 16, 8)
    out = run_onnx(FourierMix().eval(), x)
    expected = (_dft_matrix(16) @ x.to(torch.complex128) @ _dft_matrix(8).T).real
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
