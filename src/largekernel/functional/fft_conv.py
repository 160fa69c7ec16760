"""FFT convolution with the exact semantics of ``torch.nn.functional.conv{1,2,3}d``.

Seed 003 (FFT for vision): a cross-correlation computed as a product of real
spectra, so that its cost does not grow with the kernel size.

First, correct version; the fast one (length choice, custom autograd, stride and
dilation tricks) replaces its internals without changing the signature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fft_conv", "PADDING_MODES"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def _tuple(value, nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(value)
    if len(value) != nd:
        raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    return value


def _explicit_padding(padding, kernel_size, dilation, nd: int) -> list[tuple[int, int]]:
    """Per-dimension (before, after) zero/mode padding, as torch.nn.functional.convNd applies it."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding == "same":
            dilation = _tuple(dilation, nd, "dilation")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            return [(t // 2, t - t // 2) for t in total]
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    return [(p, p) for p in _tuple(padding, nd, "padding")]


def fft_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """Same result as ``torch.nn.functional.conv{1,2,3}d`` (dimension from ``input.dim()``)."""
    nd = input.dim() - 2
    stride = _tuple(stride, nd, "stride")
    dilation = _tuple(dilation, nd, "dilation")
    kernel_size = tuple(weight.shape[2:])
    pads = _explicit_padding(padding, kernel_size, dilation, nd)
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    if any(flat):
        mode = "constant" if padding_mode == "zeros" else padding_mode
        input = F.pad(input, flat, mode=mode)

    if any(d > 1 for d in dilation):
        dilated = [d * (k - 1) + 1 for d, k in zip(dilation, kernel_size)]
        stuffed = weight.new_zeros(*weight.shape[:2], *dilated)
        stuffed[(slice(None), slice(None)) + tuple(slice(None, None, d) for d in dilation)] = weight
        weight = stuffed
    sizes = tuple(input.shape[2:])
    dims = tuple(range(2, 2 + nd))
    # A circular correlation of length n >= L has no wrap-around on the valid outputs.
    x_f = torch.fft.rfftn(input, s=sizes, dim=dims)  # (B, Cin, *F) complex
    w_f = torch.fft.rfftn(weight, s=sizes, dim=dims)  # (Cout, Cin/g, *F) complex
    b, cin = input.shape[:2]
    cout = weight.shape[0]
    spectrum_shape = x_f.shape[2:]
    x_f = x_f.reshape(b, groups, cin // groups, -1)  # (B, G, Cin/G, F)
    w_f = w_f.reshape(groups, cout // groups, cin // groups, -1)  # (G, Cout/G, Cin/G, F)
    y_f = torch.einsum("bgif,goif->bgof", x_f, w_f.conj()).reshape(b, cout, *spectrum_shape)
    y = torch.fft.irfftn(y_f, s=sizes, dim=dims)  # (B, Cout, *sizes)
    valid = tuple(slice(0, n - (d * (k - 1) + 1) + 1, s) for n, k, d, s in zip(sizes, kernel_size, dilation, stride))
    y = y[(slice(None), slice(None)) + valid]
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * nd))
    return y
