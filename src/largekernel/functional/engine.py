"""The convolution engine: apply an already-built kernel by the direct or the FFT path.

Every layer family (dense, DCLS, FlexConv, ...) builds its kernel and then calls
:func:`convolve`; choosing the path per call shape is done here, in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from largekernel.functional.fft_conv import fft_conv

__all__ = ["convolve", "BACKENDS"]

BACKENDS = ("auto", "direct", "fft")

_DIRECT = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _direct(input, weight, bias, stride, padding, dilation, groups, padding_mode):
    nd = weight.dim() - 2
    if padding_mode != "zeros":
        from largekernel.functional.fft_conv import _explicit_padding

        pads = _explicit_padding(padding, weight.shape[2:], dilation, nd)
        input = F.pad(input, [p for lo_hi in reversed(pads) for p in lo_hi], mode=padding_mode)
        padding = 0
    return _DIRECT[nd](input, weight, bias, stride, padding, dilation, groups)


def convolve(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "auto",
) -> Tensor:
    """Cross-correlate ``input`` with an already-built ``weight`` (torch.nn.functional.convNd semantics).

    ``backend``: ``"direct"`` (cuDNN / oneDNN), ``"fft"`` (:func:`fft_conv`) or
    ``"auto"`` (the faster of the two for this call shape).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "fft":
        return fft_conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return _direct(input, weight, bias, stride, padding, dilation, groups, padding_mode)
