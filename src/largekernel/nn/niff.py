"""NIFF: neural implicit frequency filters.

Grabinski, Keuper and Keuper, "As large as it gets — Studying Infinitely Large
Convolutions via Neural Implicit Frequency Filters", TMLR 2024 (seed 000;
reference code GeJulia/NIFF).

A depthwise filter is defined *in the frequency domain* by two small coordinate
networks (1x1 layers with SiLU) that map every frequency coordinate to the real
and the imaginary part of one complex multiplier per channel. The layer
multiplies the input spectrum by it and transforms back: a depthwise circular
convolution whose kernel is as large as the input, with a parameter count that
does not depend on the input size.

The reference evaluates ``Re(ifft2(W * fft2(x)))`` with complex FFTs. For real
``x`` that equals ``irfft2(W_sym * rfft2(x))`` with the Hermitian-symmetrised
filter ``W_sym(k) = (W(k) + conj(W(-k))) / 2``, which this module uses: half the
FFT work, the same output.

Coordinates follow the reference: integer frequencies in ``[-n//2, (n-1)//2]``
(the Nyquist frequency of an even axis is ``-n/2``), the coordinate vector
listing the last spatial axis first (``(k_x, k_y)`` in 2-D). For odd sizes the
reference's grid ``arange(-n/2, n/2)`` is offset by half a frequency; here the
true integer frequencies are used. The reference's ``fftshift`` without ``dim``
also rolls the channel axis, pairing channel ``c`` with filter ``(c + C//2) mod C``;
here channel ``c`` uses filter ``c``, and ``load_state_dict`` accepts the
reference's key names (``mlp_real.layer_mpl1.weight`` ...) and rolls the output
layer accordingly, so reference checkpoints reproduce their outputs (even sizes).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional._args import (ConvArgumentError, checked_input, conv_memory_format,
                                          flat_pads, ntuple)
from largekernel.functional._grid import select
from largekernel.functional._tracing import NotScriptable, compiled_once, region_applies, tracing
from largekernel.functional.spectral import spectral_filter, spectral_pointwise, to_spatial, to_spectrum
from largekernel.nn import _frequency_op as frequency_op
from largekernel.nn._base import KernelConvNd, check_choice, must_call, positive_int
from largekernel.nn.conv import _baked_conv, size_checked
from largekernel.nn._cache import KeptMap, reuse_without_autograd
from largekernel.nn.kernelnets import KernelNetLinear
from largekernel.functional._fx import leaf_under_fx

__all__ = ["NIFFConv1d", "NIFFConv2d", "NIFFConv3d", "Spectrum", "SpectralPointwise", "PRESETS"]

# Hidden widths of the frequency networks in the reference code: fft_small.py (2->8->4->C)
# for light models, fft_big.py (2->16->128->32->C) for large ones.
PRESETS: dict[str, tuple[int, ...]] = {"small": (8, 4), "big": (16, 128, 32)}

_MODES = ("circular", "linear")
_OUTPUTS = ("spatial", "spectrum")
_POOL_FNS = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
_PADS = {"reflect": (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d),
         "replicate": (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
         "circular": (nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)}
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Grid coordinates kept per (grid, device, dtype): the most recent ones (a server fed many input sizes kept them all).
_KEPT_GRIDS = 8


class Spectrum(NamedTuple):
    """A real signal kept in the frequency domain between layers (NIFF's split form).

    ``data``: ``(B, C, *grid[:-1], grid[-1] // 2 + 1)`` complex, the ``rfftn`` of the
    signal over its last ``len(grid)`` axes; ``grid``: the spatial size it came from.
    """

    data: Tensor
    grid: tuple[int, ...]


def _frequencies(n: int) -> Tensor:
    """Integer frequencies of an ``n``-point FFT in FFT order (Nyquist negative, as the reference's grid)."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.where(k < n - n // 2, k, k - n)


def _grid_coordinates(grid: tuple[int, ...], device, dtype) -> tuple[Tensor, Tensor]:
    """Frequency coordinates of the full grid in FFT order, ``(ndim, points)`` (channels first, last axis first),
    and for every point the index of its mirror ``-k`` (modulo the grid: the Nyquist bin of an even axis is its
    own mirror)."""
    k = torch.stack(torch.meshgrid(*[_frequencies(n) for n in grid], indexing="ij")[::-1])  # (nd, *grid)
    index = torch.arange(math.prod(grid)).view(grid)
    axes = tuple(range(len(grid)))
    mirror = index.flip(axes).roll((1,) * len(grid), axes)  # index of (-j) mod n along every axis
    return k.reshape(len(grid), -1).to(device, dtype), mirror.flatten().to(device)


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return y
    return y + bias.view(-1, *([1] * (y.dim() - 2)))


def _spectral_bias(spec: Tensor, bias: Tensor | None, grid: tuple[int, ...]) -> Tensor:
    """Add a per-channel constant to a spectrum: it lives in the DC bin, times the grid size (unnormalised FFT)."""
    if bias is None:
        return spec
    dc = torch.zeros_like(spec)
    dc[(slice(None), slice(None)) + (0,) * len(grid)] = bias * math.prod(grid)
    return spec + dc


class _FrequencyNet(nn.Sequential):
    """Coordinate network ``ndim -> hidden... -> channels`` of 1x1 layers (Linear per point) with SiLU between.

    Called as a module on ``(points, ndim)``; a layer's two nets (real and imaginary part)
    apply all but their output layers together, channels first (:func:`_hidden_pair`).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, device=None, dtype=None):
        widths = (in_features, *hidden, out_features)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.SiLU())
            layers.append(KernelNetLinear(a, b, device=device, dtype=dtype))
        super().__init__(*layers)


def _hidden_pair(real: _FrequencyNet, imag: _FrequencyNet, coords: Tensor) -> Tensor:
    """Both nets' layers up to their last hidden one on ``coords`` ``(ndim, points)``, channels first (1x1 layers,
    as the reference applies them): ``(2, hidden[-1], points)``, the real net's features first (``ndim`` rows when
    there is no hidden layer). The nets have the same widths: each layer of both is one batched product of their
    stacked weights, and each activation one call on both, so that a compiled graph holds one kernel per step
    where it would hold two (half the C++ kernels inductor builds for the pair and their backward, docs/deploy.md)."""
    h = coords.unsqueeze(0).expand(2, -1, -1)  # (2, ndim, points)
    for a, b in zip(list(real)[:-1], list(imag)[:-1]):
        if isinstance(a, nn.Linear):
            bias = torch.stack([a.bias, b.bias]).unsqueeze(-1)  # (2, out, 1)
            h = torch.baddbmm(bias, torch.stack([a.weight, b.weight]), h)  # (2, out, points)
        elif type(a) is nn.SiLU and type(b) is nn.SiLU:
            h = F.silu(h)
        else:  # activations of the user's own: each on its net's half
            h = torch.stack([a(h[0]), b(h[1])])
    return h


class _NIFFConvNd(KernelConvNd):
    _nd: int
    input_dependent = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int | tuple[int, ...] | None = None,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        groups: int | None = None,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        preset: str = "small",
        hidden_channels: Sequence[int] | None = None,
        mode: str = "circular",
        output: str = "spatial",
    ) -> None:
        nd = self._nd
        factory = {"device": device, "dtype": dtype}
        positive_int(in_channels, "in_channels")
        out_channels = in_channels if out_channels is None else positive_int(out_channels, "out_channels")
        if groups is None:
            groups = in_channels if out_channels % in_channels == 0 else 1
        if groups == in_channels and out_channels % in_channels:
            raise ConvArgumentError(f"a depthwise NIFF (groups=in_channels={in_channels}) needs out_channels "
                                    f"divisible by in_channels, got out_channels={out_channels}")
        if groups not in (1, in_channels):
            raise ConvArgumentError(f"groups must be in_channels={in_channels} (depthwise) or 1 (depthwise + "
                                    f"pointwise, the paper's full variant), got {groups!r}")
        check_choice(mode, _MODES, "mode")
        check_choice(output, _OUTPUTS, "output")
        # The stride is average pooling after the filter (the paper); the base keeps it as the conv's stride.
        super().__init__(in_channels, out_channels, stride, 0 if padding == "same" else padding, 1, groups, bias,
                         padding_mode, "auto", device, dtype)
        padding = self.padding
        if not all(isinstance(p, int) for p in padding):
            raise ConvArgumentError(f"padding must be the same on both sides of a NIFF layer (an int or a tuple of "
                                    f"{nd} ints), got {padding!r}")
        if mode == "linear" and any(padding):
            raise ConvArgumentError(f"mode='linear' chooses its own zero padding; padding must be 0, got {padding!r}")
        if output == "spectrum" and (any(padding) or mode != "circular" or any(s != 1 for s in self.stride)):
            raise ConvArgumentError("output='spectrum' needs mode='circular', padding=0 and stride=1: a padded or "
                                    "pooled result cannot stay in the frequency domain")
        if hidden_channels is None:
            hidden_channels = PRESETS[check_choice(preset, tuple(PRESETS), "preset")]
        self.mode = mode
        self.output = output
        self.preset = preset
        self.hidden_channels = tuple(hidden_channels)
        # Depthwise filters: one per output channel (channel multiplier) or one per input channel before the pointwise.
        self.filters = out_channels if groups == in_channels else in_channels
        self.mlp_real = _FrequencyNet(nd, self.hidden_channels, self.filters, **factory)
        self.mlp_imag = _FrequencyNet(nd, self.hidden_channels, self.filters, **factory)
        if groups == 1:
            self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, **factory))
        else:
            self.register_parameter("pointwise", None)
        self._coords = KeptMap(_KEPT_GRIDS)  # (grid, device, dtype) -> coordinates
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for net in (self.mlp_real, self.mlp_imag):
            for layer in net:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        if self.pointwise is not None:
            # nn.Linear's default (the reference applies the pointwise as nn.Linear over channels).
            nn.init.kaiming_uniform_(self.pointwise, a=5**0.5)
        if self.bias is not None:
            bound = 1.0 / self.in_channels**0.5
            nn.init.uniform_(self.bias, -bound, bound)
        self._filter_cache = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints of the reference code (GeJulia/NIFF FreqConv_DW_*) name the 1x1 layers
        # mlp_{real,imag}.layer_mpl{i} with (out, in, 1, 1) weights; map them onto our Linear layers.
        # The reference fftshifts over *all* dims, channels included, so its channel c is filtered by
        # network output (c + C//2) mod C: roll the output layer's rows to give channel c its filter.
        for part in ("mlp_real", "mlp_imag"):
            linear = [i for i, m in enumerate(getattr(self, part)) if isinstance(m, nn.Linear)]
            for number, index in enumerate(linear, start=1):
                for name in ("weight", "bias"):
                    old = f"{prefix}{part}.layer_mpl{number}.{name}"
                    if old in state_dict:
                        value = state_dict.pop(old)
                        value = value.flatten(1) if name == "weight" else value
                        if number == len(linear):
                            value = value.roll(-(value.shape[0] // 2), dims=0)
                        state_dict[f"{prefix}{part}.{index}.{name}"] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._filter_cache = None

    # ---- geometry ---------------------------------------------------------------------------------

    def grid(self, size: Sequence[int]) -> tuple[int, ...]:
        """The grid on which the filter lives for an input of spatial ``size`` (the padded size)."""
        size = ntuple(tuple(size), self._nd, "size", minimum=1)
        if self.mode == "linear":
            # 2n >= 2n - 1: the circular product on this grid never wraps onto the n valid outputs.
            return tuple(2 * n for n in size)
        return tuple(n + 2 * p for n, p in zip(size, self.padding))

    def _coordinates(self, grid: tuple[int, ...], device, dtype) -> tuple[Tensor, Tensor]:
        """:func:`_grid_coordinates`, kept per grid, device and dtype; while a graph is recorded, computed in it
        (a dict filled during torch.compile's trace fails its guard at the next call: a second compilation; under
        ``torch.jit.trace`` kept tensors would enter the graph as constants of one call but not of another)."""
        if tracing():
            return _grid_coordinates(grid, device, dtype)
        key = (grid, device, dtype)
        if not isinstance(self._coords, KeptMap):  # a module pickled by a version that kept a plain dict
            self._coords = KeptMap(_KEPT_GRIDS)
        coords = self._coords.get(key)
        if coords is None:
            with torch.inference_mode(False):  # kept for training too, which cannot save inference tensors
                coords = _grid_coordinates(grid, device, dtype)
            self._coords.keep(key, coords)
        return coords

    def _half_filter(self, grid: tuple[int, ...], device, dtype) -> Tensor:
        """``W_sym`` on the rfft half spectrum: ``(filters, *grid[:-1], grid[-1]//2 + 1)`` complex (a view)."""
        return torch.view_as_complex(self._filter_parts(grid, device, dtype))[..., : grid[-1] // 2 + 1]

    def _filter_parts(self, grid: tuple[int, ...], device, dtype) -> Tensor:
        """``W_sym`` on the full grid, FFT order, as its real and imaginary parts ``(filters, *grid, 2)``: what
        :func:`~largekernel.functional.spectral_filter` takes, so that no complex tensor enters a compiled graph
        (inductor generates no code for them, and warns); at inference reused while the grid and the parameters
        are unchanged."""
        return reuse_without_autograd(self, "_filter_cache", lambda: (grid, device, dtype),
                                      lambda: self._compute_filter(grid, device, dtype))

    def _compute_filter(self, grid: tuple[int, ...], device, dtype) -> Tensor:
        if must_call(self.mlp_real, self.mlp_imag, own=(KernelNetLinear,)):
            out = self._filter_by_modules(grid, device, dtype)  # (filters, points, 2)
        else:
            out = self._filter_by_columns(grid, device, dtype)  # (filters, 2 * points)
        if out.dtype in _LOW_PRECISION:
            out = out.float()  # no complex bfloat16; complex32 has few kernels
        return out.view(self.filters, *grid, 2)  # (filters, *grid, 2): the complex filter's memory

    def _filter_by_columns(self, grid: tuple[int, ...], device, dtype) -> Tensor:
        """The fast path of :meth:`_compute_filter`: ``(filters, 2 * points)``, re/im interleaved. The nets run as
        the library's native kernels where they can (:mod:`largekernel.nn._frequency_op`): in eager mode on the CPU,
        and while ``torch.compile`` records as one opaque operator (which also runs torch operations where the
        kernels cannot); otherwise as the torch operations below (a compile region while torch.compile records)."""
        if frequency_op.applies(self.mlp_real, self.mlp_imag, self.mlp_real[0].weight):
            return frequency_op.run(*self._coordinates(grid, device, dtype),
                                    frequency_op.tensors(self.mlp_real, self.mlp_imag))
        if not tracing():
            coords, mirror = self._coordinates(grid, device, dtype)
            out = frequency_op.eager(self.mlp_real, self.mlp_imag, coords, mirror)
            if out is not None:
                return out
        if region_applies():
            # One nested compile region: compiled once for all the layers that share a grid and hidden widths,
            # whatever their filters (the output layers below differ).
            columns = _compiled_once_columns(self, grid)  # (inputs, points, 2)
        else:
            columns = self._columns(*self._coordinates(grid, device, dtype))
        # Both output layers as one GEMM whose (filters, 2 * points) result is the complex filter's memory
        # (re/im interleaved): the columns put their inputs in the even (real) or odd (imaginary) columns, plus
        # two rows of ones for the biases. The imaginary bias cancels; written out, it stays in the graph with its
        # (zero) gradient, as in the reference, so that optimizers and DDP see every parameter used.
        out_re, out_im = self.mlp_real[-1], self.mlp_imag[-1]
        zero = 0.5 * (out_im.bias - out_im.bias)
        weight = torch.cat([out_re.weight, out_im.weight, out_re.bias.unsqueeze(1), zero.unsqueeze(1)], dim=1)
        return torch.mm(weight, columns.view(columns.shape[0], -1))  # (filters, 2 * points)

    def _filter_by_modules(self, grid: tuple[int, ...], device, dtype) -> Tensor:
        """:meth:`_compute_filter` with both nets called as modules, where they or their layers have hooks or a
        layer holding parameters is not the library's own (:func:`~largekernel.nn._base.must_call`; the fast path
        reads their layers' parameters without calling them): ``W_sym(k) = (W(k) + conj(W(-k))) / 2`` on the nets'
        outputs, ``(filters, points, 2)``."""
        coords, mirror = self._coordinates(grid, device, dtype)  # (ndim, points), (points,)
        re, im = self.mlp_real(coords.t()), self.mlp_imag(coords.t())  # (points, filters) each
        even = 0.5 * (re + select(re, 0, mirror))
        odd = 0.5 * (im - select(im, 0, mirror))
        return torch.stack([even.t(), odd.t()], dim=-1)  # (filters, points, 2)

    def _columns_on_grid(self, grid: tuple[int, ...]) -> Tensor:
        """:meth:`_columns` on ``grid``'s coordinates, computed here (the compiled region: no cached tensors
        of the layer's own among its inputs), in the parameters' device and dtype."""
        ref = self.mlp_real[0].weight
        return self._columns(*_grid_coordinates(grid, ref.device, ref.dtype))

    def _columns(self, coords: Tensor, mirror: Tensor) -> Tensor:
        """The output layers' input, ``(hidden_re + hidden_im + 2, points, 2)``: the last hidden features of
        both nets, symmetrised, in the real (even) and imaginary (odd) place, then the biases' two rows."""
        h_re, h_im = _hidden_pair(self.mlp_real, self.mlp_imag, coords)  # (hidden, points) each
        # W_sym(k) = (W(k) + conj(W(-k))) / 2. The output layer is affine, so symmetrise its (narrow) input
        # instead of its (filters, points) output: no wide temporaries. -k is a permutation of the grid.
        # (select: index_select, whose backward is an index_add, 2-3.5x faster here than advanced indexing's index_put.)
        even = 0.5 * (h_re + select(h_re, 1, mirror))  # (hidden_re, points)
        odd = 0.5 * (h_im - select(h_im, 1, mirror))  # (hidden_im, points)
        ones = torch.ones_like(coords[:1])  # (1, points)
        return torch.cat([torch.stack([even, torch.zeros_like(even)], dim=-1),
                          torch.stack([torch.zeros_like(odd), odd], dim=-1),
                          torch.stack([ones, torch.zeros_like(ones)], dim=-1),
                          torch.stack([torch.zeros_like(ones), ones], dim=-1)])  # (inputs, points, 2)

    def filter(self, size: Sequence[int]) -> Tensor:
        """The learned complex filter ``W(k)`` on the full grid for input ``size``, in FFT order (DC first).

        ``(filters, *grid)`` complex, not symmetrised: what the reference multiplies
        with ``fft2(x)`` (after ``ifftshift``).
        """
        grid = self.grid(size)
        p = next(self.parameters())
        axes = [_frequencies(n) for n in grid]
        k = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).reshape(-1, len(grid)).to(p)
        re, im = self.mlp_real(k), self.mlp_imag(k)  # (points, filters)
        if re.dtype in _LOW_PRECISION:
            re, im = re.float(), im.float()
        w = torch.complex(re, im)
        return w.t().reshape(self.filters, *grid)

    # ---- forward ----------------------------------------------------------------------------------

    @leaf_under_fx
    def forward(self, input: Tensor | Spectrum) -> Tensor | Spectrum:
        nd = self._nd
        param_dtype = next(self.parameters()).dtype
        if isinstance(input, Tensor) and input.is_floating_point():
            # The transforms run in the input's precision and cast the filter to it: torch's check, made here
            # (a Spectrum, complex, holds float32 for half-precision layers). Under torch.autocast, the input in
            # the autocast dtype, as torch's convolutions (and the library's others) take it: transformed in
            # float32, the output in that dtype.
            input = checked_input(self, input, param_dtype)
        if isinstance(input, Spectrum) or self.output == "spectrum":
            return self._spectral_forward(input, param_dtype)
        size = self._spatial_size(input)
        if input.dim() == nd + 1:  # unbatched, as torch's convolutions take it
            return self.forward(input.unsqueeze(0))[0]
        grid = self.grid(size)
        x, start = input, (0,) * nd
        if any(self.padding) and self.padding_mode != "zeros":
            # Padded in its mode; zero padding needs nothing: a zero-filled grid, cropped at the origin, is the
            # same circular convolution shifted.
            x = F.pad(x, [q for p in reversed(self.padding) for q in (p, p)], mode=self.padding_mode)
            start = self.padding
        w = self._filter_parts(grid, input.device, param_dtype)  # (filters, *grid, 2): real, imaginary
        y = spectral_filter(x, w, mixing=self.pointwise, bias=self.bias, out_start=start, out_size=size)
        if any(s != 1 for s in self.stride):
            # The paper strides by pooling after the frequency-domain filter.
            y = _POOL_FNS[nd - 1](y, self.stride)
        return y

    def _spectral_forward(self, input: Tensor | Spectrum, param_dtype: torch.dtype) -> Tensor | Spectrum:
        """The split form: a :class:`Spectrum` in or out (circular mode, no padding, no stride)."""
        nd = self._nd
        if isinstance(input, Spectrum):
            if any(self.padding) or self.mode != "circular":
                raise ValueError("a Spectrum input needs mode='circular' and padding=0")
            spec, grid = input.data, tuple(input.grid)
            half = (*grid[:-1], grid[-1] // 2 + 1) if len(grid) == nd else None
            if spec.dim() != nd + 2 or spec.shape[1] != self.in_channels or tuple(spec.shape[2:]) != half:
                raise ValueError(f"Spectrum data must be (B, {self.in_channels}, *{half}) for grid {grid}, "
                                 f"got shape {tuple(spec.shape)}")
        else:
            if input.dim() != nd + 2:
                raise ConvArgumentError(f"{type(self).__name__} with output='spectrum' expects a batched "
                                        f"(batch, {self.in_channels}, *{nd} spatial dims) input, got shape "
                                        f"{tuple(input.shape)}")
            grid = self.grid(self._spatial_size(input))
            spec = to_spectrum(input, grid)  # (B, C, *grid[:-1], grid[-1]//2+1) complex
        if self.filters != self.in_channels:
            spec = spec.repeat_interleave(self.filters // self.in_channels, dim=1)  # (B, filters, *half)
        spec = spec * self._half_filter(grid, spec.device, param_dtype).to(spec.dtype)
        if self.pointwise is not None:
            spec = spectral_pointwise(spec, self.pointwise)  # (B, out, *half)
        if self.output == "spectrum":
            return Spectrum(_spectral_bias(spec, self.bias, grid), grid)
        y = _add_bias(to_spatial(spec, grid), self.bias)
        return y if isinstance(input, Spectrum) else y.to(input.dtype)

    # ---- equivalent spatial kernels -------------------------------------------------------------

    def spatial_kernel(self, size: Sequence[int]) -> Tensor:
        """Equivalent spatial kernels on the filter grid, centred: ``(filters, *grid)``.

        ``grid = self.grid(size)`` (the input size in the default circular mode).
        Entry ``[c, i, j]`` is the weight of offset ``(i - H//2, j - W//2)`` in a
        **circular convolution** (not cross-correlation) on the grid:
        ``y[c, n] = sum_d kernel[c, d + grid//2] * x_pad[c, (n - d) mod grid]`` —
        the depthwise part of the layer before bias, pointwise mixing and pooling.
        Equal to ``fftshift(Re(ifftn(W)))``.
        """
        grid = self.grid(size)
        p = next(self.parameters())
        w = self._half_filter(grid, p.device, p.dtype)
        k = to_spatial(w, grid)  # (filters, *grid), offset 0 at index 0
        return torch.fft.fftshift(k, dim=tuple(range(-self._nd, 0)))

    def _correlation_taps(self, size: tuple[int, ...]) -> Tensor:
        """Depthwise cross-correlation taps ``(filters, *K)`` of the filter (before pooling) for input ``size``:
        ``K = size`` in the default circular mode, ``2 * size - 1`` with zero padding (linear mode, or zero
        ``padding``), ``2 * grid - 1`` after padding in another mode."""
        grid = self.grid(size)
        k = torch.fft.ifftshift(self.spatial_kernel(size), dim=tuple(range(-self._nd, 0)))  # offset 0 first
        if self._circular_same():
            # padding="same" on a circular conv with K = n puts (n - 1) // 2 taps before: tap m is offset left - m.
            taps = [((n - 1) // 2 - torch.arange(n)) % n for n in grid]
        elif self.mode == "linear" or self.padding_mode == "zeros":
            # Zero-padded input: output n sees x[n - d] for |d| <= size - 1; offset d uses the grid's tap d mod grid.
            taps = [(n - 1 - torch.arange(2 * n - 1)) % g for n, g in zip(size, grid)]
        else:
            # Padded by padding_mode first (size -> grid); offsets up to grid - 1 reach the padded input.
            taps = [(g - 1 - torch.arange(2 * g - 1)) % g for g in grid]
        for axis, idx in enumerate(taps):
            k = k.index_select(axis + 1, idx.to(k.device))
        return k

    def _circular_same(self) -> bool:
        return self.mode == "circular" and not any(self.padding)

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The dense kernel the layer applies to an input of spatial ``input_size`` (required), torch conv layout.

        ``(out, 1, *K)`` for the depthwise layer, ``(out, in, *K)`` for the full variant (pointwise folded in),
        applied by cross-correlation with :meth:`kernel_padding` and the layer's stride, as :meth:`bake` does:
        ``K = size`` with circular padding in the default mode, ``K = 2 * size - 1`` with zero padding in linear
        mode or with zero ``padding``; for reflect/replicate/circular ``padding``, ``K = 2 * grid - 1`` on the
        input padded in that mode. A stride (the paper's average pooling after the filter) is folded in:
        ``K + stride - 1`` taps, the pooling window's average of shifted filters.
        """
        size = self._bake_size(input_size)
        k = self._correlation_taps(size)  # (filters, *K)
        if self.pointwise is None:
            k = k.unsqueeze(1)  # (out, 1, *K)
        else:
            k = self.pointwise.view(*self.pointwise.shape, *([1] * self._nd)) * k  # (out, in, *K)
        for dim, s in enumerate(self.stride, start=2):
            if s > 1:  # pooling after a correlation: average of the kernel shifted by 0 .. s - 1
                shape = list(k.shape)
                shape[dim] += s - 1
                pooled = k.new_zeros(shape)
                for a in range(s):
                    pooled.narrow(dim, a, k.shape[dim]).add_(k, alpha=1.0 / s)
                k = pooled
        return k

    def kernel_padding(self, kernel_size: Sequence[int]):
        """Per-side padding of :meth:`construct_kernel`'s kernel (circular in the default mode, zeros otherwise);
        the stride's pooling drops the last ``n % stride`` outputs."""
        pads = []
        for kp, s, p in zip(kernel_size, self.stride, self.padding):
            k = kp - s + 1  # before pooling
            if self._circular_same():
                n, lo, hi = k, (k - 1) // 2, k // 2
            else:
                n = (k + 1) // 2 - (2 * p if self.mode == "circular" and self.padding_mode != "zeros" else 0)
                lo = hi = (k - 1) // 2 - (p if self.mode == "circular" and self.padding_mode != "zeros" else 0)
            pads.append((lo, hi - n % s))
        return tuple(pads)

    @torch.no_grad()
    def bake(self, input_size: Sequence[int] | None = None, *, native: bool = False) -> nn.Module:
        """One convolution for inputs of spatial ``input_size`` (required; the baked module refuses other sizes):
        a ``largekernel.nn.Conv{n}d`` (or, ``native=True``, a ``torch.nn.Conv{n}d`` behind an ``InputSizeCheck``) holding
        :meth:`construct_kernel`, the stride's pooling folded in. Padding in another mode than zeros (the paper's
        padding ablation) comes as a padding module in front of it (an ``nn.Sequential``). ``output="spectrum"``
        is not bakeable."""
        if self.output == "spectrum":
            raise ConvArgumentError("bake() needs output='spatial': a plain convolution returns a spatial tensor")
        nd = self._nd
        size = self._bake_size(input_size)
        weight = self.construct_kernel(size)
        kwargs = {} if native else {"backend": "auto"}
        conv = _baked_conv(weight, self.bias, self.groups, native=native, stride=self.stride,
                           padding=self.kernel_padding(weight.shape[2:]),
                           padding_mode="circular" if self._circular_same() else "zeros", **kwargs)
        padded = self.mode == "circular" and any(self.padding) and self.padding_mode != "zeros"
        if not native:  # the kernel is the filter for this size: refuse others
            conv.input_size = tuple(n + 2 * p for n, p in zip(size, self.padding)) if padded else size
        if padded:
            conv = nn.Sequential(_PADS[self.padding_mode][nd - 1](tuple(flat_pads([(p, p) for p in self.padding]))),
                                 conv)
        if native:  # torch's convolution cannot refuse other sizes: a check in front of it does
            conv = size_checked(conv, size)
        return conv

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}"
        if self.groups != self.in_channels:
            s += f", groups={self.groups}"
        if any(x != 1 for x in self.stride):
            s += f", stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}, padding_mode={self.padding_mode!r}"
        if self.bias is None:
            s += ", bias=False"
        s += f", hidden_channels={self.hidden_channels}"
        if self.mode != "circular":
            s += f", mode={self.mode!r}"
        if self.output != "spatial":
            s += f", output={self.output!r}"
        return s


_DOC = """{n}-D NIFF convolution (Grabinski et al., TMLR 2024): a depthwise filter as large as the input,
    defined in the frequency domain by two coordinate networks (real and imaginary part).

    Args:
        in_channels: input channels.
        out_channels: output channels (default ``in_channels``).
        kernel_size: accepted for ``torch.nn.Conv{n}d`` signature compatibility and
            ignored: a NIFF kernel is always as large as its (padded) input.
        stride: applied as average pooling after the filter, as in the paper.
        padding: per side, applied with ``padding_mode`` before the filter (the
            paper's padding ablation); the output is cropped back to the input size.
            ``"same"`` means 0.
        groups: ``in_channels`` (depthwise; ``out_channels`` a multiple of it) or
            ``1`` (the paper's full variant: depthwise then a pointwise
            ``in -> out`` mixing, both in the frequency domain: one FFT round trip).
            Default: depthwise when ``out_channels`` is a multiple of ``in_channels``.
        bias: a learnable per-output-channel bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        preset: ``"small"`` (hidden 8, 4) or ``"big"`` (16, 128, 32), the widths of
            the reference's ``fft_small.py`` / ``fft_big.py``.
        hidden_channels: explicit hidden widths (overrides ``preset``).
        mode: ``"circular"`` (the paper's default: circular convolution on the
            input grid) or ``"linear"`` (zero-padded to twice the size: a linear
            convolution with a ``2 * size - 1`` kernel).
        output: ``"spatial"`` or ``"spectrum"`` (return a :class:`Spectrum` so the
            next frequency-domain layer skips the FFT: the paper's split form).
            A :class:`Spectrum` is also accepted as input.

    Shape:
        - Input: ``(N, C_in, {dims})`` (or a :class:`Spectrum`).
        - Output: ``(N, C_out, {dims_out})`` with ``{out_formula}``: the input size,
          pooled by ``stride`` (floor).
    """


# Compiled once for all the layers that share a grid and hidden widths (docs/deploy.md).
_compiled_once_columns = compiled_once(_NIFFConvNd._columns_on_grid)


class NIFFConv1d(_NIFFConvNd):
    __doc__ = _DOC.format(n=1, dims="L", dims_out="L_out", out_formula="L_out = L // stride")
    _nd = 1


class NIFFConv2d(_NIFFConvNd):
    __doc__ = _DOC.format(n=2, dims="H, W", dims_out="H_out, W_out", out_formula="H_out = H // stride[0]")
    _nd = 2


class NIFFConv3d(_NIFFConvNd):
    __doc__ = _DOC.format(n=3, dims="D, H, W", dims_out="D_out, H_out, W_out", out_formula="D_out = D // stride[0]")
    _nd = 3


class SpectralPointwise(NotScriptable, nn.Module):
    """A 1x1 convolution applied in the frequency domain (the reference's ``FreqConv_1x1_*``).

    The pointwise map commutes with the Fourier transform, so it can act on a
    :class:`Spectrum` and keep it there (``output="spectrum"``) or end a chain of
    frequency-domain layers with the single inverse FFT (``output="spatial"``).
    A real tensor input is transformed first.

    Shape:
        - Input: ``(N, C_in, *spatial)`` or ``(C_in, *spatial)`` real, or a :class:`Spectrum` with ``C_in``
          channels.
        - Output: ``(N, C_out, *spatial)`` or ``(C_out, *spatial)``, or a :class:`Spectrum` with ``C_out``
          channels (of a batch of one for an unbatched input).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, *, ndim: int = 2,
                 output: str = "spatial", device=None, dtype=None) -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("ndim", ndim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels, self.ndim, self.output = in_channels, out_channels, ndim, output
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            bound = 1.0 / self.in_channels**0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @leaf_under_fx
    def forward(self, input: Tensor | Spectrum) -> Tensor | Spectrum:
        dtype = None  # a real input's dtype, which a spatial output keeps (half precision is transformed in float32)
        unbatched = False
        if isinstance(input, Spectrum):
            spec, grid = input.data, tuple(input.grid)
        else:
            if isinstance(input, Tensor) and input.is_floating_point():
                # torch's 1x1 convolution's rule: the weight's dtype (under torch.autocast, the input in its dtype)
                input = checked_input(self, input, self.weight.dtype)
            dtype = input.dtype
            if input.dim() not in (self.ndim + 1, self.ndim + 2):
                raise ValueError(f"SpectralPointwise(ndim={self.ndim}) expects a {self.ndim + 2}-D (batch, channels, "
                                 f"*spatial) or {self.ndim + 1}-D (channels, *spatial) input, got shape "
                                 f"{tuple(input.shape)}")
            unbatched = input.dim() == self.ndim + 1  # as torch's 1x1 convolution takes it
            input = input.unsqueeze(0) if unbatched else input
            grid = tuple(input.shape[-self.ndim:])
            spec = to_spectrum(input, grid)  # (B, C, *half) complex
        if spec.shape[1] != self.in_channels:
            raise ValueError(f"SpectralPointwise expects {self.in_channels} channels, got shape {tuple(spec.shape)}")
        spec = spectral_pointwise(spec, self.weight)  # (B, out, *half)
        if self.output == "spectrum":
            return Spectrum(_spectral_bias(spec, self.bias, grid), grid)
        y = _add_bias(to_spatial(spec, grid), self.bias)
        if dtype is None:
            return y
        # A real input's dtype, and its memory format (as torch's 1x1 convolution keeps channels_last)
        y = y.to(dtype).contiguous(memory_format=conv_memory_format(input))
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, ndim={self.ndim}"
        if self.bias is None:
            s += ", bias=False"
        return s if self.output == "spatial" else f"{s}, output={self.output!r}"
