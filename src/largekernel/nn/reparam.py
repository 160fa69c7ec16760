"""Structurally re-parameterised large-kernel convolutions: RepLKNet, UniRepLKNet and SLaK layers.

At training time each layer is a sum of parallel branches, every branch a
convolution followed by its own BatchNorm:

- :class:`RepLKConv2d` (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022;
  DingXiaoH/RepLKNet-pytorch ``ReparamLargeKernelConv``): a large kernel and a
  parallel small kernel (5x5 in RepLKNet-31B/L, none in RepLKNet-XL).
- :class:`DilatedReparamConv2d` (Ding et al., "UniRepLKNet", CVPR 2024;
  AILab-CVC/UniRepLKNet ``DilatedReparamBlock``): a large kernel and parallel
  small kernels with dilations (13 -> 5x5, 7x7 dilated 2, 3x3 dilated 3, 4, 5).
- :class:`SLaKConv2d` (Liu et al., "More ConvNets in the 2020s: Scaling up Kernels
  Beyond 51x51 using Sparsity", ICLR 2023; VITA-Group/SLaK ``Decom=True``): an
  M x N and an N x M kernel (in N-D: one branch long along each axis, N wide
  elsewhere) and an N x N kernel.

With BatchNorm on its running statistics (eval mode) every branch is a linear
map, and so is the sum: one kernel of the largest branch's extent, each branch's
kernel scaled by its BatchNorm, dilated kernels spread out, all centred and
added, one bias. The forward pass applies that merged kernel in eval mode (one
convolution instead of one per branch) and ``bake()`` returns it as a single
``largekernel.nn.Conv{n}d``, so the large kernel keeps running through the
convolution engine's FFT path (seed 003 swaps RepLKNet's convolutions for FFT
ones). The official code merges only 2-D RepLKNet/UniRepLKNet kernels and never
SLaK's decomposed ones; here all three merge, in 1-D, 2-D and 3-D, grouped.

Submodules are named as in the official repositories (``lkb_origin.conv``,
``small_conv.bn``, ``dil_conv_k5_1``, ``LoRA1``, ...), so their layers'
state_dicts load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from largekernel.functional import convolve
from largekernel.functional._args import ConvArgumentError, ntuple
from largekernel.functional.engine import BACKENDS
from largekernel.nn._base import KernelConvNd, check_choice, must_call
from largekernel.nn.conv import Conv1d, Conv2d, Conv3d, _baked_conv
from largekernel.functional._fx import leaf_under_fx

__all__ = [
    "RepLKConv1d", "RepLKConv2d", "RepLKConv3d",
    "DilatedReparamConv1d", "DilatedReparamConv2d", "DilatedReparamConv3d",
    "SLaKConv1d", "SLaKConv2d", "SLaKConv3d",
    "UNIREPLKNET_BRANCHES",
]

_CONVS = (Conv1d, Conv2d, Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# What the merged kernel reproduces besides the branches' own types: the SyncBatchNorm that
# ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` puts in a BatchNorm's place (in eval, on running statistics).
_MERGED_TYPES = (*_CONVS, *_BATCH_NORMS, nn.SyncBatchNorm)

#: UniRepLKNet's (kernel, dilation) branches per large kernel size (``DilatedReparamBlock``'s defaults).
UNIREPLKNET_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


def _odd(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    # Branches are aligned on their centres; only odd extents have one.
    if any(v % 2 == 0 for v in value):
        raise ConvArgumentError(f"{name} must be odd in every dimension (branches are aligned on their centres), "
                         f"got {value!r}")
    return value


def _dilate(kernel: Tensor, dilation: tuple[int, ...]) -> Tensor:
    """``kernel`` (out, in, *k) spread to its dilated extent ``d (k - 1) + 1``, zeros in between."""
    if all(d == 1 for d in dilation):
        return kernel
    extent = [d * (k - 1) + 1 for k, d in zip(kernel.shape[2:], dilation)]
    spread = kernel.new_zeros(*kernel.shape[:2], *extent)  # (out, in, *extent)
    spread[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = kernel
    return spread


def _frozen_norm(module: nn.Module) -> bool:
    """Whether ``module`` is torchvision's ``FrozenBatchNorm2d`` (what ``timm.utils.freeze`` and torchvision's
    detection backbones put in a BatchNorm's place): a BatchNorm on its running statistics in training too, which
    the merge reproduces exactly (``x * scale + shift``, its forward, with the merge's ``scale`` and ``shift``)."""
    cls = type(module)
    return cls.__name__ == "FrozenBatchNorm2d" and cls.__module__ == "torchvision.ops.misc"


def _merge_reproduces(module: nn.Module) -> bool:
    """Whether the merged kernel computes what ``module`` does as a branch: one of the branches' own types (its
    weight read through torch's parametrizations, as its forward reads it), torchvision's ``FrozenBatchNorm2d``,
    or a layer of the kernel protocol that convolves with the kernel it constructs whatever the input's size, as
    ``convert()`` puts in a branch (DCLS). A user's subclass or wrapper (a LoRA, a quantized layer) computes its
    own forward: the layer calls it."""
    cls = type(module)
    if cls in _MERGED_TYPES or _frozen_norm(module):
        return True
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]  # torch's Parametrized<cls>, which adds nothing to the forward
    return cls in _MERGED_TYPES or (issubclass(cls, KernelConvNd) and cls.forward is KernelConvNd.forward
                                    and cls.kernel_padding is KernelConvNd.kernel_padding and not cls.input_dependent)


def _centre(kernel: Tensor, size: tuple[int, ...]) -> Tensor:
    """``kernel`` (out, in, *k) zero-padded on both sides to ``size``."""
    pad = []
    for k, s in zip(reversed(kernel.shape[2:]), reversed(size)):
        pad += [(s - k) // 2] * 2
    return F.pad(kernel, pad)


class _ReparamConvNd(KernelConvNd):
    """Shared machinery: a sum of (convolution, BatchNorm) branches that merges into one convolution.

    Subclasses create their branches with :meth:`_add_branch` in ``__init__``.
    """

    _nd: int

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 bias: bool, padding_mode: str, device, dtype, backend: str) -> None:
        nd = self._nd
        kernel = _odd(ntuple(kernel_size, nd, "kernel_size", minimum=1), "kernel_size")
        centred = tuple(k // 2 for k in kernel)
        if ntuple(dilation, nd, "dilation", minimum=1) != (1,) * nd:
            raise ConvArgumentError(f"dilation must be 1 (the branches set their own dilations), got {dilation!r}")
        super().__init__(in_channels, out_channels, stride, centred, 1, groups, False, padding_mode, backend, device,
                         dtype)
        given = (padding,) * nd if isinstance(padding, int) and not isinstance(padding, bool) else \
            tuple(padding) if isinstance(padding, (tuple, list)) else padding
        if padding is not None and given != centred and not (padding == "same" and set(self.stride) == {1}):
            raise ConvArgumentError(f"padding must be None (centred), 'same' at stride 1, or kernel_size // 2 = "
                                    f"{centred}; re-parameterised branches share one centre, got {padding!r}")
        self.kernel_size = kernel
        self._branch_names: list[tuple[str, str]] = []
        if bias:  # after the branch sum (the BatchNorms carry one already): zero, as the official layers'
            self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype))

    def _add_branch(self, conv_name: str, bn_name: str, kernel: tuple[int, ...], dilation: tuple[int, ...],
                    opts: dict, container: str | None = None) -> None:
        """Create a branch: a bias-free ``largekernel.nn.Conv{n}d`` centred on the layer's output grid and its
        BatchNorm, as ``container.conv_name`` / ``container.bn_name`` (an ``nn.Sequential``) when ``container``
        is given. ``opts``: ``backend``, ``device``, ``dtype``."""
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        if any(e % 2 == 0 for e in extent) or any(e > k for e, k in zip(extent, self.kernel_size)):
            raise ConvArgumentError(f"branch {container or conv_name} spans {extent}: needs an odd extent of at most "
                             f"kernel_size={self.kernel_size} in every dimension")
        conv = _CONVS[self._nd - 1](self.in_channels, self.out_channels, kernel, stride=self.stride,
                                    padding=tuple(e // 2 for e in extent), dilation=dilation, groups=self.groups,
                                    bias=False, padding_mode=self.padding_mode, **opts)
        bn = _BATCH_NORMS[self._nd - 1](self.out_channels, device=opts["device"], dtype=opts["dtype"])
        if container is None:
            self.add_module(conv_name, conv)
            self.add_module(bn_name, bn)
        else:
            self.add_module(container, nn.Sequential(OrderedDict([(conv_name, conv), (bn_name, bn)])))
            conv_name, bn_name = f"{container}.{conv_name}", f"{container}.{bn_name}"
        self._branch_names.append((conv_name, bn_name))

    def reset_parameters(self) -> None:
        """Re-initialise every branch as constructed (each convolution's and BatchNorm's own ``reset_parameters``:
        torch's defaults, running statistics included) and the bias after the sum (zero)."""
        for conv, bn in self.branches():
            conv.reset_parameters()
            bn.reset_parameters()
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def _branch_calls(self) -> list:
        """Each branch as one call on the input: its ``nn.Sequential`` container where it has one, else its
        convolution then its BatchNorm."""
        calls = []
        for conv_name, bn_name in self._branch_names:
            container = conv_name.rpartition(".")[0]
            if container:
                calls.append(self._submodule(container))
            else:
                conv, bn = self._submodule(conv_name), self._submodule(bn_name)
                calls.append(lambda x, conv=conv, bn=bn: bn(conv(x)))
        return calls

    def _not_merged(self) -> tuple[str, nn.Module] | None:
        """The first module whose call the merged kernel does not reproduce (its name and itself), None if there is
        none: a branch's convolution or BatchNorm replaced by a type of the user's, or a container holding more
        than the two (the layer calls the container)."""
        for conv_name, bn_name in self._branch_names:
            container, _, conv_leaf = conv_name.rpartition(".")
            if container:
                holder = self._submodule(container)
                if holder._modules.keys() != {conv_leaf, bn_name.rpartition(".")[2]} or type(holder) is not nn.Sequential:
                    return container, holder
            for name in (conv_name, bn_name):
                module = self._submodule(name)
                if not _merge_reproduces(module):
                    return name, module
        return None

    def branches(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (convolution, BatchNorm) pairs whose outputs the layer sums, large kernel first."""
        return [(self._submodule(c), self._submodule(b)) for c, b in self._branch_names]

    def _submodule(self, name: str) -> nn.Module:
        """``get_submodule(name)`` for the branches' own names, at every call: a tenth of its cost (its checks and
        messages, for any path a user passes, cost more than this layer's small convolutions at inference)."""
        module = self
        for part in name.split("."):
            module = module._modules[part]
        return module

    @property
    def backend(self) -> str:
        """The convolution engine's path (``"auto" | "direct" | "fft"``): the large branch's, and the merged
        kernel's. Setting it sets every branch's."""
        if getattr(self, "_branch_names", None):
            return getattr(self.get_submodule(self._branch_names[0][0]), "backend", "direct")
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_choice(value, BACKENDS, "backend")
        for conv, _ in self.branches() if hasattr(self, "_branch_names") else ():
            conv.backend = value

    def _merged(self) -> tuple[Tensor, Tensor]:
        """:meth:`_merge` for ``bake()`` and ``construct_kernel()``, which refuse branches whose call the merge does
        not reproduce (the forward calls them instead)."""
        unmerged = self._not_merged()
        if unmerged is not None:
            name, module = unmerged
            raise ConvArgumentError(
                f"{type(self).__name__} cannot merge its branches into one kernel: {name!r} is a "
                f"{type(module).__name__}, whose forward the merge does not reproduce (it merges the layer's own "
                f"convolutions and BatchNorms, torch's parametrizations of them, SyncBatchNorms, torchvision's "
                f"FrozenBatchNorm2d, and layers that "
                f"convolve with a kernel they construct independently of the input, as DCLS); the layer calls it, "
                f"in eval too, but bake() and construct_kernel() need one kernel")
        return self._merge()

    def _merge(self) -> tuple[Tensor, Tensor]:
        """The merged kernel (out, in/groups, *extent) and bias, BatchNorms on their running statistics, in the
        large branch's dtype (half-precision parameters beside float32 statistics, as FSDP2's
        ``MixedPrecisionPolicy`` leaves them, merge in float32)."""
        kernels, biases, dtype = [], [], None
        for (conv, bn), (_, bn_name) in zip(self.branches(), self._branch_names):
            if bn.running_var is None:
                raise ConvArgumentError(
                    f"{type(self).__name__} cannot merge its branches into one kernel: BatchNorm {bn_name!r} keeps "
                    f"no running statistics (track_running_stats=False, as torch.func.replace_all_batch_norm_modules_"
                    f" sets), so it normalises every batch by that batch's statistics: bake() and construct_kernel() "
                    f"need running statistics (the layer itself runs its branches then)")
            weight = conv.construct_kernel() if callable(getattr(conv, "construct_kernel", None)) else conv.weight
            dtype = weight.dtype if dtype is None else dtype
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (out,)
            kernels.append(_dilate(weight * scale.view(-1, *(1,) * (weight.dim() - 1)), conv.dilation))
            shift = bn.bias - bn.running_mean * scale
            biases.append(shift if conv.bias is None else shift + conv.bias * scale)
        size = tuple(max(k.shape[2 + i] for k in kernels) for i in range(self._nd))
        kernel = torch.stack([_centre(k, size) for k in kernels]).sum(0)
        bias = torch.stack(biases).sum(0)
        bias = bias if self.bias is None else bias + self.bias
        return kernel.to(dtype), bias.to(dtype)

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The merged kernel ``(out, in/groups, *kernel_size)`` the layer applies in eval mode.

        BatchNorms enter with their running statistics; ``input_size`` is ignored
        (the kernel does not depend on the input).
        """
        return self._merged()[0]

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        self._spatial_size(input)
        if input.dim() == self._nd + 1:
            # Unbatched, as torch's convolutions take it: a batch of one (the branches' BatchNorms need the batch
            # dimension; in training they normalise over that one sample's positions).
            return self._forward_batched(input.unsqueeze(0)).squeeze(0)
        return self._forward_batched(input)

    def _forward_batched(self, input: Tensor) -> Tensor:
        if (any((bn.training and not _frozen_norm(bn)) or bn.running_var is None for _, bn in self.branches())
                or must_call(*self.children()) or self._not_merged() is not None):
            # Each branch as the reference calls it (its container, else its convolution then its BatchNorm):
            # BatchNorms on batch statistics (training, or keeping no running statistics) normalise each branch
            # on its own, hooks inside the layer run where their module is called (the merged kernel reads
            # the branches' parameters without calling them), and a module put in a branch's place computes its
            # own forward.
            out = None
            for branch in self._branch_calls():
                y = branch(input)
                out = y if out is None else out + y
            # The bias in the branches' dtype: under torch.autocast they return its dtype, as torch's convolution
            # does with its bias (and the merged kernel's convolution in eval).
            return out if self.bias is None else out + self.bias.to(out.dtype).view(-1, *(1,) * self._nd)
        kernel, bias = self._merge()
        return convolve(input, kernel, bias, self.stride, self.padding, 1, self.groups, self.padding_mode,
                        backend=self.backend)

    @torch.no_grad()
    def bake(self, input_size: Sequence[int] | None = None, *, native: bool = False) -> nn.Module:
        """One convolution (a ``largekernel.nn.Conv{n}d`` with this layer's backend, or with ``native=True`` a
        ``torch.nn.Conv{n}d``) holding the merged kernel and bias: the eval-mode output (BatchNorms on their
        running statistics); ``input_size`` is ignored."""
        kernel, bias = self._merged()
        kwargs = {} if native else {"backend": self.backend}
        return _baked_conv(kernel, bias, self.groups, native=native, stride=self.stride, padding=self.padding,
                           padding_mode=self.padding_mode, **kwargs)

    def fuse(self) -> nn.Module:
        """:meth:`bake` under timm's name: ``timm.utils.reparameterize_model(model)`` replaces each child that has
        a ``fuse()`` by what it returns, so it merges these layers' branches as it merges timm's own
        re-parameterisable blocks."""
        return self.bake()

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if set(self.stride) != {1}:
            s += f", stride={self.stride}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


_SHAPE_DOC = """
    Shape:
        - Input: :math:`(N, C_{in}, *)` with {nd} spatial dims, or unbatched :math:`(C_{in}, *)` (a batch of one,
          as torch's convolutions take it: in training the BatchNorms then use that sample's statistics)
        - Output: :math:`(N, C_{out}, *)` (unbatched: :math:`(C_{out}, *)`), each spatial dim
          ``out = floor((in - 1) / stride) + 1``
          (the input's size at stride 1): every branch is padded to share the large kernel's centre.
"""

def _make_layer(base: type[_ReparamConvNd], name: str, nd: int, doc: str, example: str = "") -> type:
    """The public ``nd``-D class of a family (``doc`` with ``{nd}`` placeholders)."""
    return type(name, (base,), {"_nd": nd, "__doc__": doc.replace("{nd}", str(nd)) + example, "__module__": __name__,
                                "__qualname__": name})


_COMMON_ARGS = """
    Args:
        in_channels, out_channels, kernel_size, stride, groups, bias, padding_mode, device, dtype:
            as ``torch.nn.Conv{nd}d``; ``kernel_size`` (the large kernel) must be odd. ``bias``
            adds a bias after the branch sum (the BatchNorms already carry one; models pass False).
        padding: ``None`` (default), ``"same"`` (stride 1) or ``kernel_size // 2``: the only
            padding that keeps the branches' centres together.
        dilation: must be 1 (each branch has its own).
        backend: the convolution engine's path for every branch and for the merged kernel."""


class _RepLKConvNd(_ReparamConvNd):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride=1,
                 padding=None, dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, small_kernel: int | Sequence[int] | None = 5,
                 backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, backend)
        one, opts = (1,) * self._nd, {"backend": backend, "device": device, "dtype": dtype}
        self._add_branch("conv", "bn", self.kernel_size, one, opts, container="lkb_origin")
        self.small_kernel = None
        if small_kernel is not None:
            self.small_kernel = _odd(ntuple(small_kernel, self._nd, "small_kernel", minimum=1), "small_kernel")
            self._add_branch("conv", "bn", self.small_kernel, one, opts, container="small_conv")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, small_kernel={self.small_kernel}"


_REPLK_DOC = """{nd}-D RepLKNet convolution: a large kernel and a parallel small kernel, each with its BatchNorm.

    Submodules ``lkb_origin.conv``/``.bn`` and ``small_conv.conv``/``.bn`` as in
    RepLKNet's ``ReparamLargeKernelConv``.
""" + _COMMON_ARGS + """
        small_kernel: the parallel kernel (odd, at most ``kernel_size``); ``None``: the large
            kernel and its BatchNorm alone (RepLKNet-XL).
""" + _SHAPE_DOC


RepLKConv1d = _make_layer(_RepLKConvNd, "RepLKConv1d", 1, _REPLK_DOC)
RepLKConv2d = _make_layer(_RepLKConvNd, "RepLKConv2d", 2, _REPLK_DOC, """
    Example:
        >>> conv = RepLKConv2d(128, 128, 31, groups=128, bias=False, small_kernel=5).eval()
        >>> deployed = conv.bake()  # one 31x31 largekernel.nn.Conv2d
""")
RepLKConv3d = _make_layer(_RepLKConvNd, "RepLKConv3d", 3, _REPLK_DOC)


class _DilatedReparamConvNd(_ReparamConvNd):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride=1,
                 padding=None, dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, dilated_branches: Sequence[tuple[int, int]] | None = None,
                 backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, backend)
        if dilated_branches is None:
            size = set(self.kernel_size)
            if len(size) != 1 or next(iter(size)) not in UNIREPLKNET_BRANCHES:
                raise ConvArgumentError(f"UniRepLKNet's default branches exist for kernel_size in "
                                 f"{sorted(UNIREPLKNET_BRANCHES)} (the same in every dimension), got "
                                 f"{self.kernel_size}; pass dilated_branches=((kernel, dilation), ...)")
            dilated_branches = UNIREPLKNET_BRANCHES[next(iter(size))]
        pairs = []
        for pair in dilated_branches:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)):
                raise ConvArgumentError(f"dilated_branches must hold (kernel, dilation) pairs of positive ints, "
                                 f"got {pair!r}")
            pairs.append(tuple(pair))
        if len(set(pairs)) != len(pairs):
            raise ConvArgumentError(f"dilated_branches must not repeat a (kernel, dilation) pair, got {tuple(pairs)}")
        self.dilated_branches = tuple(pairs)
        nd, opts = self._nd, {"backend": backend, "device": device, "dtype": dtype}
        self._add_branch("lk_origin", "origin_bn", self.kernel_size, (1,) * nd, opts)
        for k, r in self.dilated_branches:
            self._add_branch(f"dil_conv_k{k}_{r}", f"dil_bn_k{k}_{r}", (k,) * nd, (r,) * nd, opts)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dilated_branches={self.dilated_branches}"


_DILATED_DOC = """{nd}-D UniRepLKNet dilated re-parameterised convolution: a large kernel and dilated small kernels.

    Submodules ``lk_origin``, ``origin_bn``, ``dil_conv_k{k}_{r}``, ``dil_bn_k{k}_{r}``
    as in UniRepLKNet's ``DilatedReparamBlock``.
""" + _COMMON_ARGS + """
        dilated_branches: ``(kernel, dilation)`` pairs, each spanning ``dilation * (kernel - 1) + 1``
            (odd, at most ``kernel_size``); default: UniRepLKNet's for that kernel size
            (:data:`UNIREPLKNET_BRANCHES`, kernel sizes 5-17).
""" + _SHAPE_DOC


DilatedReparamConv1d = _make_layer(_DilatedReparamConvNd, "DilatedReparamConv1d", 1, _DILATED_DOC)
DilatedReparamConv2d = _make_layer(_DilatedReparamConvNd, "DilatedReparamConv2d", 2, _DILATED_DOC, """
    Example:
        >>> conv = DilatedReparamConv2d(64, 64, 13, groups=64, bias=False)  # 13x13 + 5x5, 7x7 d2, 3x3 d3/4/5
""")
DilatedReparamConv3d = _make_layer(_DilatedReparamConvNd, "DilatedReparamConv3d", 3, _DILATED_DOC)


class _SLaKConvNd(_ReparamConvNd):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], stride=1,
                 padding=None, dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, small_kernel: int = 5, backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, backend)
        nd = self._nd
        (n,) = _odd(ntuple(small_kernel, 1, "small_kernel", minimum=1), "small_kernel")
        if n > min(self.kernel_size):
            raise ConvArgumentError(f"small_kernel must be at most every kernel_size, got {n} for {self.kernel_size}")
        self.small_kernel = n
        one, opts = (1,) * nd, {"backend": backend, "device": device, "dtype": dtype}
        for axis in range(nd):  # LoRA{axis + 1}: long along `axis`, n wide elsewhere
            strip = tuple(k if i == axis else n for i, k in enumerate(self.kernel_size))
            self._add_branch("conv", "bn", strip, one, opts, container=f"LoRA{axis + 1}")
        if n < min(self.kernel_size):
            self._add_branch("conv", "bn", (n,) * nd, one, opts, container="small_conv")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, small_kernel={self.small_kernel}"


_SLAK_DOC = """{nd}-D SLaK convolution: kernels long along one axis and ``small_kernel`` wide, plus a small one.

    In 2-D an M x N (``LoRA1``) and an N x M (``LoRA2``) kernel and an N x N one
    (``small_conv``, present when N < M), each ``.conv`` + ``.bn`` as in SLaK's
    ``ReparamLargeKernelConv(Decom=True)``; in N-D one ``LoRA{i}`` per axis.
""" + _COMMON_ARGS + """
        small_kernel: N, the strips' width and the small kernel's size (odd, at most every
            ``kernel_size``).
""" + _SHAPE_DOC


SLaKConv1d = _make_layer(_SLaKConvNd, "SLaKConv1d", 1, _SLAK_DOC)
SLaKConv2d = _make_layer(_SLaKConvNd, "SLaKConv2d", 2, _SLAK_DOC, """
    Example:
        >>> conv = SLaKConv2d(124, 124, 51, groups=124, bias=False, small_kernel=5)  # 51x5 + 5x51 + 5x5
""")
SLaKConv3d = _make_layer(_SLaKConvNd, "SLaKConv3d", 3, _SLAK_DOC)
