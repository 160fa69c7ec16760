"""The kernel protocol: one base class for every layer that builds its kernel (seeds 000-004).

Modelled on ``torch.nn.modules.conv._ConvNd``: :class:`KernelConvNd` normalises torch's
convolution arguments once (one ``ntuple``, one padding-mode list, one error type,
:class:`~largekernel.functional.ConvArgumentError`, which code catching torch's own
convolution errors also catches), owns the bias, the padding, the backend and
``bake()``, and applies the kernel through the engine. A family implements one method,

    construct_kernel(input_size=None) -> Tensor   # (out_channels, in_channels / groups, *kernel)

the dense kernel it applies to an input of that spatial size (families whose kernel does
not depend on the input accept and ignore it), and declares its metadata:

* ``size_knob``: the constructor argument that sets its parameter count (what
  :func:`largekernel.convert` and the study adjust to match parameter counts, with ``size_kwargs``);
* ``input_dependent``: whether the kernel depends on the input size (``bake`` then needs it);
* parameter marks (learning-rate scales, no weight decay) are set on the parameters where
  they are created, with :func:`largekernel.nn.mark`.

``forward`` is one call, ``convolve(x, self.construct_kernel(x.shape[2:]), ...)``; a family
whose kernel has structure the dense form would waste (a pointwise map after a depthwise
kernel, a filter given in the frequency domain, branches with their own BatchNorm in
training) overrides ``forward`` and keeps ``construct_kernel`` as the dense equivalent.
"""

from __future__ import annotations

import operator
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from largekernel.functional._args import PADDING_MODES, ConvArgumentError, ntuple, per_side_padding
from largekernel.functional.engine import BACKENDS, convolve
from largekernel.nn.conv import _baked_conv, size_checked
from largekernel.functional._fx import leaf_under_fx, own_leaf_forward
from largekernel.functional._tracing import NotScriptable

__all__ = ["KernelConvNd", "positive_int", "check_choice", "centre_kernel"]


def positive_int(value, name: str) -> int:
    """``value`` if it is a positive int (not a bool), else :class:`ConvArgumentError` naming ``name``."""
    return ntuple(value, 1, name, minimum=1)[0]


def centre_kernel(kernel: Tensor, size: Sequence[int]) -> Tensor:
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
        kernel = torch.nn.functional.pad(kernel, pad)
    return kernel


def must_call(*modules: nn.Module, own: tuple[type, ...] = ()) -> bool:
    """Whether code that reads the parameters of ``modules`` without calling them must call them instead: where
    any of them, or a module inside one, has forward or backward hooks, or hooks are registered for every module
    (``torch.nn.modules.module.register_module_forward_hook`` and the like); given ``own``, the types whose
    forward that code reproduces, also where a module that holds parameters is of another type.

    The kernel nets' fast paths read their layers' parameters (one batched product for several layers, the output
    layer fused with FlexConv's mask), as a re-parameterised layer's merged kernel reads its branches'. Hooks run
    only where a module is called: ``torch.nn.utils.prune`` and the hook-based ``weight_norm`` / ``spectral_norm``
    recompute a layer's weight in a forward pre-hook, and the user's hooks read or change what a layer computes.
    A layer the user put in place of the library's (a LoRA or quantized wrapper, a parametrized layer) computes
    its own forward. There the layers are called as modules: the same function, the hooks run, as in torch."""
    every = nn.modules.module
    if (every._global_forward_hooks or every._global_forward_pre_hooks or every._global_backward_hooks
            or every._global_backward_pre_hooks):
        return True
    return any(_called_in(module, own) for module in modules)


