"""Drop-in ``torch.nn.Conv1d/2d/3d`` with a ``backend`` choice (direct, FFT or auto).

Seed 003 (FFT for vision): large kernels are cheaper in the frequency domain; the
engine (:func:`largekernel.functional.convolve`) picks the path per call shape.
The state_dict is torch's own: a ``torch.nn.ConvNd`` checkpoint loads unchanged,
and these modules' checkpoints load into ``torch.nn.ConvNd``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from largekernel.functional._args import ConvArgumentError, flat_pads, ntuple, per_side_padding
from largekernel.functional.engine import BACKENDS, convolve
from largekernel.functional._fx import leaf_under_fx, own_leaf_forward
from largekernel.functional._tracing import NotScriptable

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

_DOC = """``torch.nn.Conv{n}d`` (same arguments, defaults and state_dict) plus keyword ``backend``.

    Args:
        padding: as torch's (an int, a tuple, ``"same"``, ``"valid"``) or per side,
            ``((before, after), ...)`` (e.g. causal: ``((kernel_size - 1, 0),)``).
        backend: ``"auto"`` (the path the planner predicts faster for each input
            shape), ``"direct"`` (torch's convolution) or ``"fft"``
            (:func:`largekernel.functional.fft_conv`).
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


class _BackendConvMixin(NotScriptable):
    """Adds ``backend`` and routes ``_conv_forward`` through the convolution engine; the rest is torch's ConvNd."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own_leaf_forward(cls)  # Conv1d, Conv2d and Conv3d: a forward each, as torch's (torch.compile counts per code)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ConvArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
        nd = self._nd
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            ntuple(value, 1, name, minimum=1)
        ntuple(kernel_size, nd, "kernel_size", minimum=1)
        ntuple(stride, nd, "stride", minimum=1)
        ntuple(dilation, nd, "dilation", minimum=1)
        per_side = (isinstance(padding, (tuple, list)) and len(padding) == nd
                    and all(isinstance(p, (tuple, list)) for p in padding))
        if per_side:
            pads = per_side_padding(padding, ntuple(kernel_size, nd, "kernel_size"), dilation, nd)
            symmetric = all(lo == hi for lo, hi in pads)
            padding = tuple(lo for lo, _ in pads) if symmetric else pads
        # torch.nn.Conv1d/2d/3d share this signature; the MRO sends it to the right one
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if per_side and not symmetric else padding,
                         dilation, groups, bias, padding_mode, device, dtype)
        if per_side and not symmetric:
            self.padding = pads  # per side: applied by the engine
            self._reversed_padding_repeated_twice = flat_pads(pads)
        self.backend = backend

    #: Set by ``bake()`` of a layer whose kernel depends on the input size: the spatial size it was baked for, and
    #: whether it serves ``"exact"``ly that size or any size ``"up to"`` it.
    input_size: tuple[int, ...] | None = None
    input_sizes: str = "exact"

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.input_size is not None:
            refuse_other_sizes(f"this {type(self).__name__}", input, self.input_size, self.input_sizes)
        return convolve(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        self.padding_mode, backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s = s if self.backend == "auto" else f"{s}, backend={self.backend!r}"
        return s if self.input_size is None else f"{s}, input_size={self.input_sizes} {self.input_size}"

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")


class Conv1d(_BackendConvMixin, nn.Conv1d):
    _nd = 1
    __doc__ = _DOC.format(n=1, example="", dims="L_{in}", outs="L_{out}")


class Conv2d(_BackendConvMixin, nn.Conv2d):
    _nd = 2
    __doc__ = _DOC.format(n=2, example=_EXAMPLE_2D, dims="H_{in}, W_{in}", outs="H_{out}, W_{out}")


class Conv3d(_BackendConvMixin, nn.Conv3d):
    _nd = 3
    __doc__ = _DOC.format(n=3, example="", dims="D_{in}, H_{in}, W_{in}", outs="D_{out}, H_{out}, W_{out}")


def _baked_conv(weight: Tensor, bias: Tensor | None, groups: int = 1, native: bool = False, **kwargs) -> nn.Module:
    """A ``Conv{n}d`` holding ``weight`` (torch conv layout) and ``bias``, the end of every layer's ``bake()``.

    Channels, kernel size, device and dtype come from ``weight`` (``in = weight.shape[1] * groups``);
    ``kwargs`` are the remaining constructor arguments (stride, padding, per side too, padding_mode, backend).
    ``native``: torch's own ``nn.Conv{n}d`` instead of this module's (then no ``backend``; asymmetric padding
    becomes a padding module in front of it, in an ``nn.Sequential``).
    """
    nd = weight.dim() - 2
    pad = None
    if native:
        cls = getattr(nn, f"Conv{nd}d")
        padding = kwargs.get("padding", 0)
        if isinstance(padding, (tuple, list)) and padding and isinstance(padding[0], (tuple, list)):
            pads = tuple(tuple(p) for p in padding)
            if all(lo == hi for lo, hi in pads):
                kwargs["padding"] = tuple(lo for lo, _ in pads)
            else:
                mode = kwargs.pop("padding_mode", "zeros")
                pad = _Pad(flat_pads(pads), mode)
                kwargs["padding"] = 0
    else:
        cls = (Conv1d, Conv2d, Conv3d)[nd - 1]
    conv = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), groups=groups,
               bias=bias is not None, device=weight.device, dtype=weight.dtype, **kwargs)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv if pad is None else nn.Sequential(pad, conv)


def refuse_other_sizes(what: str, input: Tensor, size: tuple[int, ...], sizes: str) -> None:
    """Raise unless ``input``'s spatial size is ``size`` (``sizes="exact"``) or at most ``size`` (``"up to"``): a
    kernel baked from a layer whose kernel depends on the input size serves those sizes only."""
    got = tuple(input.shape[-len(size):])
    if not (got == tuple(size) if sizes == "exact" else all(n <= m for n, m in zip(got, size))):
        raise ConvArgumentError(f"{what} was baked from a layer whose kernel depends on the input size, for inputs "
                                f"of spatial size {sizes} {tuple(size)}; got input of shape {tuple(input.shape)} "
                                f"(bake again for that size)")


class InputSizeCheck(NotScriptable, nn.Module):
    """Passes its input on where :func:`refuse_other_sizes` lets it: put by ``bake(native=True)`` in front of the
    torch convolution baked from a layer whose kernel depends on the input size (torch's cannot check)."""

    def __init__(self, size: tuple[int, ...], sizes: str = "exact") -> None:
        super().__init__()
        self.size, self.sizes = tuple(size), sizes

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        refuse_other_sizes("this convolution", input, self.size, self.sizes)
        return input

    def extra_repr(self) -> str:
        return f"{self.sizes} {self.size}"


def size_checked(conv: nn.Module, size: tuple[int, ...], sizes: str = "exact") -> nn.Module:
    """``conv`` (torch's convolution, or an ``nn.Sequential`` ending in one) behind an :class:`InputSizeCheck`, in
    one ``nn.Sequential``."""
    return nn.Sequential(InputSizeCheck(size, sizes), *(conv if isinstance(conv, nn.Sequential) else [conv]))


class _Pad(nn.Module):
    """``F.pad`` as a module (per-side padding in front of a plain torch convolution)."""

    def __init__(self, pad: list[int], mode: str) -> None:
        super().__init__()
        self.pad, self.mode = tuple(pad), "constant" if mode == "zeros" else mode

    def forward(self, input: Tensor) -> Tensor:
        return torch.nn.functional.pad(input, self.pad, mode=self.mode)

    def extra_repr(self) -> str:
        return f"{self.pad}, mode={self.mode!r}"
