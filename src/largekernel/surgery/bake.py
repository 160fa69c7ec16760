"""Baking: every learnable-kernel layer of a model becomes the plain convolution holding the kernel it builds.

The inverse of :func:`~largekernel.surgery.convert` for deployment: after :func:`bake` a model
contains only standard convolutions (``largekernel.nn.Conv{n}d`` with the layer's backend, or with
``native=True`` torch's own), so ``torch.export`` and ONNX see no kernel construction.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from largekernel.functional import ConvArgumentError
from largekernel.nn._base import KernelConvNd
from largekernel.nn.conv import Conv1d, Conv2d, Conv3d, _baked_conv, size_checked

_LIBRARY_CONVS = (Conv1d, Conv2d, Conv3d)

__all__ = ["bake"]


def _layer_input_sizes(model: nn.Module, layers: list[nn.Module], input_size: Sequence[int]) -> dict[int, tuple]:
    """Spatial size of the input each of ``layers`` sees when ``model`` runs on zeros of ``input_size``."""
    sizes: dict[int, tuple] = {}

    def record(module, args):
        size = tuple(args[0].shape[2:])
        if sizes.setdefault(id(module), size) != size:
            raise ConvArgumentError(f"{type(module).__name__} is applied to inputs of spatial sizes {sizes[id(module)]} "
                             f"and {size}; bake() needs a single input size per layer")

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    first = next(iter(model.parameters()), None)
    factory = {"device": first.device, "dtype": first.dtype} if first is not None else {}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            try:
                model(torch.zeros(tuple(input_size), **factory))
            except (RuntimeError, ValueError, TypeError, IndexError) as error:
                raise ConvArgumentError(
                    f"input_size {tuple(input_size)}: the model failed on an input of that shape ({error}); "
                    f"input_size is the shape of a whole model input, batch dimension included "
                    f"(e.g. (1, channels, height, width))") from error
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def bake(model: nn.Module, input_size: Sequence[int] | None = None, *, native: bool = False) -> nn.Module:
    """Replace every learnable-kernel layer of ``model`` by its ``bake()``: one convolution each, in place.

    Layers whose kernel does not depend on the input (DCLS, CKConv/FlexConv, the re-parameterised ones) bake
    on their own; those whose kernel does (NIFF, SGConv, S4D: ``input_dependent``) need ``input_size``, the
    shape of a whole model input *including the batch dimension* (e.g. ``(1, 3, 32, 32)``): the model runs once
    on zeros of that shape to learn the size each layer sees, and the baked layer refuses other sizes. The baked
    model gives the same output (to float rounding). ``native=True``: torch's own ``nn.Conv{n}d`` modules (for
    ONNX, TensorRT and other runtimes), the model's ``largekernel.nn.Conv{n}d`` too (``convert(..., "fft")``'s,
    say), else ``largekernel.nn.Conv{n}d`` with each layer's backend.

    Returns the baked ``model`` (or the baked layer when ``model`` itself is a learnable-kernel layer).
    """
    if not isinstance(model, nn.Module):
        raise ConvArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if input_size is not None and (isinstance(input_size, (str, bytes)) or not all(
            isinstance(s, int) and s > 0 for s in input_size)):
        raise ConvArgumentError(f"input_size must be a sequence of positive ints (batch, channels, *spatial), "
                                f"got {input_size!r}")
    if isinstance(model, KernelConvNd):
        if input_size is not None and model.input_dependent and len(input_size) != model._nd + 2:
            raise ConvArgumentError(f"input_size must be the shape of the layer's whole input (batch, channels, "
                                    f"*spatial): {model._nd + 2} ints for a {type(model).__name__}, got "
                                    f"{tuple(input_size)} (layer.bake() takes the spatial size alone)")
        size = None if input_size is None or not model.input_dependent else tuple(input_size)[2:]
        return model.bake(size, native=native)
    if native and type(model) in _LIBRARY_CONVS:
        return _native(model)
    layers = _outermost(model, lambda m: isinstance(m, KernelConvNd))
    sized = [m for _, _, _, m in layers if m.input_dependent]
    if sized and input_size is None:
        names = sorted({name for _, _, name, m in layers if m.input_dependent})
        raise ConvArgumentError(f"bake() needs input_size for layers whose kernel depends on the input size: {names}")
    sizes = _layer_input_sizes(model, sized, input_size) if sized else {}

    def baked(name: str, layer: KernelConvNd) -> nn.Module:
        if layer.input_dependent and id(layer) not in sizes:
            raise ConvArgumentError(f"layer {name!r} was not called by model.forward on an input of size "
                                    f"{tuple(input_size)}; cannot infer its input size")
        return layer.bake(sizes.get(id(layer)), native=native).train(layer.training)

    _replace(layers, baked)
    if native:  # the model's largekernel.nn.Conv{n}d too (convert(..., "conv" | "fft" | "dilated") put them there)
        _replace(_outermost(model, lambda m: type(m) in _LIBRARY_CONVS), lambda _, conv: _native(conv))
    return model


def _replace(found: list[tuple[nn.Module, str, str, nn.Module]], make: Callable[[str, nn.Module], nn.Module]) -> None:
    """Each module of ``found`` (:func:`_outermost`) replaced in its parent by ``make(name, module)``, made once
    for a module that several parents share."""
    done: dict[int, nn.Module] = {}
    for parent, attr, name, module in found:
        if id(module) not in done:
            done[id(module)] = make(name, module)
        setattr(parent, attr, done[id(module)])


def _native(conv: nn.Module) -> nn.Module:
    """torch's own convolution for a ``largekernel.nn.Conv{n}d``: the same weight, bias and arguments, with a
    padding module in front for per-side padding and a size check for a size a baked layer was limited to."""
    native = _baked_conv(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), conv.groups,
                         native=True, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                         padding_mode=conv.padding_mode)
    if conv.input_size is not None:
        native = size_checked(native, conv.input_size, conv.input_sizes)
    return native.train(conv.training)


def _outermost(model: nn.Module, match: Callable[[nn.Module], bool],
               prefix: str = "") -> list[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, attribute, dotted name, module) of every module below ``model`` that ``match`` takes, not looking
    inside those."""
    found = []
    for attr, child in model._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attr}" if prefix else attr
        if match(child):
            found.append((model, attr, name, child))
        else:
            found += _outermost(child, match, name)
    return found


