"""Building blocks shared by the architectures: the convolution factory, DropPath, channels-first LayerNorm.

The factory is the one place where a model's ``conv="..."`` choice becomes a
layer, following timm's ``create_conv2d``: a model asks for "a depthwise spatial
convolution of extent ``kernel_size``" and gets a dense convolution, an FFT
convolution, a dilated one, or one of the learnable-kernel families of the seed
papers (DCLS, Khalfaoui-Hassani et al. 2023; CKConv / FlexConv, Romero et al.
2022; NIFF, Grabinski et al. 2023; SGConv, Li et al. 2023; S4D, Gu et al. 2022),
or a structurally re-parameterised one (RepLKNet, Ding et al. 2022; UniRepLKNet,
Ding et al. 2024; SLaK, Liu et al. 2023).

At stride 1 every family returns an output of the input's spatial size
("same"), so that families are interchangeable inside a residual block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import import_module
from typing import Sequence

import torch
from torch import Tensor, nn

from largekernel.functional._args import ConvArgumentError, ntuple
from largekernel.functional._fx import traced

__all__ = [
    "CONV_TYPES",
    "REPARAM_TYPES",
    "FamilyTraits",
    "family_traits",
    "family_class",
    "register_family",
    "conv_types",
    "create_conv",
    "layer_class",
    "same_padding",
    "DropPath",
    "LayerNormChannelsFirst",
    "create_norm",
    "Classifier",
    "Backbone",
    "GradCheckpointing",
    "take_indices",
    "Stage",
    "StagedClassifier",
    "like_parameters",
]

# Families whose kernel is a plain dense tensor, built here from torch / largekernel.nn.Conv.
_DENSE_TYPES = ("conv", "fft", "dilated")
# Learnable-kernel families: conv name -> (module, class name with {dim} placeholder).
_LEARNABLE_TYPES: dict[str, tuple[str, str]] = {
    "dcls": ("largekernel.nn.dcls", "DclsConv{dim}d"),
    "flexconv": ("largekernel.nn.flexconv", "FlexConv{dim}d"),
    "ckconv": ("largekernel.nn.flexconv", "CKConv{dim}d"),
    "niff": ("largekernel.nn.niff", "NIFFConv{dim}d"),
    "sgconv": ("largekernel.nn.sequence", "SGConv{dim}d"),
    "s4d": ("largekernel.nn.sequence", "S4DConv{dim}d"),
    "replk": ("largekernel.nn.reparam", "RepLKConv{dim}d"),
    "dilated_reparam": ("largekernel.nn.reparam", "DilatedReparamConv{dim}d"),
    "slak": ("largekernel.nn.reparam", "SLaKConv{dim}d"),
}
CONV_TYPES: tuple[str, ...] = _DENSE_TYPES + tuple(_LEARNABLE_TYPES)
#: Families whose branches end in BatchNorms (which carry the bias): they merge into one dense kernel.
REPARAM_TYPES: tuple[str, ...] = ("replk", "dilated_reparam", "slak")


@dataclass(frozen=True)
class FamilyTraits:
    """What model surgery needs to know of a family to replace a convolution faithfully.

    ``keeps_dilation``: its ``kernel_size`` counts taps and it takes the original's dilation (else it spans
    the dilated extent with its own grid); ``fixed_extent``: its kernel's extent is fixed once built (so TF
    "SAME" padding can be computed outside it; FlexConv crops while training, NIFF's is the input);
    ``padding_modes``: the padding modes it applies.
    """

    keeps_dilation: bool = False
    fixed_extent: bool = True
    padding_modes: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")


_TRAITS = {
    "conv": FamilyTraits(keeps_dilation=True), "fft": FamilyTraits(keeps_dilation=True),
    "dcls": FamilyTraits(keeps_dilation=True), "flexconv": FamilyTraits(fixed_extent=False),
    "niff": FamilyTraits(fixed_extent=False), "sgconv": FamilyTraits(padding_modes=("zeros",)),
    "s4d": FamilyTraits(padding_modes=("zeros",)),
}


# Families added with register_family: name -> {dim: class}.
_REGISTERED: dict[str, dict[int, type[nn.Module]]] = {}


def conv_types() -> tuple[str, ...]:
    """Every family name ``conv=`` accepts: the built-in :data:`CONV_TYPES` and the registered ones."""
    return CONV_TYPES + tuple(_REGISTERED)


def _check_conv(conv: str) -> None:
    if conv not in CONV_TYPES and conv not in _REGISTERED:
        raise ConvArgumentError(f"conv must be one of {conv_types()}, got {conv!r}")


def register_family(name: str, classes: type[nn.Module] | Sequence[type[nn.Module]], *,
                    traits: FamilyTraits | None = None) -> None:
    """Add a layer family to the factory: ``create_model(..., conv=name)``, :func:`largekernel.convert` (``to=name``,
    ``iso_params`` through its ``size_knob``), :func:`largekernel.bake`, counting and the analysis then take it.

    ``classes``: one :class:`largekernel.nn.KernelConvNd` subclass per dimension it provides (its ``_nd``). The
    factory builds them as ``cls(in_channels, out_channels, kernel_size=..., stride=..., groups=..., bias=...,
    **options)``: at stride 1 the layer must keep the input's spatial size, so that it can replace any
    depthwise convolution of a residual block. ``traits``: what model surgery needs to know
    (:class:`FamilyTraits`; default: a fixed extent spanning the original's dilated extent, any padding mode).
    """
    from largekernel.nn._base import KernelConvNd

    if not isinstance(name, str) or not name.isidentifier() or name in CONV_TYPES:
        raise ConvArgumentError(f"name must be an identifier other than the built-in families {CONV_TYPES}, got "
                                f"{name!r}")
    classes = [classes] if isinstance(classes, type) else list(classes)
    if not classes or not all(isinstance(c, type) and issubclass(c, KernelConvNd) for c in classes):
        raise ConvArgumentError(f"classes must be KernelConvNd subclasses, got {classes!r}")
    _REGISTERED[name] = {c._nd: c for c in classes}
    _TRAITS[name] = traits or FamilyTraits()


def family_traits(conv: str) -> FamilyTraits:
    """The :class:`FamilyTraits` of family ``conv``."""
    _check_conv(conv)
    return _TRAITS.get(conv, FamilyTraits())


def same_padding(kernel_size: int | Sequence[int], *, dim: int, stride: int | Sequence[int] = 1,
                 dilation: int | Sequence[int] = 1) -> tuple[int, ...] | str:
    """Padding that keeps the spatial size at stride 1 (and gives ``ceil(L / stride)`` for odd extents).

    Returns integer padding when it can be symmetric (odd dilated extent, or any
    stride > 1, where timm's ``((s - 1) + d (k - 1)) // 2`` rule is used) and the
    string ``"same"`` otherwise: an even extent at stride 1 needs one more zero on
    one side, which only ``padding="same"`` expresses.
    """
    k = ntuple(kernel_size, dim, "kernel_size")
    s = ntuple(stride, dim, "stride")
    d = ntuple(dilation, dim, "dilation")
    if all(si == 1 for si in s) and any(di * (ki - 1) % 2 for ki, di in zip(k, d)):
        return "same"
    return tuple(((si - 1) + di * (ki - 1)) // 2 for ki, si, di in zip(k, s, d))


def layer_class(conv: str, dim: int) -> type[nn.Module]:
    """The ``nn.Module`` class that ``create_conv(conv, ..., dim=dim)`` instantiates.

    Raises ``ValueError`` for an unknown family or a dimension the family does not
    provide, and ``ImportError`` naming the family when its module is not installed.
    """
    _check_conv(conv)
    if dim not in (1, 2, 3):
        raise ConvArgumentError(f"dim must be 1, 2 or 3, got {dim!r}")
    if conv in _REGISTERED:
        if dim not in _REGISTERED[conv]:
            raise ConvArgumentError(f"conv={conv!r} has no {dim}-D layer; it provides {sorted(_REGISTERED[conv])}-D")
        return _REGISTERED[conv][dim]
    if conv in _DENSE_TYPES:
        from largekernel.nn import conv as lk_conv

        return getattr(lk_conv, f"Conv{dim}d")
    module_name, pattern = _LEARNABLE_TYPES[conv]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ImportError(f"conv={conv!r} needs the {conv!r} layer family ({module_name}), "
                          f"which is not available in this installation") from err
    name = pattern.format(dim=dim)
    if not hasattr(module, name):
        provided = sorted(n for n in getattr(module, "__all__", ()) if n.startswith(pattern.split("{")[0]))
        raise ValueError(f"conv={conv!r} has no {dim}-D layer ({name}); {module_name} provides {provided}")
    return getattr(module, name)


def family_class(conv: str) -> type[nn.Module]:
    """A layer class of family ``conv`` (its lowest dimension), for what the family declares at class level
    (``size_knob``, ``input_dependent``)."""
    _check_conv(conv)
    if conv in _REGISTERED:
        return next(iter(_REGISTERED[conv].values()))
    if conv in _DENSE_TYPES:
        return layer_class(conv, 1)
    module_name, pattern = _LEARNABLE_TYPES[conv]
    module = import_module(module_name)
    return next(getattr(module, pattern.format(dim=d)) for d in (1, 2, 3) if hasattr(module, pattern.format(dim=d)))


def _dilated_geometry(kernel_size: tuple[int, ...], small: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Small kernel and dilation whose dilated extent ``d (small - 1) + 1`` is closest to ``kernel_size``."""
    if small < 2:
        raise ValueError(f"small_kernel_size must be >= 2 for conv='dilated', got {small!r}")
    ks, ds = [], []
    for k in kernel_size:
        if k <= small:
            ks.append(k)
            ds.append(1)
        else:
            ks.append(small)
            ds.append(max(1, round((k - 1) / (small - 1))))
    return tuple(ks), tuple(ds)


def create_conv(conv: str, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], *, dim: int,
                stride: int | Sequence[int] = 1, groups: int = 1, bias: bool = True, **opts) -> nn.Module:
    """A ``dim``-D convolution of family ``conv`` whose receptive field spans ``kernel_size``.

    ``conv``:

    - ``"conv"``: dense ``largekernel.nn.Conv{dim}d`` (a ``torch.nn.Conv{dim}d``
      subclass) with ``backend`` from ``opts`` (default ``"auto"``).
    - ``"fft"``: the same layer with ``backend="fft"`` (seed 003).
    - ``"dilated"``: a ``small_kernel_size`` (default 3) kernel with the dilation
      whose extent is closest to ``kernel_size`` (7 -> 3x3 dilated 3).
    - ``"dcls"``: ``DclsConv{dim}d`` with ``dilated_kernel_size=kernel_size`` and
      ``kernel_count`` from ``opts`` (default ``2 * kernel_size``, at most the
      box's cells: the DCLS paper's 34 for a 17x17 box; ``kernel_size`` in 1-D).
    - ``"flexconv"``, ``"ckconv"``: ``FlexConv{dim}d`` / ``CKConv{dim}d`` sampling
      their kernel net on a ``kernel_size`` grid (``kernel_net``,
      ``kernel_net_kwargs``, ``mask_init`` ... in ``opts``).
    - ``"niff"``: ``NIFFConv{dim}d``, a kernel as large as the input
      (``kernel_size`` is not used; ``preset``, ``mode`` ... in ``opts``).
    - ``"sgconv"`` (1-D, 2-D), ``"s4d"`` (1-D): depthwise long kernels spanning
      ``kernel_size`` taps on each side (``bidirectional=True`` unless ``opts`` say otherwise).
    - ``"replk"``, ``"dilated_reparam"``, ``"slak"``: ``RepLKConv{dim}d`` (large +
      ``small_kernel``, default 5), ``DilatedReparamConv{dim}d`` (large + UniRepLKNet's
      dilated small kernels, or ``dilated_branches``), ``SLaKConv{dim}d`` (strips
      ``small_kernel`` wide + a small kernel); each branch with its BatchNorm, merged into
      one kernel in eval mode and by ``bake()`` (odd ``kernel_size``).

    Remaining ``opts`` (``padding_mode``, ``bias`` ..., ``device``, ``dtype``, the
    family's own options) are passed to the layer. At stride 1 the output has the
    input's spatial size.
    """
    cls = layer_class(conv, dim)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups must be a positive int dividing in_channels={in_channels} and "
                         f"out_channels={out_channels}, got {groups!r}")
    kernel = ntuple(kernel_size, dim, "kernel_size")
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    if conv in _DENSE_TYPES:
        return _create_dense(conv, cls, in_channels, out_channels, kernel, dim, stride, groups, bias, opts)
    if conv in _REGISTERED:
        return cls(in_channels, out_channels, kernel_size=_squeeze(kernel), stride=stride, groups=groups, bias=bias,
                   **opts)
    return _create_learnable(conv, cls, in_channels, out_channels, kernel, dim, stride, groups, bias, opts)


