"""Convolution arguments: validated and normalised once, with errors that name the argument.

Every entry point of the engine (:func:`~largekernel.functional.convolve`,
:func:`~largekernel.functional.fft_conv`, the planner) goes through
:func:`conv_args`, which checks a call the way ``torch.nn.functional.conv{1,2,3}d``
does and turns ``stride`` / ``padding`` / ``dilation`` into per-dimension tuples,
``padding`` into ``(before, after)`` pairs per dimension. Besides torch's int,
tuple, ``"same"`` and ``"valid"``, ``padding`` takes per-side pairs,
``((before, after), ...)``: a causal 1-D convolution is ``padding=((k - 1, 0),)``.

Errors are :class:`ConvArgumentError`, a ``ValueError`` and ``TypeError`` that is
also a ``RuntimeError``: code written against torch's convolutions (which raise
``RuntimeError``) catches them too. Under ``torch.autocast``, :func:`autocast_operands`
casts the operands the way torch's own convolution does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ConvArgumentError", "ConvArgs", "PADDING_MODES", "conv_args", "ntuple", "per_side_padding",
           "autocast_operands", "autocast_dtype", "checked_input", "autocast_off", "flat_pads", "own_nodes",
           "conv_memory_format"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


class ConvArgumentError(ValueError, TypeError, RuntimeError):
    """A convolution argument is invalid; the message names it, the value received and what was expected.

    A ``ValueError`` and a ``TypeError`` (Python's conventions for bad values and types) and a
    ``RuntimeError`` (what torch's convolutions raise), so that any of those handlers catches it.
    """


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _traced_ints(value):
    """``value`` with its 0-dim integer tensors (what sizes are under ``torch.jit.trace``) as Python ints."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        return int(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_traced_ints(v) for v in value)
    return value


def ntuple(value, nd: int, name: str, minimum: int | None = None) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ``nd`` ints) as an ``nd``-tuple; each at least ``minimum`` if given."""
    if _is_int(value):
        values = (value,) * nd
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == nd and all(_is_int(v) for v in value):
        values = tuple(value)
    else:
        raise ConvArgumentError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    if minimum is not None and any(v < minimum for v in values):
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ConvArgumentError(f"{name} must be {what}, got {value!r}")
    return values


def per_side_padding(padding, kernel_size, dilation, nd: int) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` per dimension, as ``torch.nn.functional.convNd`` pads (plus per-side pairs)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            total = [d * (k - 1) for d, k in zip(ntuple(dilation, nd, "dilation"), kernel_size)]
            return tuple((t // 2, t - t // 2) for t in total)
        raise ConvArgumentError(f"padding must be an int, a tuple, per-side pairs, 'same' or 'valid', "
                                f"got {padding!r}")
    if (isinstance(padding, (tuple, list)) and len(padding) == nd
            and all(isinstance(p, (tuple, list)) for p in padding)):
        if not all(len(p) == 2 and all(_is_int(v) for v in p) for p in padding):
            raise ConvArgumentError(f"per-side padding must be {nd} (before, after) pairs of ints, got {padding!r}")
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    else:
        pads = tuple((p, p) for p in ntuple(padding, nd, "padding"))
    if any(v < 0 for pair in pads for v in pair):
        raise ConvArgumentError(f"padding must be non-negative, got {padding!r}")
    return pads


def flat_pads(pads) -> list[int]:
    """Per-dim (before, after) pairs -> the last-dim-first flat list ``F.pad`` takes."""
    return [p for lo_hi in reversed(pads) for p in lo_hi]


def _check_tensor_type(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise ConvArgumentError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_tensor(t, name: str) -> None:
    _check_tensor_type(t, name)
    if t.is_complex() or not t.is_floating_point():
        raise ConvArgumentError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")


def _check_dtype_of_input(t: Tensor, name: str, input: Tensor) -> None:
    if t.dtype != input.dtype:
        raise ConvArgumentError(f"{name} dtype must match input dtype {input.dtype}, got {t.dtype}")


def complex_operands(input, weight, bias=None) -> bool:
    """Whether a call's operands are complex: a complex convolution, as torch's convolutions compute one
    (:func:`complex_convolution`), all of them of the input's dtype then (:class:`ConvArgumentError` otherwise,
    naming the one that is not)."""
    if not ((isinstance(input, Tensor) and input.is_complex()) or (isinstance(weight, Tensor) and weight.is_complex())
            or (isinstance(bias, Tensor) and bias.is_complex())):
        return False
    for t, name in ((input, "input"), (weight, "weight"), (bias, "bias")):
        if name != "bias" or t is not None:
            _check_tensor_type(t, name)
            _check_dtype_of_input(t, name, input)
    return True


def real_parts(input: Tensor, weight: Tensor, bias: Tensor | None):
    """The operands' real parts where they are complex (what a plan reads: their shapes, device and a real dtype),
    else the operands."""
    if not complex_operands(input, weight, bias):
        return input, weight, bias
    return input.real, weight.real, None if bias is None else bias.real


def complex_convolution(conv, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A convolution of complex operands as torch computes it (ATen's ``complex_convolution``): ``conv`` (a real
    convolution ``conv(input, weight, bias)`` with the call's other arguments) on their real and imaginary parts,
    three times (Gauss's trick): ``real = conv(xr, wr, br)``, ``imag = conv(xi, wi, None)``,
    ``mixed = conv(xr + xi, wr + wi, br + bi)``; the output is ``(real - imag) + i (mixed - real - imag)``, laid out
    as torch lays out a convolution's output (:func:`conv_memory_format`). Every step is a differentiable torch
    operation, so gradients of every order follow (Wirtinger calculus, as torch's); a sample's parts reach only that
    sample's output."""
    x, w = input.resolve_conj(), weight.resolve_conj()
    b = None if bias is None else bias.resolve_conj()
    with autocast_off(input.device.type):  # (torch.autocast casts no complex tensor, nor their parts)
        real = conv(x.real, w.real, None if b is None else b.real)
        imag = conv(x.imag, w.imag, None)
        mixed = conv(x.real + x.imag, w.real + w.imag, None if b is None else b.real + b.imag)
    out = torch.complex(real - imag, mixed - real - imag)
    return out.contiguous(memory_format=conv_memory_format(input))


