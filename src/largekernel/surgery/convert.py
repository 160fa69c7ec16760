"""Model surgery: swap a network's convolutions for a large-kernel family (seeds 000-004).

The seed papers' central experiment (DCLS, Khalfaoui-Hassani et al. 2023;
FlexConv, Romero et al. 2022; NIFF, Grabinski et al. 2023) replaces the
(depthwise) convolutions of a known architecture by their method, at the same
parameter count, and compares. :func:`convert` does that on any ``nn.Module``;
:func:`match_params` is the one equal-parameter search (also the study's). What a
family can take (dilation, padding modes, its size knob) comes from the family
itself and the layer factory (:mod:`largekernel.models.layers`), not from here.
"""

from __future__ import annotations

import copy
import fnmatch
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional import ConvArgumentError
from largekernel.models.layers import conv_types, create_conv, family_class, family_traits, layer_class, same_padding
from largekernel.functional._fx import leaf_under_fx

__all__ = ["convert", "match_params", "ConvertReport", "ReplacedLayer", "SkippedLayer", "DynamicSamePad",
           "is_depthwise_spatial"]

_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

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
    # ``which`` as the call gave it (None: the default), for the message when nothing was selected.
    which: str | Callable[[str, nn.Module], bool] | None = None

    def __str__(self) -> str:
        lines = [f"converted {len(self.replaced)} layer(s) to {self.to!r}: parameters {self.params_before:,} -> "
                 f"{self.params_after:,} ({_ratio(self.params_after, self.params_before)})"]
        lines += [f"  {r.name}: {r.before} -> {r.after} ({r.params_before:,} -> {r.params_after:,} params)"
                  for r in self.replaced]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} selected layer(s):")
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped]
        if not self.replaced and not self.skipped:
            lines.append(_nothing_selected(self.which, self.not_selected))
        return "\n".join(lines)


def _nothing_selected(which, not_selected: int) -> str:
    """Why ``which`` selected no convolution, and what would: the model's ``not_selected`` spatial convolutions."""
    if not_selected == 0:
        return ("no convolution was selected: the model has no spatial convolution that convert() replaces "
                "(torch.nn.Conv1d/2d/3d or a subclass, kernel > 1)")
    if which is None:
        return ("no convolution was selected: which=None selects the depthwise spatial convolutions "
                f"(groups == in_channels == out_channels, kernel > 1) and the model has none; it has {not_selected} "
                "other spatial convolution(s), which='*' selects them all, or pass a name pattern or a callable")
    given = f"which={which!r}" if isinstance(which, str) else f"which={getattr(which, '__name__', which)!s}"
    return (f"no convolution was selected: {given} selected none of the model's {not_selected} spatial "
            "convolution(s) (a pattern matches qualified module names, e.g. 'stages.2.*'; which='*' selects them "
            "all)")


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

    @leaf_under_fx
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
    """Why ``old`` cannot be replaced faithfully by a ``to`` layer, or None (shapes the family cannot take are
    found by building it)."""
    if fused_by is not None:
        return (f"inside {fused_by}, which timm's reparameterize_model fuses from its torch convolutions; "
                f"call timm.utils.reparameterize_model(model) first, then convert")
    tf_same = _tf_same(old)
    if type(old).forward not in plain and not tf_same:
        return (f"{type(old).__qualname__} overrides forward, so it is not a plain convolution; converting it "
                f"would change what it computes")
    stride = tuple(old.stride)
    traits = family_traits(to)
    if tf_same and any(s > 1 for s in stride) and not traits.fixed_extent:
        return (f"TF 'SAME' padding at stride {stride} depends on the kernel extent, which a {to!r} layer does not "
                f"fix (it sets its own extent)")
    if exact:
        return None
    if old.weight.is_complex() and to not in ("conv", "fft"):
        return (f"complex weights ({old.weight.dtype}): {to!r} layers build real kernels; 'fft' keeps the complex "
                f"convolution (largekernel.nn.Conv{len(stride)}d takes complex operands, as torch's)")
    if not tf_same and not _is_same_padding(old):
        return (f"padding={old.padding} is not 'same' padding for kernel_size={tuple(old.kernel_size)}, "
                f"stride={stride}, dilation={tuple(old.dilation)}: a {to!r} layer pads to keep ceil(size / stride), "
                f"which would change the output size")
    if old.padding_mode not in traits.padding_modes:
        return f"padding_mode={old.padding_mode!r}: {to!r} layers pad with {traits.padding_modes} only"
    return None


