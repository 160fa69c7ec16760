"""Fourier token mixing: FNet (Lee-Thorp et al., "FNet: Mixing Tokens with Fourier Transforms", NAACL 2022)
as used by the Fourier image transformer FiT (seed 003, section 2.2).

``FourierMix(x) = Re(FFT_tokens(FFT_hidden(x)))``: a parameter-free replacement
for self-attention that mixes every token with every other in ``O(N log N)``.

The transform itself is :func:`largekernel.functional.fourier_mix`.
"""

from __future__ import annotations

from torch import Tensor, nn

from largekernel.functional.spectral import fourier_mix
from largekernel.functional._fx import leaf_under_fx
from largekernel.functional._tracing import NotScriptable

__all__ = ["FourierMix", "fourier_mix"]


class FourierMix(NotScriptable, nn.Module):
    """FNet's Fourier sublayer: ``Re(FFT2(x))`` over the token and hidden dimensions. No parameters.

    Args:
        token_dim: the sequence (token) axis, default ``-2``.
        hidden_dim: the feature axis, default ``-1``.

    Shape:
        - Input: ``(*, N, D)`` (with the default axes).
        - Output: same shape.
    """

    def __init__(self, token_dim: int = -2, hidden_dim: int = -1) -> None:
        super().__init__()
        if token_dim == hidden_dim:
            raise ValueError(f"token_dim and hidden_dim must differ, got {token_dim} for both")
        self.token_dim, self.hidden_dim = token_dim, hidden_dim

    @leaf_under_fx
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"FourierMix expects at least 2 dims (tokens, hidden), got shape {tuple(x.shape)}")
        return fourier_mix(x, self.token_dim, self.hidden_dim)

    def extra_repr(self) -> str:
        if (self.token_dim, self.hidden_dim) == (-2, -1):
            return ""
        return f"token_dim={self.token_dim}, hidden_dim={self.hidden_dim}"