def _create_dense(conv, cls, in_channels, out_channels, kernel, dim, stride, groups, bias, opts) -> nn.Module:
    opts = dict(opts)
    if conv == "fft":
        backend = opts.pop("backend", "fft")
        if backend != "fft":
            raise ValueError(f"conv='fft' implies backend='fft', got backend={backend!r}")
    else:
        backend = opts.pop("backend", "auto")
    dilation = opts.pop("dilation", 1)
    if conv == "dilated":
        if dilation != 1:
            raise ValueError(f"conv='dilated' chooses the dilation from kernel_size; got dilation={dilation!r}")
        kernel, dilation = _dilated_geometry(kernel, opts.pop("small_kernel_size", 3))
    padding = opts.pop("padding", None)
    if padding is None:
        padding = same_padding(kernel, dim=dim, stride=stride, dilation=dilation)
    return cls(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=bias, backend=backend, **opts)


def _squeeze(kernel: tuple[int, ...]) -> int | tuple[int, ...]:
    """An int for a cubic kernel (how the layers print it), the tuple otherwise."""
    return kernel[0] if len(set(kernel)) == 1 else kernel


def _create_learnable(conv, cls, in_channels, out_channels, kernel, dim, stride, groups, bias, opts) -> nn.Module:
    opts = dict(opts)
    if conv == "dcls":
        box = _squeeze(kernel)
        count = opts.pop("kernel_count", None)
        if count is None:
            count = min(2 * max(kernel), math.prod(kernel)) if dim > 1 else kernel[0]
        padding = opts.pop("padding", None)
        if padding is None:
            padding = same_padding(kernel, dim=dim, stride=stride)
        return cls(in_channels, out_channels, count, box, stride=stride, padding=padding, groups=groups,
                   bias=bias, **opts)
    if conv in ("flexconv", "ckconv"):
        return cls(in_channels, out_channels, kernel_size=_squeeze(kernel),
                   stride=stride, groups=groups, bias=bias, **opts)
    if conv in REPARAM_TYPES:
        return cls(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=bias, **opts)
    if conv == "niff":
        # Input-sized kernel: kernel_size has no meaning; NIFF checks groups (depthwise or full) itself.
        return cls(in_channels, out_channels, stride=stride, groups=groups, bias=bias, **opts)
    # SGConv and S4D are depthwise by construction: one sequence-long filter per channel.
    if groups != in_channels or in_channels != out_channels or any(
            s != 1 for s in ntuple(stride, dim, "stride")):
        raise ConvArgumentError(f"conv={conv!r} is a depthwise stride-1 layer: needs in_channels == out_channels == "
                         f"groups and stride=1, got in_channels={in_channels}, out_channels={out_channels}, "
                         f"groups={groups}, stride={stride!r}")
    # A spatial convolution sees both sides: bidirectional kernels unless the caller asks for causal ones.
    opts.setdefault("bidirectional", True)
    return cls(in_channels, out_channels, kernel_size=_squeeze(kernel), bias=bias, **opts)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample, scale the rest."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ...)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerNormChannelsFirst(nn.LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, *spatial) tensor, as ConvNeXt's ``LayerNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.movedim(1, -1)  # (B, *spatial, C)
        x = super().forward(x)
        return x.movedim(-1, 1)  # (B, C, *spatial)