def _called_in(module: nn.Module, own: tuple[type, ...]) -> bool:
    """:func:`must_call` for ``module`` and the modules inside it (the tree walked by hand: ``modules()`` costs
    several times as much, and this runs at every call of a kernel net)."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m is None:  # (a child registered as None)
            continue
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
        if own and m._parameters and type(m) not in own:
            return True
        stack.extend(m._modules.values())
    return False


def check_choice(value, options: Sequence, name: str):
    """``value`` if it is one of ``options``, else :class:`ConvArgumentError` naming ``name``."""
    if value not in options:
        raise ConvArgumentError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


class KernelConvNd(NotScriptable, nn.Module):
    """Base of the learnable-kernel layers: torch's convolution arguments, bias, padding, backend, bake.

    Args (as ``torch.nn.ConvNd``, normalised to per-dimension tuples):
        in_channels, out_channels, stride, padding (int, tuple, per-side pairs, ``"same"``,
        ``"valid"``), dilation, groups, bias, padding_mode, backend (``"auto"`` | ``"direct"`` |
        ``"fft"``), device, dtype.
    """

    _nd: ClassVar[int]
    #: The constructor argument that sets the parameter count (None: none does).
    size_knob: ClassVar[str | None] = None
    #: Whether the kernel depends on the input's spatial size.
    input_dependent: ClassVar[bool] = False
    #: Which inputs a kernel baked for one size serves: ``"exact"``ly that size, or any size ``"up to"`` it.
    baked_sizes: ClassVar[str] = "exact"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own_leaf_forward(cls)  # each layer class its own forward, as torch's (torch.compile counts per code)

    def __init__(self, in_channels: int, out_channels: int, stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", backend: str = "auto", device=None,
                 dtype=None) -> None:
        super().__init__()
        nd = self._nd
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ConvArgumentError(f"groups must divide in_channels={in_channels} and out_channels={out_channels}, "
                                    f"got groups={groups}")
        self.stride = ntuple(stride, nd, "stride", minimum=1)
        self.dilation = ntuple(dilation, nd, "dilation", minimum=1)
        if isinstance(padding, str):
            check_choice(padding, ("same", "valid"), "padding")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ConvArgumentError(f"padding='same' requires stride 1 (as in torch), got stride={self.stride}")
        else:
            pads = per_side_padding(padding, (1,) * nd, 1, nd)
            padding = tuple(lo for lo, _ in pads) if all(lo == hi for lo, hi in pads) else pads
        self.padding = padding
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.backend = check_choice(backend, BACKENDS, "backend")
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    # ---- the family's part ------------------------------------------------------------------------

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The dense kernel ``(out_channels, in_channels / groups, *kernel)`` this layer applies to an input of
        spatial ``input_size`` (ignored by families whose kernel does not depend on it)."""
        raise NotImplementedError

    def kernel_padding(self, kernel_size: Sequence[int]):
        """The padding the kernel is applied with (a family with its own rule, e.g. causal, overrides it)."""
        return self.padding

    @classmethod
    def size_kwargs(cls, value: int) -> dict:
        """Constructor options that set the :attr:`size_knob` to ``value`` (merged into the caller's)."""
        if cls.size_knob is None:
            raise ConvArgumentError(f"{cls.__name__} has no size knob: its parameter count is fixed by its "
                                    f"other options")
        return {cls.size_knob: value}

    @classmethod
    def size_limit(cls, kernel_size: Sequence[int]) -> int:
        """The largest :attr:`size_knob` value worth trying for a kernel spanning ``kernel_size``."""
        return 1 << 14

    def fit_dense(self, dense: Tensor, fitted: set[int] | None = None) -> None:
        """Set the parameters so that the kernel this layer builds is the nearest it can to ``dense`` (a dense
        ``(out, in/groups, *k)`` kernel, centred on this layer's); parameters whose ``id`` is in ``fitted`` (shared
        with a layer fitted before) are kept, the others are added to it. Families that can implement it."""
        raise ConvArgumentError(f"{type(self).__name__} cannot take a dense kernel: its kernel depends on the "
                                f"input size or has no dense parameterisation")

    # ---- shared ------------------------------------------------------------------------------------

    def _spatial_size(self, input: Tensor) -> tuple[int, ...]:
        """Check ``input`` like torch's convolutions do (batched or not) and return its spatial size."""
        nd = self._nd
        if not isinstance(input, Tensor):
            raise ConvArgumentError(f"{type(self).__name__} expects a Tensor input, got {type(input).__name__}")
        if input.dim() not in (nd + 1, nd + 2):
            raise ConvArgumentError(f"input must have shape (batch, channels, *spatial) or (channels, *spatial) "
                                    f"with {nd} spatial dims for {type(self).__name__}, got shape {tuple(input.shape)}")
        if input.shape[-nd - 1] != self.in_channels:
            raise ConvArgumentError(f"{type(self).__name__} expects {self.in_channels} input channels, got input "
                                    f"of shape {tuple(input.shape)}")
        if not input.is_floating_point() or input.is_complex():
            raise ConvArgumentError(f"input must be a real floating-point tensor (complex convolutions: "
                                    f"largekernel.nn.Conv{nd}d, functional.convolve and fft_conv), got dtype "
                                    f"{input.dtype}")
        if any(n == 0 for n in input.shape[-nd:]):
            raise ConvArgumentError(f"{type(self).__name__} expects a non-zero size in every spatial dim (as torch's "
                                    f"convolutions), got input of shape {tuple(input.shape)}")
        # A kernel sized from the input needs Python ints (a recorded graph is then specialised on the size: one
        # graph per size); other kernels ignore the size, which stays as the graph has it (symbolic with dynamic
        # shapes; the engine reads it without fixing it).
        sizes = tuple(input.shape[-nd:])
        return tuple(map(operator.index, sizes)) if self.input_dependent else sizes

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        kernel = self.construct_kernel(self._spatial_size(input))
        return convolve(input, kernel, self.bias, self.stride, self.kernel_padding(kernel.shape[2:]), self.dilation,
                        self.groups, self.padding_mode, backend=self.backend)

    def _bake_size(self, input_size: Sequence[int] | None) -> tuple[int, ...] | None:
        if input_size is None:
            if self.input_dependent:
                raise ConvArgumentError(f"bake() of a {type(self).__name__} needs input_size (its kernel depends on "
                                        f"the input's spatial size)")
            return None
        return ntuple(input_size if isinstance(input_size, int) else tuple(input_size), self._nd, "input_size",
                      minimum=1)

    @torch.no_grad()
    def bake(self, input_size: Sequence[int] | None = None, *, native: bool = False) -> nn.Module:
        """One convolution module holding the kernel this layer applies now (to inputs of spatial
        ``input_size``, required when the kernel depends on it; the baked module then refuses other sizes).

        ``native=False``: a ``largekernel.nn.Conv{n}d`` with this layer's backend (large kernels keep the FFT
        path). ``native=True``: a plain ``torch.nn.Conv{n}d`` for any runtime (ONNX, TensorRT); asymmetric
        padding then comes as a padding module in front of it, and a kernel that depends on the input size with a
        size check in front (``InputSizeCheck``), in an ``nn.Sequential``.
        """
        size = self._bake_size(input_size)
        kernel = self.construct_kernel(size)
        return self._baked(kernel, self.kernel_padding(kernel.shape[2:]), size, native)

    def _baked(self, kernel: Tensor, padding, size: tuple[int, ...] | None, native: bool) -> nn.Module:
        """The conv module of :meth:`bake` for ``kernel`` applied with ``padding``."""
        kwargs = {} if native else {"backend": self.backend}
        conv = _baked_conv(kernel, self.bias, self.groups, native=native, stride=self.stride, padding=padding,
                           dilation=self.dilation, padding_mode=self.padding_mode, **kwargs)
        if size is not None and self.input_dependent:
            if not native:
                conv.input_size, conv.input_sizes = size, self.baked_sizes
            else:  # torch's convolution cannot refuse other sizes: a check in front of it does
                conv = size_checked(conv, size, self.baked_sizes)
        return conv

    def _conv_repr(self, family: str = "") -> str:
        """torch's extra_repr conventions: channels, the family's own arguments (``family``, starting with a
        comma), then only the convolution arguments that differ from their defaults."""
        nd = self._nd
        s = f"{self.in_channels}, {self.out_channels}{family}"
        defaults = {"stride": (1,) * nd, "padding": (0,) * nd, "dilation": (1,) * nd, "groups": 1,
                    "padding_mode": "zeros", "backend": "auto"}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        if self.bias is None:
            s += ", bias=False"
        return s
