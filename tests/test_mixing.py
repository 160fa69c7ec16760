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


@pytest.mark.parametrize("shape", [(2, 5, 6), (3, 7, 4), (1, 1, 1), (2, 3, 9, 8)])
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