def create_norm(norm: str, channels: int, dim: int) -> nn.Module:
    """``"batch"`` (BatchNorm{dim}d) or ``"layer"`` (LayerNorm over channels) for (B, C, *spatial) input."""
    if norm == "batch":
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1](channels)
    if norm == "layer":
        return LayerNormChannelsFirst(channels, eps=1e-6)
    raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")


class Classifier(nn.Module):
    """timm's classifier interface for models that pool to ``num_features`` and end in a linear ``head``.

    Subclasses set ``num_features``, ``num_classes`` and ``head`` and implement
    ``forward_features`` and ``forward_head``.
    """

    num_features: int
    num_classes: int
    #: timm's pooling name: ``"avg"`` (global average pooling), or ``""`` (none: ``forward`` returns the feature
    #: map, normed as the head norms; set by ``reset_classifier(0, "")``).
    global_pool: str = "avg"

    @property
    def head_hidden_size(self) -> int:
        """Channels of the pooled features the head takes (timm's attribute; no pre-logits layer here)."""
        return self.num_features

    def no_weight_decay(self) -> set[str]:
        return set()

    def get_classifier(self) -> nn.Module:
        """The classifier layer (timm's ``get_classifier``)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a fresh ``num_classes``-way linear layer (0: identity, features out), on the
        model's device and in its dtype. ``global_pool`` as timm takes it: None (unchanged), ``"avg"``, or ``""``
        (no pooling: ``forward`` returns the feature map, the head's norm applied at each position as timm's heads
        apply theirs; needs ``num_classes=0``)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"global_pool must be None, 'avg' (these models pool by averaging) or '' (no pooling, "
                             f"with num_classes=0), got {global_pool!r}")
        if global_pool == "" and num_classes:
            raise ValueError(f"global_pool='' (no pooling) returns the feature map and takes no classifier: "
                             f"num_classes must be 0, got {num_classes}")
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head = like_parameters(self, head)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return self._unpooled(x) if self.global_pool == "" else self.forward_head(x)

    def _unpooled(self, x: Tensor) -> Tensor:
        """``global_pool=""``: the feature map with the head's norm (if any) applied at each position, as timm's
        heads apply theirs without pooling (a LayerNorm over the channels; RepLKNet's BatchNorm on the map)."""
        norm = getattr(self, "norm", None)
        if norm is None or isinstance(norm, nn.Identity):
            return x
        if isinstance(norm, nn.LayerNorm):
            return norm(x.movedim(1, -1)).movedim(-1, 1)
        return norm(x)


def take_indices(count: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: the absolute positions among ``count`` feature maps that ``indices``
    names (None: all; an int ``n``: the last ``n``; a sequence: those, negative ones counted from the end) and
    the largest of them."""
    if indices is None:
        indices = count
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices} asks for the last {indices} feature maps: must be in [1, {count}]")
        taken = list(range(count - indices, count))
    else:
        taken = []
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not -count <= i < count:
                raise ValueError(f"indices must be ints in [-{count}, {count}) for the {count} feature maps, "
                                 f"got {indices!r}")
            taken.append(i % count)
        if not taken:
            raise ValueError("indices must name at least one feature map, got an empty sequence")
    return taken, max(taken)


class GradCheckpointing:
    """timm's ``set_grad_checkpointing`` for a model whose forward runs ``Sequential``\ s of blocks through
    :meth:`_blocks`."""

    #: Recompute each block in the backward instead of keeping its activations (``set_grad_checkpointing``).
    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's forward in the backward (``torch.utils.checkpoint``, non-reentrant) instead of
        keeping its activations: less memory, one more forward per block. As for timm's models, a BatchNorm in a
        block updates its running statistics again when its block is recomputed."""
        self.grad_checkpointing = bool(enable)

    def _blocks(self, blocks: nn.Module, x: Tensor) -> Tensor:
        """``blocks(x)``, each block checkpointed while gradient checkpointing is on and autograd records."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return blocks(x)
        from torch.utils.checkpoint import checkpoint

        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x


class Backbone(GradCheckpointing):
    """timm's backbone methods for a :class:`Classifier` whose features are ``stages(stem(x))``, each stage a
    ``downsample`` then ``blocks`` (or a ``Sequential`` of blocks), and whose ``feature_info`` names entries
    of ``stem`` or ``stages``: ``forward_intermediates``, ``prune_intermediate_layers`` (so timm's
    ``features_only=True, feature_cls="getter"`` works), ``group_matcher`` (timm's layer-wise learning-rate decay)
    and ``set_grad_checkpointing``."""

    def _check_input(self, x: Tensor) -> None:
        """Raise a clear error for an input ``forward_features`` cannot take (subclasses)."""

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def _run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return stage(x)  # the stage's own call (hooks on it, as feature_info's modules, run)
        if hasattr(stage, "blocks"):
            return self._blocks(stage.blocks, stage.downsample(x))
        return self._blocks(stage, x)

    def _feature_path(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` in forward order: the stem's entries, then each stage."""
        return ([(f"stem.{n}", m) for n, m in self.stem.named_children()]
                + [(f"stages.{n}", m) for n, m in self.stages.named_children()])

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the feature maps of ``feature_info`` at ``indices`` (None: all; an int
        ``n``: the last ``n``; negative positions from the end), in forward order; with ``intermediates_only``
        that list, else ``(forward_features(x), list)`` (the last map reached with ``stop_early``). ``norm``: these
        models norm nothing before pooling (timm's ConvNeXt likewise): accepted, no effect. ``output_fmt``:
        ``"NCHW"`` (channels first) only."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (these models' feature maps are channels-first), got "
                             f"{output_fmt!r}")
        names = [f["module"] for f in self.feature_info]
        taken, last = take_indices(len(names), indices)
        wanted = {names[i] for i in taken}
        self._check_input(x)
        intermediates = []
        for name, module in self._feature_path():
            x = self._run_stage(module, x) if name.startswith("stages.") else module(x)
            if name in wanted:
                intermediates.append(x)
            if name == names[last] and (stop_early or intermediates_only):
                break
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's ``prune_intermediate_layers``: drop the stem entries and stages after the last feature map
        ``indices`` names (and, with ``prune_head``, the head, its norm and the pooling: ``forward`` then returns
        the last kept map, as timm's pruned models do; ``prune_norm``: nothing else to drop here). Returns the
        maps' absolute positions."""
        names = [f["module"] for f in self.feature_info]
        taken, last = take_indices(len(names), indices)
        path = [name for name, _ in self._feature_path()]
        kept = set(path[:path.index(names[last]) + 1])
        self.stem = nn.Sequential(*(m for n, m in self.stem.named_children() if f"stem.{n}" in kept)) \
            if isinstance(self.stem, nn.Sequential) else self.stem
        self.stages = nn.Sequential(*(m for n, m in self.stages.named_children() if f"stages.{n}" in kept))
        self.feature_info = self.feature_info[:last + 1]
        if prune_head:  # as timm's: no head, no pooling (forward returns the last kept map)
            self.num_features = self.feature_info[-1]["num_chs"]
            if hasattr(self, "norm"):
                self.norm = nn.Identity()
            self.reset_classifier(0, "")
        return taken

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ``group_matcher`` (layer-wise learning-rate decay, ``create_optimizer_v2(layer_decay=...)``): the
        stem, then each stage (``coarse``) or each block, a stage's downsampling with its first block, as timm
        groups its ConvNeXt and ResNet."""
        if coarse:
            return {"stem": r"^stem", "blocks": r"^stages\.(\d+)"}
        if all(hasattr(stage, "blocks") for stage in self.stages):
            return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)\.downsample", (0,)),
                                                 (r"^stages\.(\d+)\.blocks\.(\d+)", None)]}
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)\.(\d+)"}


class Stage(nn.Module):
    """One resolution of a hierarchical network: ``blocks(downsample(x))``."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class StagedClassifier(Backbone, Classifier):
    """A ``stem`` of stride 4, ``stages`` halving the resolution after the first, global average pooling,
    ``norm`` and a linear ``head`` (the large-kernel CNNs: RepLKNet, UniRepLKNet, SLaK).

    Subclasses build ``stem`` and ``stages``, then call :meth:`_build_head`; ``feature_info``
    describes each stage's output as timm does.
    """

    #: Smallest input side the network accepts.
    min_input_size = 1

    def _build_head(self, dims: Sequence[int], num_classes: int, drop_rate: float, *, norm_map: bool = False) -> None:
        """``norm_map``: BatchNorm on the last feature map before pooling (RepLKNet); else LayerNorm after it."""
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.feature_info = [{"num_chs": chs, "reduction": 4 * 2 ** i, "module": f"stages.{i}"}
                             for i, chs in enumerate(dims)]
        self.norm_map = norm_map
        self.norm = nn.BatchNorm2d(dims[-1]) if norm_map else nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    def _check_input(self, x: Tensor) -> None:
        if not traced(x) and (x.dim() != 4 or min(x.shape[-2:]) < self.min_input_size):
            raise ValueError(f"{type(self).__name__} expects (B, C, H, W) input with H, W >= {self.min_input_size}, "
                             f"got shape {tuple(x.shape)}")

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x).mean(dim=(2, 3)) if self.norm_map else self.norm(x.mean(dim=(2, 3)))  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)  # (B, num_classes)


def _trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """timm's init for linear layers and dense convolutions (``model.apply(_trunc_normal_init)``). Learnable-kernel
    layers keep their own init, their kernel nets included: those are built of ``KernelNetLinear``, not
    ``nn.Linear`` (until 2026-12-06 they were drawn again with std 0.02: a SIREN's first layer at 1/15 of its
    scale, NIFF's frequency nets at 1/17)."""
    dense_conv = isinstance(module, nn.modules.conv._ConvNd) and type(module).__module__ in (
        "torch.nn.modules.conv", "largekernel.nn.conv")
    if type(module) is nn.Linear or dense_conv:
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _linear_rates(rate: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over ``n`` blocks (exact in Python floats)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def _check_positive(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def like_parameters(model: nn.Module, module: nn.Module) -> nn.Module:
    """``module`` (a head made by ``reset_classifier``) on the device and in the floating dtype of ``model``'s
    parameters, so that a model moved to a GPU or cast keeps working after its classifier is replaced."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    return module if reference is None else module.to(reference.device, reference.dtype)