def _geometry(old: nn.Module, to: str, kernel_size: tuple[int, ...], dynamic: bool) -> dict[str, Any]:
    """Padding, dilation and padding mode for the new layer, so that it keeps the original's geometry."""
    nd = len(kernel_size)
    kwargs: dict[str, Any] = {}
    dilation = tuple(old.dilation) if family_traits(to).keeps_dilation else (1,) * nd
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


def _merge(options: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``options`` updated with ``extra``, dict values merged one level deep (``kernel_net_kwargs``)."""
    merged = dict(options)
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def match_params(build: Callable[[int], nn.Module], target: int, limit: int = 1 << 14) -> int:
    """The value ``v`` in ``[1, limit]`` whose ``build(v)`` has the parameter count closest to ``target``
    (the count grows with ``v``): double until it reaches ``target``, then bisect. Candidates are built and
    counted, so ``build`` should make them on the CPU at their real size."""
    cache: dict[int, int] = {}

    def params(value: int) -> int:
        if value not in cache:
            cache[value] = _num_params(build(value))
        return cache[value]

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


def _iso_value(old: nn.Module, to: str, kernel_size, layer_kwargs: dict[str, Any], target: int) -> int:
    """The family's size-knob value whose layer parameter count is closest to ``target``."""
    cls = layer_class(to, len(kernel_size))
    return match_params(lambda v: _build(old, to, kernel_size, _merge(layer_kwargs, cls.size_kwargs(v))), target,
                        cls.size_limit(kernel_size))


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
    from largekernel.nn import KernelConvNd

    verdicts: dict[int, bool] = {}
    fused = {}
    for name, m in model.named_modules(remove_duplicate=False):
        # The library's re-parameterised layers fuse (bake) whatever their branches hold that the merge
        # reproduces, the library's layers included: their branches convert like any convolution.
        if name and not isinstance(m, KernelConvNd) and any(callable(getattr(m, method, None))
                                                            for method in _FUSE_METHODS):
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
        to: the target family, one of ``largekernel.models.layers.conv_types()``
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
    if not isinstance(model, nn.Module):
        raise ConvArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if to not in conv_types():
        raise ConvArgumentError(f"to must be one of {conv_types()}, got {to!r}")
    if iso_params:
        knob = getattr(family_class(to), "size_knob", None)
        if knob is None:
            raise ValueError(f"iso_params=True tunes a family's size knob; to={to!r} has none (its parameter count "
                             f"is set by its other options)")
        if knob in layer_kwargs or knob in layer_kwargs.get("kernel_net_kwargs", {}):
            raise ValueError(f"iso_params=True chooses {knob} itself; do not pass {knob}")
    match = _predicate(which)
    result = ConvertReport(to=to, params_before=_num_params(model), which=which)
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
        default_size = tuple(old.kernel_size) if family_traits(to).keeps_dilation else _extent(old)
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
                rest = _merge(rest, layer_class(to, nd).size_kwargs(_iso_value(old, to, kernel_size, rest, target)))
            factory = {"device": old.weight.device, "dtype": old.weight.dtype}
            try:
                new = _build(old, to, kernel_size, {**rest, **factory})
            except ConvArgumentError as error:  # a shape the family cannot take: its own message says why
                result.skipped.append(SkippedLayer(name, str(error)))
                skipped.add(id(old))
                continue
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
        warnings.warn(f"convert(to={to!r}) replaced nothing: " + _nothing_selected(which, result.not_selected),
                      stacklevel=2)
    return (model, result) if report else model


def _short(module: nn.Module) -> str:
    """``ClassName(first line of extra_repr)`` for reports."""
    return f"{type(module).__name__}({module.extra_repr().splitlines()[0] if module.extra_repr() else ''})"