def autocast_operands(input: Tensor, weight: Tensor, bias: Tensor | None):
    """Under ``torch.autocast`` for the input's device, the operands cast to the autocast dtype, as torch's
    convolutions are (float64 tensors are left alone, as torch leaves them); otherwise unchanged."""
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        return input, weight, bias
    device = input.device.type
    if device not in ("cpu", "cuda", "xpu", "mps") or not torch.is_autocast_enabled(device):
        return input, weight, bias

    def cast(t):
        if isinstance(t, Tensor) and t.is_floating_point():
            dtype = autocast_dtype(t.dtype, device)
            return t if dtype == t.dtype else t.to(dtype)
        return t

    return cast(input), cast(weight), cast(bias)


def autocast_dtype(dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The dtype ``torch.autocast`` gives a floating-point convolution operand of ``dtype`` on ``device_type``: the
    autocast dtype where autocast is on for that device (float64 left alone, as torch leaves it), else ``dtype``."""
    if device_type not in ("cpu", "cuda", "xpu", "mps") or not torch.is_autocast_enabled(device_type) \
            or dtype == torch.float64:
        return dtype
    return torch.get_autocast_dtype(device_type)


def checked_input(layer, input: Tensor, dtype: torch.dtype) -> Tensor:
    """``input`` as a convolution layer whose parameters are ``dtype`` takes it, for ``layer``s whose computation
    does not meet torch's own check (``torch.nn.Conv2d`` raises a ``RuntimeError``): its dtype must be the
    parameters', under ``torch.autocast`` as autocast casts both (:func:`autocast_dtype`), else
    :class:`ConvArgumentError` naming both; returned in the autocast dtype under autocast (as torch's
    convolutions take it), unchanged otherwise."""
    device = input.device.type
    if autocast_dtype(input.dtype, device) != autocast_dtype(dtype, device):
        raise ConvArgumentError(f"input dtype must match {type(layer).__name__}'s parameters' dtype {dtype} (as "
                                f"torch's convolutions require; under torch.autocast, as autocast casts them), got "
                                f"{input.dtype}")
    return input.to(autocast_dtype(input.dtype, device))


def autocast_off(device_type: str):
    """A context that switches autocast off for ``device_type`` where it is on (nothing otherwise: traced programs
    stay free of autocast regions): the FFT paths choose their own precision."""
    if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def conv_memory_format(x: Tensor) -> torch.memory_format:
    """torch's rule for a convolution's output (and input gradient): channels_last when the input is (and not
    trivially so)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def own_nodes(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Each tensor as a view of itself, a node of its own in the autograd graph (None stays None).

    A backward that builds a graph of itself (``create_graph=True``) recomputes its Function's forward and asks
    ``torch.autograd.grad`` for the gradient of each input. Asked for the saved inputs themselves, autograd gives
    the total derivative, and where one input is computed from another (S4D's coefficients from its poles, a
    kernel made from the input) the earlier input's gradient includes the path through the later one, which the
    engine then adds a second time. Asked for these views, each gradient is the partial one the Function owes,
    and it stays differentiable in the inputs through them."""
    return tuple(None if t is None else t.view_as(t) for t in tensors)


@dataclass(frozen=True)
class ConvArgs:
    """A validated convolution call: dims, whether batched, and every argument as per-dimension tuples."""

    nd: int
    batched: bool
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    groups: int
    padding_mode: str

    def output_size(self, size, kernel) -> tuple[int, ...]:
        """Outputs per spatial dim for an input of ``size`` and a kernel of ``kernel`` taps."""
        return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                     for n, k, (lo, hi), s, d in zip(size, kernel, self.pads, self.stride, self.dilation))


def conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
              padding_mode="zeros") -> ConvArgs:
    """Validate a call like ``torch.nn.functional.convNd`` (dimension from ``weight``), with errors that name
    the argument; :class:`ConvArgumentError` on any problem."""
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if torch.jit.is_tracing():  # sizes read there are 0-dim tensors; the trace holds them as constants
        padding = _traced_ints(padding)
    if weight.dim() not in (3, 4, 5):
        raise ConvArgumentError(f"weight must have shape (out_channels, in_channels/groups, *kernel) with 1 to 3 "
                                f"kernel dims, got shape {tuple(weight.shape)}")
    nd = weight.dim() - 2
    if input.dim() not in (nd + 1, nd + 2):
        raise ConvArgumentError(f"input must have shape (batch, channels, *spatial) or (channels, *spatial) with "
                                f"{nd} spatial dims to match the {nd}-D kernel, got shape {tuple(input.shape)}")
    _check_dtype_of_input(weight, "weight", input)
    if input.device != weight.device:
        raise ConvArgumentError(f"weight must be on the input's device {input.device}, got {weight.device}")
    if not _is_int(groups) or groups < 1:
        raise ConvArgumentError(f"groups must be a positive int, got {groups!r}")
    if any(n == 0 for n in input.shape[-nd:]):
        raise ConvArgumentError(f"input must have a non-zero size in every spatial dim (as torch's convolutions), "
                                f"got shape {tuple(input.shape)}")
    cin = input.shape[-nd - 1]
    cout, cin_per_group = weight.shape[:2]
    if cout == 0 or cin_per_group == 0:
        raise ConvArgumentError(f"weight must have non-zero out_channels and in_channels/groups, got shape "
                                f"{tuple(weight.shape)}")
    if any(k == 0 for k in weight.shape[2:]):
        raise ConvArgumentError(f"weight must have a non-zero kernel size in every dim, got shape "
                                f"{tuple(weight.shape)}")
    if cout % groups:
        raise ConvArgumentError(f"groups must divide out_channels={cout} (weight.shape[0]), got groups={groups}")
    if cin % groups:
        raise ConvArgumentError(f"groups must divide in_channels={cin} (input channels), got groups={groups}")
    if cin_per_group * groups != cin:
        raise ConvArgumentError(f"input must have weight.shape[1] * groups = {cin_per_group * groups} channels, "
                                f"got {cin} (input shape {tuple(input.shape)})")
    if bias is not None:
        _check_tensor(bias, "bias")
        if tuple(bias.shape) != (cout,):
            raise ConvArgumentError(f"bias must have shape ({cout},) = (out_channels,), got {tuple(bias.shape)}")
        _check_dtype_of_input(bias, "bias", input)
        if bias.device != input.device:
            raise ConvArgumentError(f"bias must be on the input's device {input.device}, got {bias.device}")
    stride = ntuple(stride, nd, "stride", minimum=1)
    dilation = ntuple(dilation, nd, "dilation", minimum=1)
    if padding_mode not in PADDING_MODES:
        raise ConvArgumentError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if isinstance(padding, str) and padding == "same" and any(s != 1 for s in stride):
        raise ConvArgumentError(f"padding='same' requires stride 1 (as in torch), got stride={stride}")
    kernel = tuple(weight.shape[2:])
    pads = per_side_padding(padding, kernel, dilation, nd)
    sizes = tuple(input.shape[-nd:])
    for i, ((lo, hi), n, k, d) in enumerate(zip(pads, sizes, kernel, dilation)):
        if padding_mode == "reflect" and max(lo, hi) >= n:
            raise ConvArgumentError(f"padding must be smaller than the input size {n} in dim {i} for "
                                    f"padding_mode='reflect', got {(lo, hi)}")
        if padding_mode == "circular" and max(lo, hi) > n:
            raise ConvArgumentError(f"padding must be at most the input size {n} in dim {i} for "
                                    f"padding_mode='circular', got {(lo, hi)}")
        if d * (k - 1) + 1 > n + lo + hi:
            raise ConvArgumentError(f"weight's dilated kernel size {d * (k - 1) + 1} in dim {i} must not exceed the "
                                    f"padded input size {n + lo + hi} (input {n} + padding {(lo, hi)})")
    return ConvArgs(nd, input.dim() == nd + 2, stride, dilation, pads, groups, padding_mode)
