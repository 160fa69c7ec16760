"""Drop-in ``torch.nn.Conv1d/2d/3d`` with a ``backend`` choice (direct, FFT or auto).

Seed 003 (FFT for vision): large kernels are cheaper in the frequency domain; the
engine (:func:`largekernel.functional.convolve`) picks the path per call shape.
The state_dict is torch's own: a ``torch.nn.ConvNd`` checkpoint loads unchanged,
and these modules' checkpoints load into ``torch.nn.ConvNd``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from largekernel.functional.engine import BACKENDS, convolve

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

_DOC = """``torch.nn.Conv{n}d`` (same arguments, defaults and state_dict) plus keyword ``backend``.

    Args:
        backend: ``"auto"`` (the faster of direct and FFT for each input shape,
            calibrated once per shape), ``"direct"`` (torch's convolution) or
            ``"fft"`` (:func:`largekernel.functional.fft_conv`).
{example}
    Shape:
        - Input: :math:`(N, C_{{in}}, {dims})` or :math:`(C_{{in}}, {dims})`
        - Output: :math:`(N, C_{{out}}, {outs})` or :math:`(C_{{out}}, {outs})`, where for each
          spatial dim ``out = floor((in + pad_before + pad_after - dilation * (kernel_size - 1) - 1)
          / stride) + 1`` (``pad_before = pad_after = padding`` for an int, torch's split for "same").
"""

_EXAMPLE_2D = """
    Example:
        >>> conv = Conv2d(96, 96, 31, padding="same", groups=96, backend="fft")
        >>> conv(torch.randn(2, 96, 56, 56)).shape
        torch.Size([2, 96, 56, 56])
"""


class _BackendConvMixin:
    """Adds ``backend`` and routes ``_conv_forward`` through the convolution engine; the rest is torch's ConvNd."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        # torch.nn.Conv1d/2d/3d share this signature; the MRO sends it to the right one
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = backend

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return convolve(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        self.padding_mode, backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")


class Conv1d(_BackendConvMixin, nn.Conv1d):
    __doc__ = _DOC.format(n=1, example="", dims="L_{in}", outs="L_{out}")


class Conv2d(_BackendConvMixin, nn.Conv2d):
    __doc__ = _DOC.format(n=2, example=_EXAMPLE_2D, dims="H_{in}, W_{in}", outs="H_{out}, W_{out}")


class Conv3d(_BackendConvMixin, nn.Conv3d):
    __doc__ = _DOC.format(n=3, example="", dims="D_{in}, H_{in}, W_{in}", outs="D_{out}, H_{out}, W_{out}")


def _baked_conv(weight: Tensor, bias: Tensor | None, groups: int = 1, native: bool = False, **kwargs) -> nn.Module:
    """A ``Conv{n}d`` holding ``weight`` (torch conv layout) and ``bias``, the end of every layer's ``bake()``.

    Channels, kernel size, device and dtype come from ``weight`` (``in = weight.shape[1] * groups``);
    ``kwargs`` are the remaining constructor arguments (stride, padding, padding_mode, backend).
    ``native``: torch's own ``nn.Conv{n}d`` instead of this module's (then no ``backend``).
    """
    nd = weight.dim() - 2
    cls = getattr(nn, f"Conv{nd}d") if native else (Conv1d, Conv2d, Conv3d)[nd - 1]
    conv = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), groups=groups,
               bias=bias is not None, device=weight.device, dtype=weight.dtype, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv
