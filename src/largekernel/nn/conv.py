"""Drop-in ``torch.nn.Conv1d/2d/3d`` with a ``backend`` choice (direct, FFT or auto).

The state_dict is torch's own: a ``torch.nn.ConvNd`` checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from largekernel.functional.engine import BACKENDS, convolve

__all__ = ["Conv1d", "Conv2d", "Conv3d"]


class _BackendConvMixin:
    """Routes ``_conv_forward`` through the convolution engine."""

    def _init_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
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
    """``torch.nn.Conv1d`` plus keyword ``backend="auto" | "direct" | "fft"``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


class Conv2d(_BackendConvMixin, nn.Conv2d):
    """``torch.nn.Conv2d`` plus keyword ``backend="auto" | "direct" | "fft"``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)


class Conv3d(_BackendConvMixin, nn.Conv3d):
    """``torch.nn.Conv3d`` plus keyword ``backend="auto" | "direct" | "fft"``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_backend(backend)
