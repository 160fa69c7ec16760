"""Model surgery: swap a network's convolutions for a large-kernel family, and bake them back for deployment.

The seed papers' central experiment (DCLS, Khalfaoui-Hassani et al. 2023;
FlexConv, Romero et al. 2022; NIFF, Grabinski et al. 2023) replaces the
(depthwise) convolutions of a known architecture by their method, at the same
parameter count, and compares. :func:`convert` does that on any ``nn.Module``;
:func:`bake` is the inverse for deployment: every learnable-kernel layer becomes
the plain convolution holding the kernel it builds. ``main(argv)`` is
``largekernel convert``.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import inspect
import json
import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel._argparse import ArgumentParser
from largekernel.models.layers import CONV_TYPES, create_conv, same_padding

__all__ = ["convert", "bake", "load_dense", "ConvertReport", "ReplacedLayer", "SkippedLayer", "DenseLoadReport",
           "DynamicSamePad", "is_depthwise_spatial", "main"]

_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# The option iso_params tunes, per family (DCLS: elements per kernel; kernel nets: hidden width).
_ISO_KNOBS = {"dcls": "kernel_count", "flexconv": "hidden_channels", "ckconv": "hidden_channels"}
_MAX_HIDDEN = 1 << 14


@dataclass
class ReplacedLayer:
    """One replaced module: its qualified name, ``repr`` before and after, and parameter counts."""

    name: str
    before: str
    after: str
    params_before: int
    params_after: int


@dataclass
class SkippedLayer:
    """A convolution ``which`` selected but :func:`convert` left as it was, and why."""

    name: str
    reason: str


@dataclass
class ConvertReport:
    """What :func:`convert` did: the layers replaced, those skipped and why, the parameter counts."""

    to: str
    replaced: list[ReplacedLayer] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    # Spatial convolutions of the model that ``which`` did not select (the default selects depthwise ones).
    not_selected: int = 0

    def __str__(self) -> str:
        lines = [f"converted {len(self.replaced)} layer(s) to {self.to!r}: parameters {self.params_before:,} -> "
                 f"{self.params_after:,} ({_ratio(self.params_after, self.params_before)})"]
        lines += [f"  {r.name}: {r.before} -> {r.after} ({r.params_before:,} -> {r.params_after:,} params)"
                  for r in self.replaced]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} selected layer(s):")
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped]
        if not self.replaced and not self.skipped:
            lines.append(_NOTHING_SELECTED.format(n=self.not_selected))
        return "\n".join(lines)


_NOTHING_SELECTED = ("no convolution was selected: which=None selects the depthwise spatial convolutions "
                     "(groups == in_channels == out_channels, kernel > 1) and the model has none; it has {n} other "
                     "spatial convolution(s), which='*' selects them all, or pass a name pattern or a callable")


def _ratio(after: int, before: int) -> str:
    return f"{after / before - 1:+.2%}" if before else "n/a"


def _num_params(module: nn.Module) -> int:
    # parameters() yields a shared tensor once, as the optimizer sees it.
    return sum(p.numel() for p in module.parameters())


def is_depthwise_spatial(module: nn.Module) -> bool:
    """True for a ``torch.nn.Conv{1,2,3}d`` (or subclass) with ``groups == in_channels == out_channels``
    and a kernel larger than 1 in some dimension: :func:`convert`'s default target."""
    return (isinstance(module, _TORCH_CONVS) and module.groups == module.in_channels == module.out_channels
            and max(module.kernel_size) > 1)


def _is_spatial(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_CONVS) and max(module.kernel_size) > 1


def _predicate(which) -> Callable[[str, nn.Module], bool]:
    if which is None:
        return lambda name, module: is_depthwise_spatial(module)
    if isinstance(which, str):
        return lambda name, module: _is_spatial(module) and fnmatch.fnmatchcase(name, which)
    if callable(which):
        return lambda name, module: isinstance(module, _TORCH_CONVS) and bool(which(name, module))
    raise TypeError(f"which must be None, a module-name pattern (str) or a callable (name, module) -> bool, "
                    f"got {type(which).__name__}")


def _references(model: nn.Module, prefix: str = ""):
    """Every (parent, attribute, qualified name, child), shared children included once per reference."""
    # _modules, not named_children(): the latter skips a second attribute holding the same module.
    for attr, child in model._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attr}" if prefix else attr
        yield model, attr, name, child
        yield from _references(child, name)


# Families whose kernel has a fixed extent once built, so TF "SAME" padding can be computed outside the layer.
_FIXED_EXTENT = ("conv", "fft", "dilated", "dcls", "ckconv")
# Families that take the original's dilation (their kernel_size counts taps, as torch's does); the others
# span the original's dilated extent with their own grid.
_KEEPS_DILATION = ("conv", "fft", "dcls")
_NO_PADDING_MODE = ("sgconv", "s4d")
# Methods by which timm's reparameterize_model fuses a block: convolutions inside must stay torch convolutions.
_FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


