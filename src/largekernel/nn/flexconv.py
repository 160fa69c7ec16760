"""Continuous kernel convolutions: CKConv and FlexConv.

CKConv (Romero et al., "CKConv: Continuous Kernel Convolution for Sequential
Data", ICLR 2022) samples its kernel from a kernel network on a grid of relative
positions in [-1, 1]^d, so its parameter count does not depend on the kernel's
extent and the same layer can be sampled on any grid. FlexConv (Romero, Bruintjes
et al., "FlexConv: Continuous Kernel Convolutions with Differentiable Kernel
Sizes", ICLR 2022) multiplies the kernel by a learnable anisotropic Gaussian mask
and crops it to where the mask exceeds a threshold (*dynamic cropping*), so the
kernel size is learned and the cost follows it. Separable variants follow CCNN
(Knigge, Romero et al., "Modelling Long Range Dependencies in ND", ICML 2023): a
depthwise continuous kernel then a pointwise channel mixer.

Every layer builds its kernel (batch-independent) and applies it through
:func:`largekernel.functional.convolve`, whose FFT path makes long kernels cheap.

Also here, as functions of a model: :func:`set_resolution` (cross-resolution
evaluation with sampling-rate normalisation), :func:`antialiasing_loss`
(FlexConv's regulariser of MAGNet frequencies above Nyquist),
:func:`kernel_norm_loss` and :func:`mask_extent_loss` (the reference code's L_n
regularisers).
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional._args import ConvArgumentError, ntuple
from largekernel.functional._tracing import compiled_once, region_applies, tracing, transformed
from largekernel.functional.engine import convolve
from largekernel.nn import _eager_op as eager_op
from largekernel.nn._base import KernelConvNd, centre_kernel, must_call
from largekernel.nn._eager_op import EagerInCompile
from largekernel.nn._cache import reuse_without_autograd
from largekernel.nn.kernelnets import _MFN, _KernelNet, create_kernel_net
from largekernel.nn.marks import mark
from largekernel.functional._fx import leaf_under_fx

__all__ = [
    "CKConv1d", "CKConv2d", "CKConv3d", "FlexConv1d", "FlexConv2d", "FlexConv3d",
    "continuous_layers", "set_resolution", "antialiasing_loss", "kernel_norm_loss", "mask_extent_loss",
]

# FlexConv's mask initialisation (std on the [-1, 1] grid) for CIFAR-size 33-point grids.
_REFERENCE_MASK_INIT = 0.075
# Under torch.compile a cropping layer runs eagerly as one operator (crop included) where its kernel net's output on
# the whole grid, samples times kernel channels, reaches this size; a smaller one is traced whole, since applying the
# whole grid costs less there than the operator (a compiled call's fixed cost, and its eager code is not fused).
# Chains of 6 layers, training steps, compiled/eager through the operator against traced (docs/deploy.md):
# 2-D 63x63 grid x 16 channels 1.17 against 2.00; 1-D 1023 x 32, 1.33 against 1.11; 2-D 17x17 x 32, 1.30
# against 1.02; a converted ConvNeXt-atto (7x7 grids) 1.22 against 0.74.
_EAGER_MIN_VOLUME = 2**15
# Under torch.compile a cropping layer traced with its whole grid (below _EAGER_MIN_VOLUME) applies its kernel, zero
# outside the crop, through one operator that crops it first (_FlexConvNd._convolve) where the whole grid's
# convolution costs at least this many multiply-adds (input positions x kernel values), so that the convolution
# costs the crop, as in eager; below it the whole grid costs less than the operator's call. Training steps,
# compiled/eager with the operator against without (docs/deploy.md): 2-D 31x31 grid, 32 channels depthwise,
# batch 8, 32x32 (2.5e8) 1.20 against 1.78; six 17x17 layers (7.6e7) 0.99 against 1.16; a converted
# ConvNeXt-atto at 64x64, batch 2 (7x7 grids, at most 1e6) 0.86 against 0.72.
_CROP_OP_MIN_WORK = 2**23
# Added to the mask's squared width (and floor of its width) so a collapsed mask stays finite.
_EPS = 1e-12
# Parameter dtypes whose layers sample their kernel in float32 (_ContinuousConvNd._sample).
_HALF = (torch.float16, torch.bfloat16)


def _first_kept(mean, root, k: int, causal: bool):
    """Index of the first of ``k`` grid samples over [-1, 1] that dynamic cropping keeps along one dimension
    (see ``_FlexConvNd._crop``), from the mask's ``mean`` and half-width ``root`` along it: Python floats (an
    int returned) or float64 tensors (a float64 tensor returned, for a recorded graph). One rule for both,
    so that cropping and its zero window agree."""
    if k <= 2:
        return 0
    step = 2.0 / (k - 1)
    # |mean| + root = max(|mean - root|, |mean + root|) for root >= 0, to the bit
    edge = mean - root + 1.0 if causal else 1.0 - (abs(mean) + root)
    first = edge / step - 1e-6  # tolerance: a sample on the threshold's boundary is kept
    last = k - 2 if causal else (k - 3) // 2 if k % 2 else k // 2 - 1
    if isinstance(first, Tensor):
        return torch.ceil(first).clamp(0, last)
    return min(max(math.ceil(first), 0), last)


def _grid_1d(size: int, causal: bool, device, dtype) -> Tensor:
    """``size`` equispaced relative positions over [-1, 1]; a single sample sits at the anchor (0, or +1 if causal)."""
    if size == 1:
        return torch.full((1,), 1.0 if causal else 0.0, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)


class _ContinuousConvNd(KernelConvNd):
    """Shared machinery of CKConv / FlexConv: kernel sampling, padding, resolution.

    Subclasses only decide which part of the grid is sampled (:meth:`_crop`) and
    what multiplies the sampled kernel (:meth:`_mask`).
    """

    _nd: int = 0
    _default_kernel_net: str = "siren"
    size_knob = "hidden_channels"  # of the kernel net (kernel_net_kwargs)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] | None = None, *,
                 kernel_net: str | nn.Module | None = None, kernel_net_kwargs: dict | None = None, stride=1,
                 padding: str | int | Sequence[int] = "same", groups: int = 1, bias: bool = True,
                 causal: bool = False, separable: bool = False, padding_mode: str = "zeros",
                 backend: str = "auto", chang_init: bool = True, device=None, dtype=None) -> None:
        nd = self._nd
        if causal and nd != 1:
            raise ConvArgumentError(f"causal=True is defined for 1-D sequences only, got a {nd}-D layer")
        if causal and padding != "same":
            raise ConvArgumentError(f"a causal layer pads on the left by itself; padding must stay 'same', got "
                                    f"{padding!r}")
        if separable and groups != 1:
            raise ConvArgumentError(f"separable=True builds its own depthwise + pointwise pair; groups must be 1, "
                                    f"got {groups}")
        # "same" at any stride: the kernel is padded (k - 1) // 2 before and k // 2 after (ceil(L / stride) out).
        super().__init__(in_channels, out_channels, stride, "valid" if padding == "same" else padding, 1, groups,
                         bias, padding_mode, backend, device, dtype)
        self.padding = padding if padding == "same" else self.padding
        factory = {"device": device, "dtype": dtype}
        self.causal = bool(causal)
        self.separable = bool(separable)
        self.chang_init = bool(chang_init)
        # Current sampling grid and the grid it was trained on (for the sampling-rate normalisation);
        # both None until set, from the first input, when kernel_size is None.
        self._kernel_size: tuple[int, ...] | None = None
        self._base_kernel_size: tuple[int, ...] | None = None

        if kernel_size is not None:
            self._kernel_size = self._base_kernel_size = ntuple(kernel_size, nd, "kernel_size", minimum=1)

        # Separable: one depthwise continuous kernel per input channel, then a 1x1 channel mixer.
        kernel_channels = self._kernel_channels()
        if kernel_net is None:
            kernel_net = self._default_kernel_net
        if isinstance(kernel_net, nn.Module):
            if kernel_net_kwargs:
                raise ConvArgumentError("kernel_net_kwargs only applies when kernel_net is given by name")
            if getattr(kernel_net, "out_features", kernel_channels) != kernel_channels:
                raise ConvArgumentError(f"kernel_net must produce {kernel_channels} values per position, "
                                        f"its out_features is {kernel_net.out_features}")
            self.kernel_net = kernel_net
        else:
            defaults = self._kernel_net_defaults(kernel_net) if isinstance(kernel_net, str) else {}
            kwargs = {**defaults, **(kernel_net_kwargs or {}), **factory}
            self.kernel_net = create_kernel_net(kernel_net, nd, kernel_channels, **kwargs)
        if separable:
            self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, **factory))
        else:
            self.register_parameter("pointwise", None)
        self.reset_parameters()

    def _kernel_net_defaults(self, name: str) -> dict:
        return {}

    # ------------------------------------------------------------------ parameters and state

    def reset_parameters(self) -> None:
        """Re-initialise the kernel net (its own scheme), the channel mixer, the bias and the output scale."""
        if hasattr(self.kernel_net, "reset_parameters"):
            self.kernel_net.reset_parameters()
        with torch.no_grad():
            if self.pointwise is not None:
                nn.init.kaiming_normal_(self.pointwise)
            if self.bias is not None:
                self.bias.zero_()
        if self._kernel_size is not None:
            self._chang_initialize()

    @torch.no_grad()
    def _chang_initialize(self) -> None:
        """Scale the kernel net's output layer by ``sqrt(1 / fan_in)`` (Chang et al. 2020, as in CCNN).

        ``fan_in`` counts the kernel samples the layer applies at initialisation
        (after cropping) times the input channels per group, so a layer starts
        with roughly variance-preserving outputs whatever its kernel size and
        width. Weight and bias both: the bias is one constant kernel per channel
        pair (MAGNet's is drawn like a weight), and left unscaled it alone makes
        the output grow as ``sqrt(in_channels)``.
        """
        output = getattr(self.kernel_net, "output", None)
        if not self.chang_init or not isinstance(output, nn.Linear):
            return
        fan_in = self._kept_samples()
        if not self.separable:
            fan_in = fan_in * (self.in_channels // self.groups)
        # A count held in a tensor (see _kept_samples) gives the same float64 square root, then the same product.
        scale = math.sqrt(1.0 / fan_in) if isinstance(fan_in, int) else torch.sqrt(1.0 / fan_in)
        output.weight.mul_(scale)
        if output.bias is not None:
            output.bias.mul_(scale)

    def _kept_samples(self) -> int | Tensor:
        """How many kernel samples the layer applies now (after cropping)."""
        return math.prod(self.effective_kernel_size())

    def get_extra_state(self) -> Tensor:
        """The grid sizes as a tensor, ``(2, nd)`` int64: the current grid then the base one, ``-1`` while
        unset (lazy). A tensor, not a dict, so that ``safetensors`` saves it and weight-averaging code
        (timm's ``ModelEmaV2/V3``) can walk the state dict."""
        rows = [(-1,) * self._nd if ks is None else ks for ks in (self._kernel_size, self._base_kernel_size)]
        return torch.tensor(rows, dtype=torch.int64)

    def set_extra_state(self, state: Tensor | dict) -> None:
        """Restore the grid sizes from :meth:`get_extra_state`'s tensor, or from the dict older versions saved."""
        if isinstance(state, dict):
            sizes = [state["kernel_size"], state["base_kernel_size"]]
        else:
            if not isinstance(state, Tensor) or tuple(state.shape) != (2, self._nd):
                raise ValueError(f"{type(self).__name__} extra state must be a (2, {self._nd}) tensor of grid "
                                 f"sizes, got {state!r}")
            sizes = [None if min(row) < 0 else row for row in state.tolist()]
        self._kernel_size, self._base_kernel_size = (None if ks is None else tuple(int(k) for k in ks)
                                                     for ks in sizes)

    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        """Samples of the current grid per dimension (before cropping); None until the first input if lazy."""
        return self._kernel_size

    @property
    def base_kernel_size(self) -> tuple[int, ...] | None:
        """The grid the layer was built (trained) on; the sampling-rate normalisation is relative to it."""
        return self._base_kernel_size

    def _require_kernel_size(self) -> tuple[int, ...]:
        if self._kernel_size is None:
            raise RuntimeError(f"{type(self).__name__} was built with kernel_size=None and sizes its kernel from "
                               f"its first input; call it once (or pass kernel_size) before asking for the kernel")
        return self._kernel_size

    def _materialize(self, spatial: Sequence[int]) -> None:
        """Lazy kernel size: the whole input (causal: its length) or the smallest odd size covering it."""
        spatial = tuple(map(operator.index, spatial))  # Python ints (a symbolic size is fixed here: module state)
        sizes = tuple(n if self.causal else n | 1 for n in spatial)
        self._kernel_size = self._base_kernel_size = sizes
        self._init_for_grid()

    def _init_for_grid(self) -> None:
        """Initialisation that needs the kernel grid (lazy layers: run at the first input)."""
        self._chang_initialize()

    def resample(self, kernel_size: int | Sequence[int]) -> None:
        """Sample the continuous kernel on a grid of ``kernel_size`` points (same [-1, 1] extent).

        The sampled values are rescaled by the ratio of grid spacings,
        ``prod_d (base_d - 1) / (kernel_size_d - 1)``, so the discrete sum keeps
        approximating the same integral: a layer trained at 16x16 with a 17-point
        kernel runs at 32x32 with ``resample(33)``.
        """
        self._require_kernel_size()
        self._kernel_size = ntuple(kernel_size, self._nd, "kernel_size", minimum=1)

    def sampling_rate_norm(self) -> float:
        """Factor on the sampled kernel: ratio of the current grid spacing to the base one (1 at base)."""
        base, current = self._base_kernel_size, self._require_kernel_size()
        norm = 1.0
        for b, c in zip(base, current):
            if b > 1 and c > 1:
                norm *= (b - 1) / (c - 1)
        return norm

    # ------------------------------------------------------------------ kernel construction

    def _crop(self, axes: list[Tensor]) -> list[Tensor]:
        return axes

    def _mask(self, axes: list[Tensor]) -> Tensor | None:
        return None

    def _reference_tensor(self) -> Tensor | None:
        """The tensor whose device and dtype the grid follows: the kernel net's first floating parameter (a
        parameter-free net: its buffers, then ours)."""
        tensors = itertools.chain(self.kernel_net.parameters(), self.kernel_net.buffers(), self.parameters())
        return next((t for t in tensors if t.is_floating_point()), None)

    def _axes(self) -> list[Tensor]:
        ref = self._reference_tensor()
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        return [_grid_1d(k, self.causal, device, dtype) for k in self._require_kernel_size()]

    def effective_kernel_size(self) -> tuple[int, ...]:
        """Size of the kernel this layer applies now (after cropping), per dimension."""
        return tuple(a.numel() for a in self._crop(self._axes()))

    def _sample(self) -> Tensor:
        """The masked, cropped, normalised kernel as the kernel net channels it: ``(C_k, *k)``.

        A layer in float16 or bfloat16 samples it in float32 (float32 copies of its parameters and buffers, which
        gradients flow through) and rounds the kernel once: a half-precision grid merges neighbouring samples
        (bfloat16 holds 513 distinct points of a 1024-point grid in [-1, 1]) and a SIREN's ``sin(omega_0 x)``
        multiplies the arguments' rounding by ``omega_0``."""
        ref = self._reference_tensor()
        if ref is None or ref.dtype not in _HALF:
            return self._sample_in_own_precision()
        state = {f"layer.{name}": t.float() if t.dtype in _HALF else t
                 for name, t in itertools.chain(self.named_parameters(), self.named_buffers())}
        return torch.func.functional_call(_InFloat32(self), state, ()).to(ref.dtype)

    def _sample_in_own_precision(self) -> Tensor:
        axes = self._crop(self._axes())
        net = self.kernel_net
        if _region_applies(net):
            # Under torch.compile the net's features are one nested compile region: compiled once for all the
            # layers that share a grid and a kernel net's shape (whatever their channels), not once per layer.
            features_and_scale = _compiled_once_features(self, axes)
            return net.project(features_and_scale[0], tuple(x.numel() for x in axes), *features_and_scale[1:])
        coords, scale = self._coordinates(axes)
        if scale is None:
            return net(coords)  # (C_k, *k)
        if isinstance(net, _KernelNet):
            return net(coords, scale)  # (C_k, *k); scaled before the output layer
        return net(coords) * scale  # (C_k, *k)

    def _coordinates(self, axes: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """The grid's coordinates ``(*k, nd)`` and the factor on each of its samples ``(*k)`` (the mask and the
        sampling-rate normalisation), None where there is none."""
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*k, nd)
        scale = self._mask(axes)  # (*k) or None
        norm = self.sampling_rate_norm()
        if norm != 1.0:
            scale = coords.new_full(coords.shape[:-1], norm) if scale is None else scale * norm
        return coords, scale

    def _features(self, axes: list[Tensor]) -> tuple[Tensor, ...]:
        """The kernel net's :meth:`~largekernel.nn.kernelnets._KernelNet.features` on the grid ``axes``, scaled
        by :meth:`_coordinates`' factor, ``(N, hidden)``, then that factor ``(N,)`` if there is one."""
        coords, scale = self._coordinates(axes)
        if scale is None:
            return (self.kernel_net.features(coords.reshape(-1, self._nd)),)
        scale = scale.reshape(-1)  # (N,)
        return self.kernel_net.features(coords.reshape(-1, self._nd), scale), scale

    def _sampled(self) -> Tensor:
        """:meth:`_sample`; without autograd (inference, evaluation) reused while nothing it depends on changes
        (grids, mask settings, parameters and buffers), so a layer in eval mode samples its kernel net once
        instead of at every call."""
        def key():
            return (self._kernel_size, self._base_kernel_size, getattr(self, "mask_threshold", None),
                    getattr(self, "dynamic_cropping", None))
        return reuse_without_autograd(self, "_kernel_cache", key, self._sample)

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The dense kernel this layer applies now, ``(out_channels, in_channels / groups, *k)``.

        ``input_size`` only matters for a layer built with ``kernel_size=None`` that has not seen an input yet:
        its grid is then set from that size. For ``separable=True`` the kernel is the composition of the
        depthwise kernel and the channel mixer, ``pointwise[o, i] * depthwise[i]``: the same linear map.
        """
        if self._kernel_size is None and input_size is not None:
            self._materialize(input_size)
        kernel = self._sampled()  # (C_k, *k)
        spatial = kernel.shape[1:]
        if self.separable:
            mixer = self.pointwise.view(self.out_channels, self.in_channels, *([1] * self._nd))
            return mixer * kernel.unsqueeze(0)  # (out, in, *k)
        return kernel.reshape(self.out_channels, self.in_channels // self.groups, *spatial)

    @classmethod
    def size_kwargs(cls, value: int) -> dict:
        """The kernel net's hidden width (``kernel_net_kwargs["hidden_channels"]``)."""
        return {"kernel_net_kwargs": {"hidden_channels": value}}

    @torch.no_grad()
    def fit_dense(self, dense: Tensor, fitted: set[int] | None = None) -> None:
        """Least squares for the kernel net's output layer, the hidden layers kept: the kernel is affine in it.

        FlexConv's mask is first widened (and centred) so that its crop covers the dense kernel."""
        net = self.kernel_net
        output = getattr(net, "output", None)
        if not isinstance(output, nn.Linear) or getattr(net, "out_features", None) != output.out_features \
                or self.separable:
            raise ConvArgumentError(f"fit_dense fits CKConv/FlexConv layers whose kernel net ends in a Linear "
                                    f"`output` (largekernel's named kernel nets), not separable ones; got "
                                    f"{type(net).__name__}, separable={self.separable}")
        grid = self.kernel_size
        if grid is None:
            raise ConvArgumentError(f"{type(self).__name__} sizes its kernel from its first input (kernel_size=None): "
                                    f"run one input through it before fit_dense")
        if hasattr(self, "mask_width"):
            reach = max((k - 1) / (g - 1) if g > 1 else 0.0 for k, g in zip(dense.shape[2:], grid))
            width = reach / math.sqrt(-2.0 * math.log(self.mask_threshold)) * (1 + 1e-3)
            self.mask_width.copy_(self.mask_width.abs().clamp_min(width))
            self.mask_mean.zero_()
        hidden = output.in_features
        probe = nn.Linear(hidden, hidden + 1, device=output.weight.device, dtype=output.weight.dtype)
        probe.weight.copy_(torch.eye(hidden + 1, hidden))  # returns the hidden features, then the bias's feature
        probe.bias.copy_(torch.eye(hidden + 1)[-1])
        real = (output, net.out_features)
        try:
            net.output, net.out_features = probe, hidden + 1
            features = self._sample()  # (hidden + 1, *k): the scaled hidden features and the bias's scale
        finally:
            net.output, net.out_features = real
        size = features.shape[1:]
        target = centre_kernel(dense.to(features), size).reshape(output.out_features, -1)  # (C_k, N)
        design = features.reshape(hidden + 1, -1).t()  # (N, hidden + 1)
        if output.bias is None:
            design = design[:, :hidden]
        solution = torch.linalg.pinv(design) @ target.t()  # (hidden (+ 1), C_k), least squares of minimum norm
        output.weight.copy_(solution[:hidden].t())
        if output.bias is not None:
            output.bias.copy_(solution[hidden])

    # ------------------------------------------------------------------ anti-aliasing

    def frequency_terms(self, target: str = "gabor+mask", gauss_stddevs: float = 2.0) -> tuple[Tensor, Tensor]:
        """Analytic frequency bounds in cycles per unit of the [-1, 1] grid (differentiable).

        Returns the per-filter bounds of the kernel net, shape ``(L + 1,)`` (see
        :meth:`MAGNetKernel.frequency_bounds`), and the mask's contribution, a
        0-dim tensor: ``gauss_stddevs / (2 pi min_d |width_d|)`` for FlexConv with
        ``target="gabor+mask"``, 0 otherwise. Only multiplicative filter nets
        (MAGNet, Gabor, Fourier) have an analytic bound.
        """
        _check_frequency_args(target, gauss_stddevs)
        if not isinstance(self.kernel_net, _MFN):
            raise TypeError(f"only MAGNet / Gabor / Fourier kernel nets have an analytic frequency bound, this "
                            f"layer's kernel net is {type(self.kernel_net).__name__}")
        freqs = self.kernel_net.frequency_bounds(gauss_stddevs)  # (L + 1,)
        mask = self._mask_frequency(gauss_stddevs) if target == "gabor+mask" else None
        return freqs, freqs.new_zeros(()) if mask is None else mask.to(freqs.dtype)

    def _mask_frequency(self, gauss_stddevs: float) -> Tensor | None:
        return None

    def frequency_bound(self, target: str = "gabor+mask", gauss_stddevs: float = 2.0) -> Tensor:
        """Bound on the frequency content of this layer's continuous kernel: filters' sum plus the mask's."""
        freqs, mask = self.frequency_terms(target, gauss_stddevs)
        return freqs.sum() + mask

    def nyquist_frequency(self) -> float:
        """Nyquist frequency of the current grid, ``(K - 1) / 4`` cycles per unit (smallest ``K`` over dims)."""
        return (min(self._require_kernel_size()) - 1) / 4.0

    # ------------------------------------------------------------------ application

    def kernel_padding(self, kernel_size: Sequence[int]):
        """Causal: ``k - 1`` before; ``"same"``: ``(k - 1) // 2`` before and ``k // 2`` after (at any stride);
        otherwise the padding of the whole grid, less what cropping removed from the kernel on each side (the
        output size follows the grid, not the learned extent; negative where the input must be cropped)."""
        if self.causal:
            return ((kernel_size[0] - 1, 0),)
        if self.padding == "same":
            return tuple(((k - 1) // 2, k // 2) for k in kernel_size)
        padding = (0,) * self._nd if self.padding == "valid" else self.padding
        return tuple((p - (g - k) // 2, p - (g - k) // 2)
                     for p, g, k in zip(padding, self._require_kernel_size(), kernel_size))

    def _check_fits(self, input: Tensor) -> None:
        """Explicit padding: the whole grid must fit the padded input (the output follows the grid)."""
        if self.padding != "same" and not self.causal:
            padding = (0,) * self._nd if self.padding == "valid" else self.padding
            sizes = input.shape[-self._nd:]
            if any(n + 2 * p < g for n, p, g in zip(sizes, padding, self._require_kernel_size())):
                raise ConvArgumentError(f"{type(self).__name__}'s kernel grid {self._kernel_size} must fit the padded "
                                        f"input (padding={self.padding!r}), got input of shape {tuple(input.shape)}")

    def _kernel_channels(self) -> int:
        """Values the kernel net gives per grid sample: one depthwise kernel per input channel if separable."""
        return self.in_channels if self.separable else self.out_channels * (self.in_channels // self.groups)

    def _compiled_output_shape(self, input: Tensor, channels: int | None = None) -> tuple[int, ...]:
        """The output's shape for ``input`` (with ``channels``, or the layer's output channels), from the whole
        grid (cropping does not change it)."""
        grid = self._require_kernel_size()
        spatial = tuple((n + lo + hi - g) // s + 1 for n, (lo, hi), g, s
                        in zip(input.shape[-self._nd:], self.kernel_padding(grid), grid, self.stride))
        return (*input.shape[:-self._nd - 1], self.out_channels if channels is None else channels, *spatial)

    def _convolve(self, input: Tensor, kernel: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        """``kernel`` applied with :meth:`kernel_padding`; negative padding crops the input first."""
        pads = self.kernel_padding(kernel.shape[2:])
        self._check_fits(input)
        crop = [(max(0, -lo), max(0, -hi)) for lo, hi in pads]
        if any(lo or hi for lo, hi in crop):
            input = input[(..., *(slice(lo, n - hi) for (lo, hi), n in zip(crop, input.shape[-self._nd:])))]
            pads = tuple((max(0, lo), max(0, hi)) for lo, hi in pads)
        return convolve(input, kernel, bias, self.stride, pads, 1, groups, self.padding_mode, backend=self.backend)

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        size = self._spatial_size(input)
        if self._kernel_size is None:
            self._materialize(size)
        if not self.separable:
            return self._convolve(input, self.construct_kernel(size), self.bias, self.groups)
        # Depthwise, then the channel mixer: cheaper than the composed dense kernel.
        out = self._convolve(input, self._sampled().unsqueeze(1), None, self.in_channels)  # (B, in, *out)
        mixer = self.pointwise.view(self.out_channels, self.in_channels, *([1] * self._nd))
        return convolve(out, mixer, self.bias, backend="direct")  # (B, out, *out)

    @torch.no_grad()
    def bake(self, input_size: Sequence[int] | None = None, *, native: bool = False) -> nn.Module:
        """One convolution module holding the kernel this layer applies now (see ``KernelConvNd.bake``); later
        changes to the mask or the resolution are not reflected. A kernel cropped under explicit padding is
        baked on the whole grid (zeros around it), where that padding applies."""
        kernel = self.construct_kernel(self._bake_size(input_size))
        pads = self.kernel_padding(kernel.shape[2:])
        if any(lo < 0 or hi < 0 for lo, hi in pads):
            grid = self._require_kernel_size()
            kernel = F.pad(kernel, [q for g, k in zip(reversed(grid), reversed(kernel.shape[2:]))
                                    for q in ((g - k) // 2, (g - k) // 2)])
            pads = self.kernel_padding(kernel.shape[2:])
        return self._baked(kernel, pads, None, native)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self._kernel_size}"
        if self._base_kernel_size != self._kernel_size:
            s += f", base_kernel_size={self._base_kernel_size}"
        if self.stride != (1,) * self._nd:
            s += f", stride={self.stride}"
        if self.padding != "same":
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        for flag in ("causal", "separable"):
            if getattr(self, flag):
                s += f", {flag}=True"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


class _InFloat32(nn.Module):
    """Calls a layer's :meth:`_ContinuousConvNd._sample_in_own_precision` through ``torch.func.functional_call``,
    which gives the layer float32 copies of its half-precision tensors for that call (:meth:`_sample`)."""

    def __init__(self, layer: _ContinuousConvNd) -> None:
        super().__init__()
        self.layer = layer

    def forward(self) -> Tensor:
        return self.layer._sample_in_own_precision()


# Compiled once for all the layers that share a grid, a kernel net's shape and mask settings (about 4 s of
# inductor's time per layer when every layer's copy was generated anew; docs/deploy.md).
_compiled_once_features = compiled_once(_ContinuousConvNd._features)


def _region_applies(net: nn.Module) -> bool:
    """Whether :meth:`_ContinuousConvNd._sample` calls the compiled region: where
    :func:`~largekernel.functional._tracing.region_applies` (torch.compile recording, on a torch and backend that
    take regions), with the layers' float settings (``mask_threshold``, ``_EPS``) held as constants, and for a
    kernel net called as written.

    Not under ``torch.compile(dynamic=True)``, where those settings become symbolic inputs, which torch 2.14
    cannot pass to a reused region ("Argument 'item' ... does not belong to this Graph"). Not for a kernel net
    of the user's own, one whose ``forward`` is overridden, one with hooks on it or on a layer inside it, or one
    whose layers it reads are not the library's own (:func:`~largekernel.nn._base.must_call`): the region calls
    the named nets' ``features`` and ``project`` directly, which is what their ``forward`` does otherwise. The
    layers are then traced as written."""
    return (region_applies()
            and getattr(torch._dynamo.config, "assume_static_by_default", True)
            and isinstance(net, _KernelNet) and type(net).forward is _KernelNet.forward and not must_call(net)
            and not net._calls_layers())


class _FlexConvNd(EagerInCompile, _ContinuousConvNd):
    """CKConv plus FlexConv's learnable Gaussian mask and dynamic cropping.

    Under ``torch.compile`` a cropping layer runs eagerly as one operator (:mod:`largekernel.nn._eager_op`), so
    that the crop, a value of its mask's parameters, sizes the kernel there too; a smaller one is traced with its
    whole grid and convolves with the crop through that operator (:meth:`_convolve`)."""

    _default_kernel_net = "magnet"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] | None = None, *,
                 mask_init: float | None = None, mask_threshold: float = 0.1, dynamic_cropping: bool = True,
                 learn_mask_mean: bool = True, mask_lr_scale: float | None = None, **kwargs) -> None:
        if mask_init is not None and (isinstance(mask_init, bool) or not isinstance(mask_init, (int, float))
                                      or not mask_init > 0):
            raise ValueError(f"mask_init (the Gaussian mask's initial width) must be > 0 or None, got {mask_init!r}")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) \
                or not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in the open interval (0, 1), got {mask_threshold!r}")
        self.mask_init = None if mask_init is None else float(mask_init)
        self.mask_threshold = float(mask_threshold)
        self.dynamic_cropping = bool(dynamic_cropping)
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        nd = self._nd
        self.mask_width = mark(nn.Parameter(torch.empty(nd, **factory)), kind="mask", lr_scale=mask_lr_scale)
        mean = torch.empty(nd, **factory)
        if learn_mask_mean:
            self.mask_mean = mark(nn.Parameter(mean), kind="mask", lr_scale=mask_lr_scale)
        else:
            self.register_buffer("mask_mean", mean)
        self._register_eager_key()
        self.reset_parameters()

    def _kernel_net_defaults(self, name: str) -> dict:
        # FlexConv: start the Gabor windows where the mask is, ~1.667 x its width.
        if name.lower() in ("magnet", "gabor"):
            return {"init_spatial_value": min(1.0, 1.667 * max(self._initial_widths()))}
        return {}

    def reset_parameters(self) -> None:
        if not hasattr(self, "mask_width"):
            return  # called by the base constructor before the mask exists; done again at the end of __init__
        with torch.no_grad():
            self.mask_width.copy_(torch.tensor(self._initial_widths()))
            self.mask_mean.fill_(self._initial_mean())
        super().reset_parameters()

    def _initial_mean(self) -> float:
        # A causal mask starts on the most recent samples (+1 is "now"); others at the centre.
        return 1.0 if self.causal else 0.0

    def _initial_widths(self) -> list[float]:
        if self.mask_init is not None:
            return [self.mask_init] * self._nd
        sizes = self._kernel_size or (33,) * self._nd
        return [max(_REFERENCE_MASK_INIT, 2.4 / (k - 1)) if k > 1 else _REFERENCE_MASK_INIT for k in sizes]

    def _init_for_grid(self) -> None:
        if self.mask_init is None:  # the default width depends on the grid, known only now
            with torch.no_grad():
                self.mask_width.copy_(torch.tensor(self._initial_widths()))
        super()._init_for_grid()

    def _mask_frequency(self, gauss_stddevs: float) -> Tensor:
        # A Gaussian of width w has a Gaussian spectrum of width 1 / (2 pi w) cycles per unit.
        return gauss_stddevs / (2 * math.pi * self.mask_width.abs().min().clamp_min(_EPS))

    def mask_roots(self) -> Tensor:
        """Per-dimension half-width ``|sigma| sqrt(-2 ln threshold)`` of the region where the mask > threshold."""
        return self.mask_width.detach().abs() * self._root_scale()

    def _root_scale(self) -> float:
        """``sqrt(-2 ln threshold)``: a mask's half-width above the threshold, in units of its width."""
        return math.sqrt(-2.0 * math.log(self.mask_threshold))

    def _crop(self, axes: list[Tensor]) -> list[Tensor]:
        """Keep the samples inside the thresholded mask (FlexConv's dynamic cropping).

        Causal: the samples with ``x >= mean - a`` (``a`` = :meth:`mask_roots`),
        so the kernel still ends at "now". Otherwise, per dimension, the samples
        with ``|x| <= max(|mean - a|, |mean + a|)``: a centred crop keeps "same"
        alignment. At least 3 samples (2 on an even grid or a causal one) are kept
        so that the mask's parameters always receive a gradient.

        While a graph is recorded the crop size, a value of the mask's parameters, cannot be a Python int of the
        graph. ``torch.compile`` therefore calls the layer as one operator that runs it eagerly, crop included
        (:meth:`forward`, :mod:`largekernel.nn._eager_op`). Where the graph must hold torch operations only
        (``torch.export``, ONNX), and under torch.func's transforms (``vmap`` over stacked parameters has a crop
        size per member, not one int), the whole grid is sampled instead and :meth:`_mask` zeroes the samples
        outside the crop (:meth:`_crop_window`): the same output and gradients, at the cost of applying the whole
        grid. (A smaller layer under ``torch.compile`` is traced that way too, its convolution cropped by an
        operator where it is large: :meth:`_convolve`.)
        """
        if not self._cropping():
            return axes
        if self.mask_width.is_meta or self.mask_mean.is_meta:
            # built on the meta device (deferred initialisation): no values yet; crop as initialised (reset_parameters)
            roots = [w * self._root_scale() for w in self._initial_widths()]
            means = [self._initial_mean()] * self._nd
        else:
            roots = self.mask_roots().tolist()
            means = self.mask_mean.detach().tolist()
        cropped = []
        for x, a, mu in zip(axes, roots, means):
            k = x.numel()
            start = _first_kept(mu, a, k, self.causal)
            cropped.append(x[start:] if self.causal else x[start:k - start])
        return cropped

    def _cropping(self) -> bool:
        """Whether :meth:`_crop` crops the grid: with ``dynamic_cropping``, where the crop size may be read as a
        Python value. Not while a graph is recorded, nor under torch.func's transforms (``vmap`` over stacked
        parameters cannot read one value of a batch of masks; the whole grid with the crop as zeros gives every
        member its own)."""
        return self.dynamic_cropping and not tracing() and not transformed()

    def _crop_starts(self, axes: list[Tensor]) -> list[Tensor]:
        """Per dimension, the index of the first sample :meth:`_crop` keeps (float64 0-dim tensors), from tensor
        operations only (no Python value of the parameters: what a recorded graph can hold)."""
        roots = self.mask_roots().double()
        means = self.mask_mean.detach().double()
        return [_first_kept(means[d], roots[d], x.numel(), self.causal) for d, x in enumerate(axes)]

    def _crop_window(self, axes: list[Tensor]) -> Tensor:
        """1 on the samples :meth:`_crop` keeps, 0 elsewhere, over the whole grid ``(*k)``, from tensor operations
        only (no Python value of the parameters: what a recorded graph can hold)."""
        window = None
        for d, (x, start) in enumerate(zip(axes, self._crop_starts(axes))):
            k = x.numel()
            index = torch.arange(k, device=x.device, dtype=torch.float64)
            keep = index >= start if self.causal else (index >= start) & (index <= k - 1 - start)
            w = keep.to(x.dtype).view(*([1] * d), -1, *([1] * (len(axes) - d - 1)))
            window = w if window is None else window * w
        return window

    def _kept_samples(self) -> int | Tensor:
        """How many kernel samples the layer applies now: while a graph is recorded (a lazy layer's first call
        under ``torch.compile``), counted by :meth:`_crop_window` in a float64 0-dim tensor, since the crop is a
        value of the mask's parameters there (:meth:`_crop` returns the whole grid)."""
        if self.dynamic_cropping and not self._cropping():
            return self._crop_window(self._axes()).double().sum()
        return super()._kept_samples()

    def _mask(self, axes: list[Tensor]) -> Tensor:
        """Separable anisotropic Gaussian ``prod_d exp(-1/2 ((x_d - mean_d) / width_d)^2)``, shape ``(*k)``."""
        mask = None
        for d, x in enumerate(axes):
            # eps keeps a width driven to 0 by training from producing 0/0 at the mask's centre.
            g = torch.exp(-0.5 * (x - self.mask_mean[d]).square() / (self.mask_width[d].square() + _EPS))  # (k_d,)
            g = g.view(*([1] * d), -1, *([1] * (len(axes) - d - 1)))
            mask = g if mask is None else mask * g
        if self.dynamic_cropping and not self._cropping():
            mask = mask * self._crop_window(axes)  # the crop as zeros: see _crop
        return mask

    def _convolve(self, input: Tensor, kernel: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        """Under ``torch.compile`` (a cropping layer traced with its whole grid) the kernel, zero outside the crop,
        is applied by one operator that crops it first (:meth:`_convolve_cropped`): the convolution costs the
        crop's size, as in eager, while the kernel net is compiled with the graph. Where the whole grid's
        convolution is small (``_CROP_OP_MIN_WORK``) it is traced as it is."""
        if not (self.dynamic_cropping and eager_op.applies(input)  # (recorded: the kernel is the whole grid)
                and input.numel() // input.shape[-self._nd - 1] * kernel.numel() >= _CROP_OP_MIN_WORK):
            return super()._convolve(input, kernel, bias, groups)
        starts = torch.stack(self._crop_starts(self._axes())).to(torch.int64)
        tensors = [kernel, starts] + ([] if bias is None else [bias])
        shape = self._compiled_output_shape(input, kernel.shape[0])  # (the depthwise step of a separable layer: in)
        return eager_op.run_method(self, "_convolve_cropped", input, tensors, shape)

    def _convolve_cropped(self, input: Tensor, kernel: Tensor, starts: Tensor, bias: Tensor | None = None) -> Tensor:
        """:meth:`_convolve` of ``kernel`` (the whole grid) cropped from ``starts`` (per dimension, the first
        sample kept), eagerly (inside ``largekernel::eager_layer``)."""
        crop = tuple(slice(a, k if self.causal else k - a) for a, k in zip(starts.tolist(), kernel.shape[2:]))
        # a copy: the recorded graph keeps none of the compiled graph's memory (the operator's inputs)
        kernel = kernel[(..., *crop)].clone(memory_format=torch.contiguous_format)
        return super()._convolve(input, kernel, bias, input.shape[-self._nd - 1] // kernel.shape[1])

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        # (Not a lazy layer's first call: the graph that records it sets the grid only once it has run.)
        if self.dynamic_cropping and self._kernel_size is not None and eager_op.applies(input) \
                and math.prod(self._kernel_size) * self._kernel_channels() >= _EAGER_MIN_VOLUME:
            self._spatial_size(input)
            self._check_fits(input)
            return eager_op.run(self, input, self._compiled_output_shape(input))
        return super().forward(input)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.mask_init is not None:
            s += f", mask_init={self.mask_init}"
        if self.mask_threshold != 0.1:
            s += f", mask_threshold={self.mask_threshold}"
        if not self.dynamic_cropping:
            s += ", dynamic_cropping=False"
        return s


_COMMON_ARGS = """
    Args:
        in_channels, out_channels: as in ``torch.nn.Conv{n}d``.
        kernel_size: samples of the kernel grid over [-1, 1] per dimension. ``None``
            (default): set from the first input, the input's size (causal) or the
            smallest odd size covering it, so the kernel sees the whole input.
        kernel_net: ``"siren"``, ``"mlp"``, ``"fourier"``, ``"gabor"``, ``"magnet"``
            or a module mapping ``(*grid, {n})`` coordinates to ``(C, *grid)``.
        kernel_net_kwargs: options of the named kernel net (``hidden_channels``,
            ``num_layers``, ``omega_0``, ``input_scale`` ...).
        stride, padding, groups, bias, padding_mode: as in ``torch.nn.Conv{n}d``;
            ``padding="same"`` (default) follows torch's convention for even kernels.
        causal: (1-D) pad on the left only, so output ``t`` sees inputs ``<= t``.
        separable: depthwise continuous kernel followed by a pointwise mixer (CCNN).
        backend: ``"auto"``, ``"direct"`` or ``"fft"``, as in ``largekernel.nn.Conv{n}d``.
        chang_init: scale the kernel net's output layer by ``1 / sqrt(fan_in)``.

    Shape:
        - Input: ``(B, C_in, *spatial)``
        - Output: ``(B, C_out, *out)`` with ``out = floor((spatial + pad_total - k) / stride) + 1``,
          ``k`` the applied (cropped) kernel size; ``"same"`` and causal give
          ``pad_total = k - 1``, i.e. ``out = ceil(spatial / stride)``.
"""

_FLEX_ARGS = """
        mask_init: initial width (std) of the Gaussian mask, in units of the [-1, 1] grid. ``None``:
            the reference's 0.075 (a ~5-sample kernel on a 33-point grid), widened on coarse grids to
            1.2 grid steps, ``max(0.075, 2.4 / (K - 1))`` per dimension, so a small grid does not start
            as a 1x1 kernel.
        mask_threshold: cropping keeps the samples where the mask exceeds this, in (0, 1).
        dynamic_cropping: crop to the mask's support (off: sample the whole grid).
        learn_mask_mean: learn the mask's centre as well as its width.
        mask_lr_scale: learning-rate multiplier of the mask parameters (optimizer mark).
"""


def _doc(summary: str, nd: int, flex: bool) -> str:
    doc = f"{summary}\n" + _COMMON_ARGS.replace("{n}", str(nd))
    return doc.replace("\n    Shape:", _FLEX_ARGS + "\n    Shape:") if flex else doc


class CKConv1d(_ContinuousConvNd):
    __doc__ = _doc("1-D continuous kernel convolution (CKConv); SIREN kernel net by default.", 1, flex=False)
    _nd = 1


class CKConv2d(_ContinuousConvNd):
    __doc__ = _doc("2-D continuous kernel convolution (CKConv); SIREN kernel net by default.", 2, flex=False)
    _nd = 2


class CKConv3d(_ContinuousConvNd):
    __doc__ = _doc("3-D continuous kernel convolution (CKConv); SIREN kernel net by default.", 3, flex=False)
    _nd = 3


class FlexConv1d(_FlexConvNd):
    __doc__ = _doc("1-D FlexConv: MAGNet kernel, learnable Gaussian mask, dynamic cropping.", 1, flex=True)
    _nd = 1


class FlexConv2d(_FlexConvNd):
    __doc__ = _doc("2-D FlexConv: MAGNet kernel, learnable Gaussian mask, dynamic cropping.", 2, flex=True)
    _nd = 2


class FlexConv3d(_FlexConvNd):
    __doc__ = _doc("3-D FlexConv: MAGNet kernel, learnable Gaussian mask, dynamic cropping.", 3, flex=True)
    _nd = 3


# ---------------------------------------------------------------------- model-level helpers

def _check_frequency_args(target: str, gauss_stddevs: float) -> None:
    if target not in ("gabor", "gabor+mask"):
        raise ValueError(f"target must be 'gabor' or 'gabor+mask', got {target!r}")
    if not gauss_stddevs >= 0:
        raise ValueError(f"gauss_stddevs must be >= 0, got {gauss_stddevs!r}")


def continuous_layers(model: nn.Module) -> Iterator[_ContinuousConvNd]:
    """Every CKConv / FlexConv layer of ``model`` (``model`` itself included)."""
    return (m for m in model.modules() if isinstance(m, _ContinuousConvNd))


def set_resolution(model: nn.Module, size: int | Sequence[int], train_size: int | Sequence[int]) -> nn.Module:
    """Resample every continuous layer of ``model`` for inputs of ``size`` instead of ``train_size``.

    Each layer's grid is stretched by ``size / train_size``: a base kernel of
    ``K`` samples becomes ``(K - 1) * size / train_size + 1`` samples (and is
    rescaled by the grid-spacing ratio, see :meth:`resample`), which must be an
    integer. ``set_resolution(model, train_size, train_size)`` restores the
    training grid. Returns ``model``.
    """
    plan = []  # validate every layer before changing any
    for layer in continuous_layers(model):
        nd = layer._nd
        new = ntuple(size, nd, "size", minimum=1)
        old = ntuple(train_size, nd, "train_size", minimum=1)
        base = layer.base_kernel_size
        if base is None:
            raise RuntimeError(f"{type(layer).__name__} has no kernel size yet (kernel_size=None and never called); "
                               f"run one input of the training size through the model first")
        sizes = []
        for b, n, o in zip(base, new, old):
            target = (b - 1) * n / o + 1
            if abs(target - round(target)) > 1e-9 or round(target) < 1:
                raise ValueError(f"resolution {tuple(new)} does not fit a kernel of {tuple(base)} samples trained at "
                                 f"{tuple(old)}: (k - 1) * size / train_size + 1 = {target:g} is not a whole number "
                                 f"of samples")
            sizes.append(round(target))
        plan.append((layer, tuple(sizes)))
    for layer, sizes in plan:
        layer.resample(sizes)
    return model


def antialiasing_loss(model: nn.Module, target: str = "gabor+mask", method: str = "together",
                      gauss_stddevs: float = 2.0) -> Tensor:
    """FlexConv's anti-aliasing regulariser: squared excess of the analytic kernel frequencies over Nyquist.

    For every continuous layer with a multiplicative filter net (MAGNet, Gabor,
    Fourier) the analytic frequency of filter ``l`` is
    ``f_l = max_{unit, dim} (|W_l| + gauss_stddevs * gamma_l) / 2 pi`` (cycles
    per unit of the [-1, 1] grid); ``target="gabor+mask"`` adds the mask's
    ``gauss_stddevs / (2 pi min_d |width_d|)``. The Nyquist frequency of a
    ``K``-sample grid over [-1, 1] is ``(K - 1) / 4`` (smallest over dimensions).

    - ``method="together"`` (the reference default): each of the ``L + 1``
      filters gets ``1 / (L + 1)`` of the Nyquist budget (and of the mask's
      frequency); loss ``sum_l relu(f_l - nyq / (L + 1))^2``.
    - ``method="summed"``: loss ``relu(sum_l f_l (+ mask) - nyq)^2`` per layer.

    Summed over layers; zero when every layer is band-limited below Nyquist.
    Multiply by the regularisation factor yourself (the reference uses 1e-3).
    """
    _check_frequency_args(target, gauss_stddevs)
    if method not in ("together", "summed"):
        raise ValueError(f"method must be 'together' or 'summed', got {method!r}")
    loss = None
    for layer in continuous_layers(model):
        if not isinstance(layer.kernel_net, _MFN):
            continue
        freqs, mask_freq = layer.frequency_terms(target, gauss_stddevs)  # (L + 1,), ()
        nyquist = layer.nyquist_frequency()
        if method == "together":
            n = freqs.numel()
            term = F.relu(freqs + mask_freq / n - nyquist / n).square().sum()
        else:
            term = F.relu(freqs.sum() + mask_freq - nyquist).square()
        loss = term if loss is None else loss + term
    return loss if loss is not None else torch.zeros(())


def kernel_norm_loss(model: nn.Module, p: float = 2.0) -> Tensor:
    """Sum over continuous layers of ``||kernel||_p + ||bias||_p`` on the kernels they apply now (CKConv's LnLoss)."""
    loss = None
    for layer in continuous_layers(model):
        term = torch.linalg.vector_norm(layer.construct_kernel(), ord=p)
        if layer.bias is not None:
            term = term + torch.linalg.vector_norm(layer.bias, ord=p)
        loss = term if loss is None else loss + term
    return loss if loss is not None else torch.zeros(())


def mask_extent_loss(model: nn.Module, p: float = 2.0) -> Tensor:
    """Sum over FlexConv layers of ``||mask_width||_p``: pushes learned kernels to stay small (LimitLnLoss)."""
    loss = None
    for layer in continuous_layers(model):
        if isinstance(layer, _FlexConvNd):
            term = torch.linalg.vector_norm(layer.mask_width, ord=p)
            loss = term if loss is None else loss + term
    return loss if loss is not None else torch.zeros(())