class DynamicSamePad(nn.Module):
    """TensorFlow's "SAME" padding, computed from each input's size, as timm's ``Conv2dSame`` does.

    For a kernel of extent ``e`` (``dilation * (kernel_size - 1) + 1``) and stride ``s``, a dimension of
    size ``n`` gets ``max((ceil(n / s) - 1) s + e - n, 0)`` zeros, the extra one on the high side. A
    converted ``Conv2dSame`` (every ``tf_*`` model of timm) becomes ``nn.Sequential(DynamicSamePad, layer)``
    with ``layer`` unpadded.
    """

    def __init__(self, extent: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.extent, self.stride = tuple(extent), tuple(stride)

    def forward(self, input: Tensor) -> Tensor:
        pads: list[int] = []
        for n, e, s in reversed(list(zip(input.shape[2:], self.extent, self.stride))):  # F.pad: last dim first
            total = max((-(-n // s) - 1) * s + e - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(input, pads)

    def extra_repr(self) -> str:
        return f"extent={self.extent}, stride={self.stride}"


def _plain_forwards() -> set:
    from largekernel.nn import conv as lk_conv

    return {cls.forward for cls in (*_TORCH_CONVS, lk_conv.Conv1d, lk_conv.Conv2d, lk_conv.Conv3d)}


def _tf_same(module: nn.Module) -> bool:
    """timm's ``Conv2dSame`` / ``Conv2dSameExport``: TF "SAME" padding from the input size (False without timm)."""
    timm_same = sys.modules.get("timm.layers.conv2d_same")
    classes = tuple(c for c in (getattr(timm_same, "Conv2dSame", None), getattr(timm_same, "Conv2dSameExport", None))
                    if c is not None)
    return bool(classes) and isinstance(module, classes)


def _extent(module: nn.Module) -> tuple[int, ...]:
    """Receptive field of a built layer per dimension (fixed-extent families)."""
    box = getattr(module, "dilated_kernel_size", None) or module.kernel_size
    dilation = getattr(module, "dilation", (1,) * len(box))
    return tuple(d * (k - 1) + 1 for k, d in zip(box, dilation))


def _is_same_padding(old: nn.Module) -> bool:
    nd = len(old.kernel_size)
    same = same_padding(old.kernel_size, dim=nd, stride=old.stride, dilation=old.dilation)
    return old.padding == "same" or (not isinstance(old.padding, str) and tuple(old.padding) == same)


def _skip_reason(old: nn.Module, to: str, exact: bool, fused_by: str | None, plain: set) -> str | None:
    """Why ``old`` cannot be replaced faithfully by a ``to`` layer, or None."""
    if fused_by is not None:
        return (f"inside {fused_by}, which timm's reparameterize_model fuses from its torch convolutions; "
                f"call timm.utils.reparameterize_model(model) first, then convert")
    tf_same = _tf_same(old)
    if type(old).forward not in plain and not tf_same:
        return (f"{type(old).__qualname__} overrides forward, so it is not a plain convolution; converting it "
                f"would change what it computes")
    stride = tuple(old.stride)
    if tf_same and any(s > 1 for s in stride) and to not in _FIXED_EXTENT:
        return (f"TF 'SAME' padding at stride {stride} depends on the kernel extent, which a {to!r} layer does not "
                f"fix (FlexConv crops it while training, NIFF's is the input); supported: {_FIXED_EXTENT}")
    if exact:
        return None
    if not tf_same and not _is_same_padding(old):
        return (f"padding={old.padding} is not 'same' padding for kernel_size={tuple(old.kernel_size)}, "
                f"stride={stride}, dilation={tuple(old.dilation)}: a {to!r} layer pads to keep ceil(size / stride), "
                f"which would change the output size")
    if old.padding_mode != "zeros" and to in _NO_PADDING_MODE:
        return f"padding_mode={old.padding_mode!r}: {to!r} layers pad with zeros only"
    depthwise = old.groups == old.in_channels == old.out_channels
    if to in ("sgconv", "s4d") and (not depthwise or any(s > 1 for s in stride)):
        return (f"{to!r} is a depthwise stride-1 layer; this convolution has groups={old.groups}, "
                f"in_channels={old.in_channels}, out_channels={old.out_channels}, stride={stride}")
    if to == "niff" and (old.groups not in (1, old.in_channels) or
                         (old.groups == old.in_channels and old.out_channels % old.in_channels)):
        return (f"NIFF is depthwise (groups == in_channels, out_channels a multiple) or depthwise + pointwise "
                f"(groups=1); this convolution has groups={old.groups}, in_channels={old.in_channels}, "
                f"out_channels={old.out_channels}")
    return None


def _geometry(old: nn.Module, to: str, kernel_size: tuple[int, ...], dynamic: bool) -> dict[str, Any]:
    """Padding, dilation and padding mode for the new layer, so that it keeps the original's geometry."""
    nd = len(kernel_size)
    kwargs: dict[str, Any] = {}
    dilation = tuple(old.dilation) if to in _KEEPS_DILATION else (1,) * nd
    if any(d > 1 for d in dilation):
        kwargs["dilation"] = dilation
    if dynamic:  # DynamicSamePad in front does the padding
        kwargs["padding"] = 0
    elif to == "dcls":  # the DCLS factory computes "same" padding without dilation
        kwargs["padding"] = same_padding(kernel_size, dim=nd, stride=old.stride, dilation=dilation)
    if old.padding_mode != "zeros":
        kwargs["padding_mode"] = old.padding_mode
    return kwargs


def _dense_copy(old: nn.Module, to: str, layer_kwargs: dict[str, Any], padding) -> nn.Module:
    """The same convolution as a ``largekernel.nn.Conv{n}d`` with the same weights (exact output)."""
    from largekernel.nn import conv as lk_conv

    kwargs = dict(layer_kwargs)
    default = "fft" if to == "fft" else "auto"
    backend = kwargs.pop("backend", default)
    if to == "fft" and backend != "fft":
        raise ValueError(f"to='fft' implies backend='fft', got backend={backend!r}")
    if kwargs:
        raise ValueError(f"to={to!r} with the original kernel_size copies the layer exactly and takes only "
                         f"'backend'; got {sorted(kwargs)}")
    nd = old.weight.dim() - 2
    new = getattr(lk_conv, f"Conv{nd}d")(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                         padding=padding, dilation=old.dilation, groups=old.groups,
                                         bias=old.bias is not None, padding_mode=old.padding_mode,
                                         backend=backend, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    return new


def _build(old: nn.Module, to: str, kernel_size, layer_kwargs: dict[str, Any]) -> nn.Module:
    return create_conv(to, old.in_channels, old.out_channels, kernel_size, dim=old.weight.dim() - 2,
                       stride=old.stride, groups=old.groups, bias=old.bias is not None, **layer_kwargs)


def _with_knob(to: str, layer_kwargs: dict[str, Any], value: int) -> dict[str, Any]:
    kwargs = dict(layer_kwargs)
    if to == "dcls":
        kwargs["kernel_count"] = value
    else:
        kwargs["kernel_net_kwargs"] = {**kwargs.get("kernel_net_kwargs", {}), "hidden_channels": value}
    return kwargs


def _iso_value(old: nn.Module, to: str, kernel_size, layer_kwargs: dict[str, Any], target: int) -> int:
    """The knob value whose layer parameter count is closest to ``target``.

    The count grows with the knob, so: double until it reaches ``target``, then bisect. Candidates are
    built on the CPU (some layers initialise from their own parameters, which rules out the meta device);
    doubling keeps the largest one within a small factor of the target.
    """
    cache: dict[int, int] = {}

    def params(value: int) -> int:
        if value not in cache:
            cache[value] = _num_params(_build(old, to, kernel_size, _with_knob(to, layer_kwargs, value)))
        return cache[value]

    if to == "dcls":
        limit = math.prod(kernel_size)  # more elements than cells buys nothing
    else:
        limit = _MAX_HIDDEN
    hi = 1
    while hi < limit and params(hi) < target:
        hi = min(2 * hi, limit)
    lo = max(1, hi // 2)
    while lo < hi:  # smallest value in [lo, hi] with params(value) >= target
        mid = (lo + hi) // 2
        if params(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and target - params(lo - 1) < params(lo) - target:
        return lo - 1
    return lo


def _restructured_by_reparameterize(block: nn.Module) -> bool:
    """Whether timm's reparameterize_model would still change ``block``: ``fuse()`` replaces it; for
    ``reparameterize()`` / ``switch_to_deploy()``, run it on a copy and compare the parameters (a block
    already re-parameterised, e.g. MobileOne's after ``reparameterize_model``, keeps them)."""
    if callable(getattr(block, "fuse", None)):
        return True
    method = next(m for m in _FUSE_METHODS[1:] if callable(getattr(block, m, None)))
    probe = copy.deepcopy(block)
    try:
        with torch.no_grad():
            getattr(probe, method)()
    except Exception:  # whatever fails here would fail in reparameterize_model: keep the block as it is
        return True
    shapes = [(n, p.shape) for n, p in block.named_parameters()]
    return shapes != [(n, p.shape) for n, p in probe.named_parameters()]


def _fused_ancestors(model: nn.Module) -> dict[str, str]:
    """Qualified name -> ``"Class 'name'"`` of every submodule that timm's reparameterize_model would restructure."""
    verdicts: dict[int, bool] = {}
    fused = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if name and any(callable(getattr(m, method, None)) for method in _FUSE_METHODS):
            if id(m) not in verdicts:
                verdicts[id(m)] = _restructured_by_reparameterize(m)
            if verdicts[id(m)]:
                fused[name] = f"{type(m).__name__} {name!r}"
    return fused


def _fused_by(name: str, fused: dict[str, str]) -> str | None:
    """The innermost block of ``fused`` that contains module ``name``, or None."""
    parts = name.split(".")
    return next((fused[".".join(parts[:i])] for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in fused),
                None)


def convert(model: nn.Module, to: str, which: str | Callable[[str, nn.Module], bool] | None = None, *,
            iso_params: bool = False, report: bool = False, **layer_kwargs):
    """Replace the convolutions of ``model`` selected by ``which`` with layers of family ``to``, in place.

    Args:
        model: any ``nn.Module`` (a largekernel model, a hand-written net, a timm or torchvision model).
        to: the target family, one of ``largekernel.models.layers.CONV_TYPES``
            (``"conv"``, ``"fft"``, ``"dilated"``, ``"dcls"``, ``"flexconv"``, ``"ckconv"``, ``"niff"``, ...).
        which: the ``torch.nn.Conv{1,2,3}d`` modules to replace. ``None``: every depthwise spatial
            convolution (:func:`is_depthwise_spatial`); a string: a shell-style pattern on the qualified
            module name (spatial convolutions only, e.g. ``"stages.2.*"``); a callable ``(name, module) -> bool``.
        iso_params: choose ``kernel_count`` (DCLS) or the kernel net's ``hidden_channels`` (FlexConv,
            CKConv) per layer so that the replaced layers' total parameter count matches the original's
            (the residue of each layer is carried to the next, so the total lands within one layer's step).
        report: also return a :class:`ConvertReport`.
        **layer_kwargs: options of the target layer (``kernel_size`` overrides the original extent, e.g.
            ``convert(model, "dcls", kernel_size=17, kernel_count=34)``).

    What is kept: the bias always; for ``to="conv"`` / ``"fft"`` at the original ``kernel_size`` the whole
    layer (weights, padding, dilation, groups, padding mode), so the output is unchanged. Otherwise the new
    layer keeps groups, stride, "same" padding and padding mode; DCLS and dense layers keep the dilation
    (``convnext_tiny(output_stride=16)``), the other families span the dilated extent ``d (k - 1) + 1``.
    timm's ``Conv2dSame`` (TF "SAME" padding, the ``tf_*`` models) keeps its padding: at stride 1 it is
    static, above it the new layer runs after a :class:`DynamicSamePad`. Each new layer lives on the
    original's device and dtype and takes its train/eval mode. A module referenced twice stays one module.

    What is skipped, with the reason in the report and a warning: a convolution inside a block that timm's
    ``reparameterize_model`` fuses (RepViT, MobileOne: convert after reparameterizing), a subclass whose
    ``forward`` does more than convolve (e.g. weight standardisation), padding other than "same" (the new
    layer would change the output size), and shapes the family cannot take (SGConv/S4D: depthwise stride
    1; NIFF: depthwise or full). When nothing is replaced, the warning says why.

    Returns:
        ``model``, or ``(model, ConvertReport)`` when ``report=True``.
    """
    if to not in CONV_TYPES:
        raise ValueError(f"to must be one of {CONV_TYPES}, got {to!r}")
    if iso_params and to not in _ISO_KNOBS:
        raise ValueError(f"iso_params=True tunes {sorted(_ISO_KNOBS)} layers; got to={to!r}")
    knob = _ISO_KNOBS.get(to)
    if iso_params and (knob in layer_kwargs or knob in layer_kwargs.get("kernel_net_kwargs", {})):
        raise ValueError(f"iso_params=True chooses {knob} itself; do not pass {knob}")
    match = _predicate(which)
    result = ConvertReport(to=to, params_before=_num_params(model))
    refs = list(_references(model))
    targets = [(parent, attr, name, child) for parent, attr, name, child in refs if match(name, child)]
    result.not_selected = len({id(c) for _, _, _, c in refs if _is_spatial(c)} - {id(c) for *_, c in targets})
    if isinstance(model, _TORCH_CONVS) and match("", model):
        raise ValueError("convert() replaces submodules; model is itself a convolution: wrap it or "
                         "call largekernel.models.layers.create_conv directly")
    fused, plain = _fused_ancestors(model), _plain_forwards()
    done: dict[int, nn.Module] = {}
    skipped: set[int] = set()
    carry = 0  # parameters the previous iso layers are short of (or over) their originals
    for parent, attr, name, old in targets:
        if id(old) in done:
            setattr(parent, attr, done[id(old)])
            continue
        if id(old) in skipped:
            continue
        nd = len(old.kernel_size)
        default_size = tuple(old.kernel_size) if to in _KEEPS_DILATION else _extent(old)
        kernel_size = layer_kwargs.get("kernel_size", default_size)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size,) * nd
        kernel_size = tuple(kernel_size)
        exact = to in ("conv", "fft") and kernel_size == tuple(old.kernel_size)
        reason = _skip_reason(old, to, exact, _fused_by(name, fused), plain)
        if reason is not None:
            result.skipped.append(SkippedLayer(name, reason))
            skipped.add(id(old))
            continue
        tf_same = _tf_same(old)
        dynamic = tf_same and any(s > 1 for s in old.stride)
        rest = {k: v for k, v in layer_kwargs.items() if k != "kernel_size"}
        if exact:
            padding = old.padding
            if tf_same:  # at stride 1 TF's "SAME" is static and equals torch's
                padding = 0 if dynamic else same_padding(old.kernel_size, dim=nd, dilation=old.dilation)
            new = _dense_copy(old, to, rest, padding)
        else:
            rest = {**_geometry(old, to, kernel_size, dynamic), **rest}
            if iso_params:
                target = _num_params(old) + carry
                rest = _with_knob(to, rest, _iso_value(old, to, kernel_size, rest, target))
            factory = {"device": old.weight.device, "dtype": old.weight.dtype}
            new = _build(old, to, kernel_size, {**rest, **factory})
            if old.bias is not None and getattr(new, "bias", None) is not None \
                    and new.bias.shape == old.bias.shape:
                with torch.no_grad():
                    new.bias.copy_(old.bias)
            if iso_params:
                carry = _num_params(old) + carry - _num_params(new)
        result.replaced.append(ReplacedLayer(name, _short(old), _short(new), _num_params(old), _num_params(new)))
        if dynamic:
            new = nn.Sequential(DynamicSamePad(_extent(new), old.stride), new)
        new.train(old.training)
        setattr(parent, attr, new)
        done[id(old)] = new
    result.params_after = _num_params(model)
    if result.skipped:
        warnings.warn(f"convert(to={to!r}) skipped {len(result.skipped)} selected layer(s): " + "; ".join(
            f"{s.name}: {s.reason}" for s in result.skipped[:3]) + (" ..." if len(result.skipped) > 3 else "") +
            " (report=True lists them all)", stacklevel=2)
    elif not result.replaced:
        warnings.warn(f"convert(to={to!r}) replaced nothing: " + _NOTHING_SELECTED.format(n=result.not_selected),
                      stacklevel=2)
    return (model, result) if report else model


def _short(module: nn.Module) -> str:
    """``ClassName(first line of extra_repr)`` for reports."""
    return f"{type(module).__name__}({module.extra_repr().splitlines()[0] if module.extra_repr() else ''})"


def _is_learnable_kernel(module: nn.Module) -> bool:
    return callable(getattr(module, "bake", None)) and callable(getattr(module, "construct_kernel", None))


def _needs_size(module: nn.Module) -> bool:
    params = inspect.signature(module.bake).parameters.values()
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def _size_argument(layer: nn.Module, size: tuple[int, ...]):
    """``size`` in the form ``layer.bake`` takes: sequence layers take ``length`` (an int), others a tuple."""
    first = next(iter(inspect.signature(layer.bake).parameters))
    return size[0] if first == "length" and len(size) == 1 else size


def _layer_input_sizes(model: nn.Module, layers: list[nn.Module], input_size: Sequence[int]) -> dict[int, tuple]:
    """Spatial size of the input each of ``layers`` sees when ``model`` runs on zeros of ``input_size``."""
    sizes: dict[int, tuple] = {}

    def record(module, args):
        size = tuple(args[0].shape[2:])
        if sizes.setdefault(id(module), size) != size:
            raise ValueError(f"{type(module).__name__} is applied to inputs of spatial sizes {sizes[id(module)]} "
                             f"and {size}; bake() needs a single input size per layer")

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    first = next(iter(model.parameters()), None)
    factory = {"device": first.device, "dtype": first.dtype} if first is not None else {}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), **factory))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sizes


def bake(model: nn.Module, input_size: Sequence[int] | None = None) -> nn.Module:
    """Replace every learnable-kernel layer of ``model`` by its ``bake()``: a plain convolution, in place.

    DCLS, CKConv and FlexConv layers bake on their own; layers whose kernel depends on the input size
    (NIFF, SGConv, S4D) need ``input_size``, the shape of a whole model input *including the batch
    dimension* (e.g. ``(1, 3, 32, 32)``): the model is run once on zeros of that shape to learn the size
    each layer sees. The baked model gives the same output (to float rounding) and contains only standard
    convolutions, so ``torch.export`` and ONNX export see no kernel construction.

    Returns the baked ``model`` (or the baked layer when ``model`` itself is a learnable-kernel layer).
    """
    if input_size is not None and (isinstance(input_size, (str, bytes)) or not all(
            isinstance(s, int) and s > 0 for s in input_size)):
        raise ValueError(f"input_size must be a sequence of positive ints (batch, channels, *spatial), "
                         f"got {input_size!r}")
    if _is_learnable_kernel(model):
        if not _needs_size(model):
            return model.bake()
        if input_size is None:
            raise ValueError(f"bake() of a {type(model).__name__} needs input_size (its kernel is as large as "
                             f"its input)")
        return model.bake(_size_argument(model, tuple(input_size)[2:]))
    layers = _outermost_learnable(model)
    sized = [m for _, _, _, m in layers if _needs_size(m)]
    if sized and input_size is None:
        names = sorted({name for _, _, name, m in layers if _needs_size(m)})
        raise ValueError(f"bake() needs input_size for layers whose kernel depends on the input size: {names}")
    sizes = _layer_input_sizes(model, sized, input_size) if sized else {}
    done: dict[int, nn.Module] = {}
    for parent, attr, name, layer in layers:
        if id(layer) not in done:
            if _needs_size(layer):
                if id(layer) not in sizes:
                    raise ValueError(f"layer {name!r} was not called by model.forward on an input of size "
                                     f"{tuple(input_size)}; cannot infer its input size")
                baked = layer.bake(_size_argument(layer, sizes[id(layer)]))
            else:
                baked = layer.bake()
            done[id(layer)] = baked.train(layer.training)
        setattr(parent, attr, done[id(layer)])
    return model


def _outermost_learnable(model: nn.Module, prefix: str = "") -> list[tuple[nn.Module, str, str, nn.Module]]:
    found = []
    for attr, child in model._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{attr}" if prefix else attr
        if _is_learnable_kernel(child):
            found.append((model, attr, name, child))
        else:
            found += _outermost_learnable(child, name)
    return found


@dataclass
class DenseLoadReport:
    """What :func:`load_dense` did: per fitted layer, the relative L2 error ``||K - D|| / ||D||`` of the kernel
    ``K`` it now builds against the checkpoint's dense kernel ``D`` (0: exact), and the keys left over."""

    fitted: dict[str, float] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fitted {len(self.fitted)} layer(s) to their dense kernels"]
        lines += [f"  {name}: relative error {err:.2e}" for name, err in self.fitted.items()]
        for title, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if keys:
                lines.append(f"{title} keys: {', '.join(keys)}")
        return "\n".join(lines)


def _centre(kernel: Tensor, size: Sequence[int]) -> Tensor:
    """``kernel`` (..., *k) cropped or zero-padded to (..., *size) so that the taps a "same"-padded convolution
    centres on (index ``(k - 1) // 2``) stay aligned."""
    nd = len(size)
    for d, (k, n) in enumerate(zip(kernel.shape[-nd:], size)):
        axis = kernel.dim() - nd + d
        shift = (n - 1) // 2 - (k - 1) // 2  # where tap 0 of the kernel lands on the new grid
        if shift < 0:
            kernel = kernel.narrow(axis, -shift, min(n, k + shift))
            k, shift = kernel.shape[axis], 0
        pad = [0, 0] * (kernel.dim() - axis - 1) + [shift, n - k - shift]
        kernel = F.pad(kernel, pad)
    return kernel


def _relative_error(kernel: Tensor, dense: Tensor) -> float:
    size = [max(a, b) for a, b in zip(kernel.shape[2:], dense.shape[2:])]
    reference = dense.to(kernel)
    diff = _centre(kernel.detach(), size) - _centre(reference, size)
    return (torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(reference).clamp_min(1e-30)).item()


@torch.no_grad()
def _fit_dcls(layer: nn.Module, dense: Tensor, fitted_positions: set[int]) -> None:
    """Positions on the cells of largest magnitude, then weights by least squares through the layer's own
    interpolation (exact for ``bilinear`` when the dense kernel has at most ``kernel_count`` non-zero taps)."""
    from largekernel.functional.dcls import construct_kernel

    box, count = layer.dilated_kernel_size, layer.kernel_count
    target = _centre(dense.to(layer.weight), box)  # (out, in/g, *box)
    pairs = target.shape[0] * target.shape[1]
    flat = target.reshape(pairs, -1)  # (pairs, cells)
    if id(layer.P) not in fitted_positions:  # shared positions (one P per stage) are placed by the first layer
        order = flat.abs().argsort(dim=1, descending=True)  # (pairs, cells)
        # More elements than cells: the extra ones share cells (least squares splits the value between them).
        cells = order[:, torch.arange(count, device=order.device) % order.shape[1]]  # (pairs, count)
        for i, size in enumerate(box):  # P[m - 1 - i] moves along box dimension i
            stride = math.prod(box[i + 1:])
            index = (cells // stride) % size - size // 2
            layer.P[len(box) - 1 - i].copy_(index.view(layer.P.shape[1:]))
        fitted_positions.add(id(layer.P))
    basis = []
    for j in range(count):  # the kernel of element j alone: the interpolation is linear in the weights
        unit = torch.zeros_like(layer.weight)
        unit[..., j] = 1
        basis.append(construct_kernel(unit, layer.P, layer.SIG, dilated_kernel_size=box,
                                      interpolation=layer.interpolation).reshape(pairs, -1))
    matrix = torch.stack(basis, dim=-1)  # (pairs, cells, count)
    # The pseudo-inverse: least squares that also takes rank-deficient systems (shared cells), on any device.
    weights = torch.linalg.pinv(matrix) @ flat.unsqueeze(-1)  # (pairs, count, 1)
    layer.weight.copy_(weights.view(layer.weight.shape))


@torch.no_grad()
def _fit_continuous(layer: nn.Module, dense: Tensor) -> None:
    """Least squares for the kernel net's output layer, the hidden layers kept: the kernel is affine in it.

    FlexConv's mask is first widened (and centred) so that its crop covers the dense kernel."""
    net = layer.kernel_net
    output = getattr(net, "output", None)
    if not isinstance(output, nn.Linear) or getattr(net, "out_features", None) != output.out_features \
            or layer.separable:
        raise ValueError(f"load_dense fits CKConv/FlexConv layers whose kernel net ends in a Linear `output` "
                         f"(largekernel's named kernel nets), not separable ones; got {type(net).__name__}, "
                         f"separable={layer.separable}")
    grid = layer.kernel_size
    if grid is None:
        raise ValueError(f"{type(layer).__name__} sizes its kernel from its first input (kernel_size=None): run "
                         f"one input through the model before load_dense")
    if hasattr(layer, "mask_width"):
        reach = max((k - 1) / (g - 1) if g > 1 else 0.0 for k, g in zip(dense.shape[2:], grid))
        width = reach / math.sqrt(-2.0 * math.log(layer.mask_threshold)) * (1 + 1e-3)
        layer.mask_width.copy_(layer.mask_width.abs().clamp_min(width))
        layer.mask_mean.zero_()
    hidden = output.in_features
    probe = nn.Linear(hidden, hidden + 1, device=output.weight.device, dtype=output.weight.dtype)
    probe.weight.copy_(torch.eye(hidden + 1, hidden))  # returns the hidden features, then the bias's feature
    probe.bias.copy_(torch.eye(hidden + 1)[-1])
    real = (output, net.out_features)
    try:
        net.output, net.out_features = probe, hidden + 1
        features = layer._sample()  # (hidden + 1, *k): the scaled hidden features and the bias's scale
    finally:
        net.output, net.out_features = real
    size = features.shape[1:]
    target = _centre(dense.to(features), size).reshape(output.out_features, -1)  # (C_k, N)
    design = features.reshape(hidden + 1, -1).t()  # (N, hidden + 1)
    if output.bias is None:
        design = design[:, :hidden]
    solution = torch.linalg.pinv(design) @ target.t()  # (hidden (+ 1), C_k), least squares of minimum norm
    output.weight.copy_(solution[:hidden].t())
    if output.bias is not None:
        output.bias.copy_(solution[hidden])


def load_dense(model: nn.Module, state_dict: dict[str, Tensor], *, strict: bool = True) -> DenseLoadReport:
    """Load the state dict of a dense model (e.g. a pretrained timm checkpoint) into its converted version.

    Entries whose module now is another layer are turned into the nearest kernel that layer can build,
    the rest loads as usual:

    - a dense convolution of another ``kernel_size``: the checkpoint's kernel zero-padded (or cropped) around
      its centre, exact when it grew;
    - DCLS: each kernel's ``kernel_count`` largest-magnitude taps become the positions (on cells; positions
      shared across layers keep the first layer's), then the weights are the least-squares fit through the
      layer's interpolation: exact for ``bilinear`` when at most ``kernel_count`` taps are non-zero;
    - CKConv / FlexConv: the kernel net's output layer is the least-squares fit of the checkpoint's kernel
      on the layer's grid, its hidden layers kept; FlexConv's mask is widened to cover the kernel first.

    Taps map one to one onto the new layer's taps (box cells, grid samples), centred. NIFF, SGConv and S4D
    build input-sized kernels and cannot take a dense one (an error). ``strict``: raise when keys are
    missing or unexpected after that. Returns a :class:`DenseLoadReport` with each fitted layer's error.
    """
    state = dict(state_dict)
    for name, module in model.named_modules():  # converted Conv2dSame: the layer moved to "<name>.1"
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], DynamicSamePad):
            for leaf in ("weight", "bias"):
                if f"{name}.{leaf}" in state:
                    state[f"{name}.1.{leaf}"] = state.pop(f"{name}.{leaf}")
    result = DenseLoadReport()
    fitted_positions: set[int] = set()
    covered: set[str] = set()
    for name, layer in model.named_modules():
        key = f"{name}.weight"
        dense = state.get(key)
        if dense is None or not _is_learnable_kernel(layer) and not isinstance(layer, _TORCH_CONVS):
            continue
        nd = len(getattr(layer, "dilated_kernel_size", None) or getattr(layer, "kernel_size", None) or ())
        if nd and dense.dim() != nd + 2:
            raise ValueError(f"{key}: expected a dense kernel (out, in/groups, {nd} spatial sizes) for "
                             f"{type(layer).__name__}, got shape {tuple(dense.shape)}")
        if isinstance(layer, _TORCH_CONVS):
            if tuple(layer.weight.shape) == tuple(dense.shape):
                continue  # loads as it is
            if layer.weight.shape[:2] != dense.shape[:2]:
                raise ValueError(f"{key}: the checkpoint's kernel {tuple(dense.shape)} does not match the layer's "
                                 f"(out, in/groups) = {tuple(layer.weight.shape[:2])}")
            with torch.no_grad():
                layer.weight.copy_(_centre(dense.to(layer.weight), layer.weight.shape[2:]))
            kernel = layer.weight
            covered.add(key)
        elif getattr(layer, "dilated_kernel_size", None) and not getattr(layer, "dense_kernel_size", ()):
            _fit_dcls(layer, dense, fitted_positions)
            kernel = layer.construct_kernel()
            covered |= {f"{name}.{p}" for p in ("weight", "P", "SIG")}
        elif hasattr(layer, "kernel_net") and hasattr(layer, "kernel_size"):
            _fit_continuous(layer, dense)
            kernel = layer.construct_kernel()
            covered |= {f"{name}.{n}" for n, _ in layer.named_parameters()} | {f"{name}.{n}" for n, _ in
                                                                               layer.named_buffers()}
            covered.add(f"{name}._extra_state")
        else:
            raise ValueError(f"{name}: load_dense cannot map the checkpoint's dense {key} onto a "
                             f"{type(layer).__name__} (NIFF, SGConv and S4D build input-sized kernels; N-MD DCLS "
                             f"layers keep dense dimensions)")
        result.fitted[name] = _relative_error(kernel, dense)
        covered.discard(f"{name}.bias")
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    result.missing_keys = [k for k in missing if k not in covered]
    result.unexpected_keys = list(unexpected)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise RuntimeError(f"load_dense: the checkpoint does not cover the model:\n{result}")
    return result


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 1,3,32,32, got {text!r}") from None


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="largekernel convert",  # dashed flags, underscores accepted, one-line errors
                                description="Convert a model's convolutions to a large-kernel family and/or bake "
                                            "learnable kernels into plain convolutions; print the report.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registered model name (largekernel.models.list_models())")
    src.add_argument("--checkpoint", help="checkpoint or run directory written by `largekernel train`")
    p.add_argument("--model-kwargs", type=_json_dict, default={}, help='JSON, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--to", choices=CONV_TYPES, help="target family")
    p.add_argument("--which", help="module-name pattern of the convolutions to replace (default: depthwise ones)")
    p.add_argument("--iso-params", action="store_true", help="match the original parameter count")
    p.add_argument("--layer-kwargs", type=_json_dict, default={}, help='JSON, e.g. \'{"kernel_size": 17}\'')
    p.add_argument("--bake", action="store_true", help="then bake learnable kernels into plain convolutions")
    p.add_argument("--input-size", type=_int_list, help="model input shape with batch, e.g. 1,3,32,32 "
                   "(needed to bake input-sized kernels, to count FLOPs and to write .pt2)")
    p.add_argument("--out", help="write the model: FILE.pt2 = torch.export program (needs --input-size), "
                   "otherwise torch.save of the module (load with torch.load(FILE, weights_only=False))")
    return p


def main(argv: list[str] | None = None) -> int:
    """``largekernel convert``: returns the exit status."""
    args = _parser().parse_args(argv)
    if args.to is None and not args.bake:
        print("largekernel convert: nothing to do; give --to FAMILY and/or --bake")
        return 2
    if args.out and args.out.endswith(".pt2") and args.input_size is None:
        print("largekernel convert: --out FILE.pt2 needs --input-size")
        return 2
    if args.checkpoint:
        from largekernel.train.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint)[0]
    else:
        from largekernel.models import create_model

        model = create_model(args.model, **args.model_kwargs)
    model.eval()
    if args.input_size:
        from largekernel.analysis.flops import count

        print(f"before: {count(model, args.input_size)}")
    if args.to:
        model, rep = convert(model, args.to, args.which, iso_params=args.iso_params, report=True,
                             **args.layer_kwargs)
        print(rep)
    if args.bake:
        before = sum(1 for m in model.modules() if _is_learnable_kernel(m))
        bake(model, args.input_size)
        print(f"baked {before} learnable-kernel layer(s) into plain convolutions")
    if args.input_size:
        print(f"after: {count(model, args.input_size)}")
    if args.out:
        if args.out.endswith(".pt2"):
            example = torch.zeros(args.input_size)
            torch.export.save(torch.export.export(model, (example,)), args.out)
        else:
            torch.save(model, args.out)
        print(f"wrote {args.out}")
    return 0


class _CallableModule(types.ModuleType):
    """Makes ``largekernel.convert(model, ...)`` work after ``import largekernel.convert``.

    The package resolves ``largekernel.convert`` to the function lazily, but importing this
    submodule (the CLI does) rebinds that package attribute to the module itself.
    """

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
