"""Long-sequence convolution kernels: SGConv and S4D, applied by FFT convolution.

- SGConv: Li, Cai, Zhang, Chen and Dey, "What Makes Convolutional Models Great
  on Long Sequence Modeling?", ICLR 2023 (seed 003, section 3.2; reference code
  ctlllll/SGConv, ``cat`` mode): a few sub-kernels of ``kernel_dim`` taps, the
  ``i``-th upsampled ``2**max(0, i - 1)`` times by interpolation and weighted by
  a decaying ``multiplier**(num_scales - 1 - i)``, concatenated into one kernel
  as long as the sequence, divided by its initial norm.
- S4D: Gu, Gupta, Goel and Ré, "On the Parameterization and Initialization of
  Diagonal State Space Models", NeurIPS 2022 (reference code state-spaces/s4,
  ``models/s4/s4d.py``): the kernel of a diagonal state space discretised by
  zero-order hold, ``K[l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n * exp(dt A_n l))``,
  a Vandermonde product.

Kernel generators (:class:`SGKernel`, :class:`S4DKernel`) are separate from the
layers that apply them (:class:`SGConv1d`, :class:`S4DConv1d`): channels-first
``(B, C, L)`` like ``torch.nn.Conv1d``, causal or bidirectional, with the SSM
skip term ``D * x``, optional pointwise channel mixing and a bias.
:class:`SGConv2d` extends SGConv to images by the outer product of two
bidirectional 1-D SGConv kernels (seed 003, section 3.2).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional._args import ConvArgumentError, ntuple, own_nodes
from largekernel.functional._tracing import batched, exporting_onnx, transformed
from largekernel.functional.engine import convolve
from largekernel.nn._base import KernelConvNd, positive_int
from largekernel.nn.marks import mark
from largekernel.functional._fx import leaf_under_fx

__all__ = ["SGKernel", "S4DKernel", "SGConv1d", "SGConv2d", "S4DConv1d"]

_INTERPOLATIONS = ("linear", "nearest")


class SGKernel(nn.Module):
    """SGConv's multi-scale kernel generator: ``forward(length) -> (channels, length)``.

    Args:
        channels: kernels to generate (one per channel; twice that for a bidirectional layer).
        span: length of the full kernel; taps beyond it are zero.
        kernel_dim: taps per sub-kernel (``d`` in the paper), at most ``span``.
        num_scales: sub-kernels; default ``1 + ceil(log2(span / kernel_dim))``, enough to cover ``span``.
        decay: the multiplier ``alpha`` (or a ``(min, max)`` range spread over channels, as the
            reference's ``decay_min``/``decay_max``): sub-kernel ``i`` is scaled by
            ``alpha**(num_scales - 1 - i)``, so far taps weigh less.
        interpolation: ``"linear"`` or ``"nearest"`` upsampling of the sub-kernels.
    """

    def __init__(self, channels: int, span: int, kernel_dim: int = 64, num_scales: int | None = None,
                 decay: float | tuple[float, float] = 2.0, interpolation: str = "linear",
                 lr_scale: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = positive_int(channels, "channels")
        self.span = positive_int(span, "span")
        self.kernel_dim = min(positive_int(kernel_dim, "kernel_dim"), span)
        if num_scales is None:
            num_scales = 1 + max(0, math.ceil(math.log2(span / self.kernel_dim)))
        self.num_scales = positive_int(num_scales, "num_scales")
        if interpolation not in _INTERPOLATIONS:
            raise ConvArgumentError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        low, high = (decay, decay) if isinstance(decay, (int, float)) else tuple(decay)
        if low <= 0 or high <= 0:
            raise ConvArgumentError(f"decay must be positive, got {decay!r}")
        self.decay = (float(low), float(high))
        factory = {"device": device, "dtype": dtype}
        self.kernels = nn.ParameterList()
        for _ in range(self.num_scales):
            k = nn.Parameter(torch.empty(self.channels, self.kernel_dim, **factory))
            if lr_scale is not None:
                mark(k, kind="sgconv", lr_scale=lr_scale, weight_decay=0.0)
            self.kernels.append(k)
        self.register_buffer("multiplier", torch.empty(self.channels, 1, **factory))  # set by reset_parameters
        self.register_buffer("kernel_norm", torch.ones(self.channels, 1, **factory))
        self.reset_parameters()

    @property
    def length(self) -> int:
        """Taps the sub-kernels cover before truncation to ``span``: ``kernel_dim * 2**(num_scales - 1)``."""
        return self.kernel_dim * 2 ** (self.num_scales - 1)

    def reset_parameters(self) -> None:
        for k in self.kernels:
            nn.init.normal_(k)
        with torch.no_grad():
            low, high = self.decay
            self.multiplier.copy_(torch.linspace(low, high, self.channels, dtype=self.multiplier.dtype,
                                                 device=self.multiplier.device).unsqueeze(-1))
            # Normalise by the norm at initialisation (the reference fixes it at its first call).
            self.kernel_norm.copy_(self._raw().norm(dim=-1, keepdim=True))

    def _raw(self) -> Tensor:
        pieces = []
        for i, k in enumerate(self.kernels):
            scale = 2 ** max(0, i - 1)
            k = k * self.multiplier ** (self.num_scales - 1 - i)  # (channels, kernel_dim)
            if scale > 1:
                # the upsampling as a product with its matrix (the same values): torch.compile's inductor (2.13)
                # miscompiles the upsampling's backward fused with the decay and the norm (heap corruption)
                k = k @ self._upsampling(scale, k)
            pieces.append(k)  # (channels, kernel_dim * scale)
        return torch.cat(pieces, dim=-1)[:, : self.span]  # (channels, span)

    def _upsampling(self, scale: int, like: Tensor) -> Tensor:
        """``(kernel_dim, kernel_dim * scale)``: row ``j`` is the upsampled unit vector ``e_j``."""
        eye = torch.eye(self.kernel_dim, device=like.device, dtype=like.dtype).unsqueeze(0)
        return F.interpolate(eye, scale_factor=scale, mode=self.interpolation)[0]

    def forward(self, length: int) -> Tensor:
        """The kernel's first ``min(length, span)`` taps: ``(channels, min(length, span))``, in the parameters'
        dtype (buffers kept in float32 under half-precision parameters, as FSDP2's ``MixedPrecisionPolicy``
        leaves them, give float32 arithmetic, then the parameters' dtype, which the convolution needs)."""
        k = self._raw() / self.kernel_norm  # (channels, span)
        return k[:, :length].to(self.kernels[0].dtype)

    def extra_repr(self) -> str:
        return (f"{self.channels}, span={self.span}, kernel_dim={self.kernel_dim}, num_scales={self.num_scales}, "
                f"decay={self.decay}")


_VANDERMONDE_ELEMENTS = 1 << 22  # complex powers held at once (32 MiB in complex64)


def _powers(dta_re: Tensor, dta_im: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of ``exp(dta * l)`` for ``start <= l < stop``, each ``(channels, N/2,
    stop - start)``, from ``dta``'s real and imaginary parts: as ``exp(Re) * (cos, sin)(Im)``, 4x faster than
    torch's complex ``exp`` here."""
    steps = torch.arange(start, stop, device=dta_re.device, dtype=dta_re.dtype)
    magnitude = (dta_re.unsqueeze(-1) * steps).exp()
    phase = dta_im.unsqueeze(-1) * steps
    return magnitude * phase.cos(), magnitude * phase.sin()


def _vandermonde(c: Tensor, dta: Tensor, length: int) -> Tensor:
    """:class:`_Vandermonde`'s kernel with every power materialised, ``(channels, N/2, length)`` at once (the
    reference's einsum): differentiable to every order, by every transform."""
    steps = torch.arange(length, device=dta.device, dtype=dta.real.dtype)
    return 2.0 * torch.einsum("hn,hnl->hl", c, (dta.unsqueeze(-1) * steps).exp()).real


class _Vandermonde(torch.autograd.Function):
    """``K[h, l] = 2 Re(sum_n c[h, n] exp(dta[h, n] l))`` for ``l < length``, computed over chunks of
    positions: memory ``O(channels * N * chunk)`` instead of the ``O(channels * N * length)`` of
    materialising every power (the reference's einsum), in forward and in backward, which
    recomputes the powers of each chunk rather than saving them. Real arithmetic throughout (real
    batched matmuls over the channels). Gradients, with real ``G = dL/dK`` and ``v_l = exp(dta l)``:
    ``dL/dc = 2 conj(sum_l G_l v_l)`` and ``dL/d dta = 2 conj(c sum_l G_l l v_l)``. With
    ``create_graph=True`` the backward differentiates the materialised product (every order works, at the
    reference's memory).
    """

    @staticmethod
    def forward(ctx, c: Tensor, dta: Tensor, length: int, chunk: int) -> Tensor:
        out = c.real.new_empty(c.shape[0], length)  # (channels, length)
        c_re, c_im = c.real.unsqueeze(1), c.imag.unsqueeze(1)  # (channels, 1, N/2)
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            v_re, v_im = _powers(dta.real, dta.imag, start, stop)
            out[:, start:stop] = 2.0 * (torch.bmm(c_re, v_re) - torch.bmm(c_im, v_im)).squeeze(1)
        ctx.save_for_backward(c, dta)
        ctx.length, ctx.chunk = length, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        c, dta = ctx.saved_tensors
        need_c, need_dta = ctx.needs_input_grad[:2]
        # create_graph=True, or batched gradients (its sums below are not batched): differentiate the
        # materialised product instead
        if torch.is_grad_enabled() or batched(grad):
            with torch.enable_grad():
                c, dta = own_nodes(c, dta)  # c is computed from dta: ask for each one's own share
                wanted = [t for t, need in ((c, need_c), (dta, need_dta)) if need]
                kernel = _vandermonde(c, dta, ctx.length)
                grads = iter(torch.autograd.grad(kernel, wanted, grad, create_graph=True))
            return (next(grads) if need_c else None, next(grads) if need_dta else None, None, None)
        sums = torch.zeros(2, 2, *c.shape, dtype=grad.dtype, device=grad.device)  # [l^0, l^1] x [re, im]
        for start in range(0, ctx.length, ctx.chunk):
            stop = min(start + ctx.chunk, ctx.length)
            v_re, v_im = _powers(dta.real, dta.imag, start, stop)  # (channels, N/2, chunk)
            g = grad[:, start:stop].unsqueeze(-1)  # (channels, chunk, 1)
            weights = {0: g} if need_c else {}
            if need_dta:
                weights[1] = g * torch.arange(start, stop, device=g.device, dtype=g.dtype).unsqueeze(-1)
            for k, w in weights.items():
                sums[k, 0] += torch.bmm(v_re, w).squeeze(-1)
                sums[k, 1] += torch.bmm(v_im, w).squeeze(-1)
        grad_c = 2.0 * torch.complex(sums[0, 0], -sums[0, 1]) if need_c else None
        grad_dta = 2.0 * (c * torch.complex(sums[1, 0], sums[1, 1])).conj() if need_dta else None
        return grad_c, grad_dta, None, None


class S4DKernel(nn.Module):
    """S4D's diagonal state-space kernel generator (S4D-Lin init): ``forward(length) -> (channels, length)``.

    The Vandermonde product is computed in chunks of positions with its own backward
    (:class:`_Vandermonde`): memory ``O(channels * d_state * chunk)`` rather than the
    reference's ``O(channels * d_state * length)``; at 256 channels, ``d_state=64`` and
    length 16384, forward + backward takes 0.6 GiB and 1.9 s instead of 4.3 GiB and 5.6 s.

    ``log_dt``, ``log_A_real`` and ``A_imag`` are marked ``kind="ssm"`` with no weight
    decay and ``lr_scale`` for :func:`largekernel.optim.param_groups` (the reference's
    ``_optim`` dict); ``C`` (stored as ``view_as_real``) is an ordinary parameter.
    """

    def __init__(self, channels: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1,
                 lr_scale: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = positive_int(channels, "channels")
        if positive_int(d_state, "d_state") % 2:
            raise ConvArgumentError(f"d_state must be even (conjugate pairs), got {d_state!r}")
        if not 0 < dt_min <= dt_max:
            raise ConvArgumentError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.d_state, self.dt_min, self.dt_max = d_state, dt_min, dt_max
        factory = {"device": device, "dtype": dtype}
        half = d_state // 2
        self.log_dt = mark(nn.Parameter(torch.empty(channels, **factory)), kind="ssm", lr_scale=lr_scale,
                           weight_decay=0.0)
        self.C = nn.Parameter(torch.empty(channels, half, 2, **factory))
        self.log_A_real = mark(nn.Parameter(torch.empty(channels, half, **factory)), kind="ssm",
                               lr_scale=lr_scale, weight_decay=0.0)
        self.A_imag = mark(nn.Parameter(torch.empty(channels, half, **factory)), kind="ssm", lr_scale=lr_scale,
                           weight_decay=0.0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            lo, hi = math.log(self.dt_min), math.log(self.dt_max)
            self.log_dt.uniform_(lo, hi)
            # C ~ complex normal with unit variance per component, as torch.randn(..., dtype=cfloat).
            self.C.normal_(0.0, 0.5**0.5)
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_(math.pi * torch.arange(self.d_state // 2, dtype=self.A_imag.dtype,
                                                     device=self.A_imag.device).expand_as(self.A_imag))

    def forward(self, length: int) -> Tensor:
        # Complex arithmetic needs float32 at least (there is no complex bfloat16).
        real = torch.promote_types(self.log_dt.dtype, torch.float32)
        dt = self.log_dt.to(real).exp().unsqueeze(-1)  # (channels, 1)
        a_re, a_im = -self.log_A_real.to(real).exp(), self.A_imag.to(real)  # (channels, N/2)
        if exporting_onnx():
            return self._real_arithmetic(length, dt, a_re, a_im, self.C.to(real))
        a = torch.complex(a_re, a_im)
        c = torch.view_as_complex(self.C.to(real))  # (channels, N/2)
        dta = a * dt
        c = c * (dta.exp() - 1.0) / a  # zero-order hold
        if transformed(c, dta):  # torch.func, forward-mode AD: every power at once, differentiated
            return _vandermonde(c, dta, length)
        chunk = max(64, _VANDERMONDE_ELEMENTS // max(1, c.numel()))
        return _Vandermonde.apply(c, dta, length, chunk)  # (channels, length)

    @staticmethod
    def _real_arithmetic(length: int, dt: Tensor, a_re: Tensor, a_im: Tensor, C: Tensor) -> Tensor:
        """:meth:`forward`'s kernel with every complex number as its real and imaginary parts (what
        ``torch.onnx.export`` records: ONNX has no complex numbers), all positions at once."""
        c_re, c_im = C.unbind(-1)  # (channels, N/2)
        d_re, d_im = a_re * dt, a_im * dt  # dt A
        growth = d_re.exp()
        e_re, e_im = growth * d_im.cos() - 1.0, growth * d_im.sin()  # exp(dt A) - 1
        p_re, p_im = c_re * e_re - c_im * e_im, c_re * e_im + c_im * e_re  # C (exp(dt A) - 1)
        norm = a_re.square() + a_im.square()
        h_re, h_im = (p_re * a_re + p_im * a_im) / norm, (p_im * a_re - p_re * a_im) / norm  # ... / A
        v_re, v_im = _powers(d_re, d_im, 0, length)  # (channels, N/2, length)
        return 2.0 * (torch.bmm(h_re.unsqueeze(1), v_re) - torch.bmm(h_im.unsqueeze(1), v_im)).squeeze(1)

    def extra_repr(self) -> str:
        return f"{self.channels}, d_state={self.d_state}, dt_min={self.dt_min}, dt_max={self.dt_max}"


class _LongConv1d(KernelConvNd):
    """Depthwise long convolution (causal or two-sided) + ``D`` skip + optional pointwise mixing + bias.

    The depthwise kernel for a length-``L`` input spans ``min(L, span)`` causal taps and (bidirectional)
    ``min(L - 1, span)`` anticausal ones, ``D`` folded in at offset 0: one call of the engine (FFT for long
    kernels); a pointwise map, when ``out_channels != in_channels``, follows as a matmul.
    """

    _nd = 1
    input_dependent = True
    baked_sizes = "up to"  # the kernel for length L, cut to the first n taps, is the kernel for length n <= L

    def _init_layer(self, in_channels: int, out_channels: int | None, bias: bool, skip: bool,
                    bidirectional: bool, l_max: int | None, backend: str, factory: dict) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        positive_int(in_channels, "in_channels")
        positive_int(out_channels, "out_channels")
        # The layer as one convolution: depthwise, or dense with the pointwise map folded in.
        groups = in_channels if out_channels == in_channels else 1
        KernelConvNd.__init__(self, in_channels, out_channels, 1, 0, 1, groups, bias, "zeros", backend, **factory)
        self.bidirectional = bool(bidirectional)
        self.l_max = None if l_max is None else positive_int(l_max, "l_max")
        self.D = nn.Parameter(torch.empty(in_channels, **factory)) if skip else None
        if out_channels != in_channels:
            self.pointwise = nn.Parameter(torch.empty(out_channels, in_channels, **factory))
        else:
            self.register_parameter("pointwise", None)

    def _reset_layer(self) -> None:
        _reset_skip_pointwise_bias(self)

    def kernels(self, length: int) -> tuple[Tensor, Tensor | None]:
        """Causal kernel ``(C, <= length)`` (tap ``s`` weighs ``x[t - s]``) and the anticausal one or None."""
        raise NotImplementedError

    def _depthwise(self, length: int) -> Tensor:
        """``(C, 1, causal + anticausal taps)`` in correlation layout: the causal taps reversed (offset 0, with
        ``D``, last of them), then the anticausal ones."""
        causal, anticausal = self.kernels(length)
        dtype = next(self.parameters()).dtype  # the layer's (S4D computes its kernel in at least float32)
        causal = causal.to(dtype)
        anticausal = None if anticausal is None else anticausal.to(dtype)
        if self.D is not None:
            causal = torch.cat([causal[:, :1] + self.D.unsqueeze(-1).to(causal.dtype), causal[:, 1:]], dim=-1)
        weight = causal.flip(-1)
        if anticausal is not None:
            weight = torch.cat([weight, anticausal[:, : length - 1]], dim=-1)
        return weight.unsqueeze(1)  # (C, 1, k)

    def construct_kernel(self, input_size: Sequence[int] | int | None = None) -> Tensor:
        """The dense kernel for sequences of length ``input_size`` (required): ``(out, 1 or in, k)``, torch conv
        layout, applied with :meth:`kernel_padding`; ``D`` at offset 0, the pointwise map folded in."""
        (length,) = self._bake_size(input_size)
        weight = self._depthwise(length)  # (C, 1, k)
        if self.pointwise is not None:
            weight = self.pointwise.unsqueeze(-1) * weight.transpose(0, 1)  # (out, in, k)
        return weight

    def kernel_padding(self, kernel_size: Sequence[int]):
        """Causal: ``k - 1`` before; two-sided: ``(k - 1) // 2`` before and ``k // 2`` after."""
        (k,) = kernel_size
        return (((k - 1) // 2, k // 2),) if self.bidirectional else ((k - 1, 0),)

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        (length,) = self._spatial_size(input)
        if self.l_max is not None and length > self.l_max:
            raise ConvArgumentError(f"{type(self).__name__} was built for sequences up to l_max={self.l_max}, got "
                                    f"length {length}")
        if self.pointwise is None:
            return super().forward(input)
        weight = self._depthwise(length)
        y = convolve(input, weight, None, padding=self.kernel_padding(weight.shape[2:]), groups=self.in_channels,
                     backend=self.backend)  # (B, C, L)
        y = torch.matmul(self.pointwise.to(y.dtype), y)  # (B, out, L)
        return y if self.bias is None else y + self.bias.unsqueeze(-1)

    def _layer_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}"
        if self.l_max is not None:
            s += f", l_max={self.l_max}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.D is None:
            s += ", skip=False"
        if self.bias is None:
            s += ", bias=False"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s


def _reset_skip_pointwise_bias(layer: nn.Module) -> None:
    """The reference layers' initialisation of ``D`` (normal), the pointwise map and the bias (``nn.Linear``'s)."""
    if layer.D is not None:
        nn.init.normal_(layer.D)
    if layer.pointwise is not None:
        nn.init.kaiming_uniform_(layer.pointwise, a=5**0.5)
    if layer.bias is not None:
        bound = 1.0 / layer.in_channels**0.5
        nn.init.uniform_(layer.bias, -bound, bound)


class SGConv1d(_LongConv1d):
    """Structured global convolution (SGConv, Li et al. ICLR 2023), channels-first like ``nn.Conv1d``.

    Args:
        in_channels: channels (one kernel each; two when ``bidirectional``).
        out_channels: default ``in_channels``; otherwise a pointwise ``in -> out`` map follows.
        kernel_size: the kernel's span (taps beyond are zero); default ``l_max``.
        bias: learnable bias.
        l_max: longest accepted sequence (longer raises); ``None``: any length.
        kernel_dim, num_scales, decay, interpolation: see :class:`SGKernel`.
        bidirectional: add an anticausal kernel (offsets ``-1 .. -span``); default causal.
        skip: the ``D * x`` term of the reference layer.
        kernel_lr_scale: if given, sub-kernels are marked ``kind="sgconv"`` with this lr scale
            and no weight decay (the reference gives them their own lr).
        backend: ``"auto"``, ``"direct"`` or ``"fft"`` for applying the kernel (the engine's).

    Shape:
        - Input: ``(N, C_in, L)``, ``L <= l_max`` when set.
        - Output: ``(N, C_out, L)``.
    """

    size_knob = "kernel_dim"

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int | None = None,
                 bias: bool = True, *, l_max: int | None = None, kernel_dim: int = 64,
                 num_scales: int | None = None, decay: float | tuple[float, float] = 2.0,
                 interpolation: str = "linear", bidirectional: bool = False, skip: bool = True,
                 kernel_lr_scale: float | None = None, backend: str = "auto", device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        self._init_layer(in_channels, out_channels, bias, skip, bidirectional, l_max, backend, factory)
        span = kernel_size if kernel_size is not None else l_max
        if span is None:
            if num_scales is None:
                raise ValueError("SGConv1d needs kernel_size, l_max or num_scales to size its kernel, got none")
            span = kernel_dim * 2 ** (num_scales - 1)
        self.kernel_size = positive_int(span, "kernel_size")
        count = in_channels * (2 if bidirectional else 1)
        self.kernel = SGKernel(count, span, kernel_dim, num_scales, decay, interpolation, kernel_lr_scale,
                               **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.kernel.reset_parameters()
        self._reset_layer()

    def kernels(self, length: int) -> tuple[Tensor, Tensor | None]:
        k = self.kernel(length)  # (count, min(length, span))
        if self.bidirectional:
            return k[: self.in_channels], k[self.in_channels:]
        return k, None

    def extra_repr(self) -> str:
        return f"{self._layer_repr()}, kernel_size={self.kernel_size}"


class S4DConv1d(_LongConv1d):
    """S4D convolution (Gu et al. NeurIPS 2022), channels-first like ``nn.Conv1d``; any length.

    The kernel of a diagonal state space (:class:`S4DKernel`) as long as the input
    (or ``kernel_size`` taps), applied by causal FFT convolution, plus ``D * x``.

    Args:
        in_channels: channels (one SSM each; two when ``bidirectional``).
        out_channels: default ``in_channels``; otherwise a pointwise ``in -> out`` map follows.
        kernel_size: truncate the kernel to this many taps; default: as long as the input.
        bias: learnable bias.
        l_max: longest accepted sequence (longer raises); ``None``: any length.
        d_state: state size ``N`` (``N/2`` conjugate pairs).
        dt_min, dt_max: range of the log-uniform initial step size.
        bidirectional: add an anticausal SSM kernel.
        skip: the ``D * x`` term.
        ssm_lr_scale: learning-rate scale of ``log_dt``, ``log_A_real``, ``A_imag`` in
            :func:`largekernel.optim.param_groups` (they never get weight decay).
        backend: ``"auto"``, ``"direct"`` or ``"fft"`` for applying the kernel (the engine's).

    Shape:
        - Input: ``(N, C_in, L)``, ``L <= l_max`` when set.
        - Output: ``(N, C_out, L)``.
    """

    size_knob = "d_state"

    @classmethod
    def size_kwargs(cls, value: int) -> dict:
        """``d_state = 2 * value``: the state comes in conjugate pairs."""
        return {"d_state": 2 * value}

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int | None = None,
                 bias: bool = True, *, l_max: int | None = None, d_state: int = 64, dt_min: float = 0.001,
                 dt_max: float = 0.1, bidirectional: bool = False, skip: bool = True,
                 ssm_lr_scale: float | None = None, backend: str = "auto", device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        self._init_layer(in_channels, out_channels, bias, skip, bidirectional, l_max, backend, factory)
        self.kernel_size = None if kernel_size is None else positive_int(kernel_size, "kernel_size")
        count = in_channels * (2 if bidirectional else 1)
        self.kernel = S4DKernel(count, d_state, dt_min, dt_max, ssm_lr_scale, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.kernel.reset_parameters()
        self._reset_layer()

    def kernels(self, length: int) -> tuple[Tensor, Tensor | None]:
        taps = length if self.kernel_size is None else min(length, self.kernel_size)
        k = self.kernel(taps)  # (count, taps)
        if self.bidirectional:
            return k[: self.in_channels], k[self.in_channels:]
        return k, None

    def extra_repr(self) -> str:
        s = self._layer_repr()
        return s if self.kernel_size is None else f"{s}, kernel_size={self.kernel_size}"


class SGConv2d(KernelConvNd):
    """2-D SGConv: a separable kernel, the outer product of two bidirectional SGConv kernels (seed 003 §3.2).

    Along each axis, one :class:`SGKernel` of ``2 * in_channels`` kernels gives the
    taps on the two sides of the centre (decaying away from it); the
    ``kernel_size`` box is their outer product, applied depthwise by
    :func:`largekernel.functional.convolve` with "same" zero padding (FFT by
    default: the box is large), plus ``D * x``, an optional pointwise
    ``in -> out`` map and a bias.

    Args:
        in_channels: channels (one kernel each).
        out_channels: default ``in_channels``; otherwise a pointwise map follows.
        kernel_size: the box ``(K_h, K_w)`` (or one int); tap ``j`` of an axis is
            offset ``j - (K - 1) // 2`` (torch's "same" layout, cross-correlation).
        bias: learnable bias.
        kernel_dim, num_scales, decay, interpolation: see :class:`SGKernel` (per half axis).
        bidirectional: must be True (accepted for the layer factory's 1-D/2-D symmetry).
        skip: the ``D * x`` term.
        kernel_lr_scale: as :class:`SGConv1d`.
        backend: ``"auto"``, ``"direct"`` or ``"fft"`` for applying the box.

    Shape:
        - Input: ``(N, C_in, H, W)``.
        - Output: ``(N, C_out, H, W)``.
    """

    _nd = 2
    size_knob = "kernel_dim"

    def __init__(self, in_channels: int, out_channels: int | None = None,
                 kernel_size: int | tuple[int, int] | None = None, bias: bool = True, *, kernel_dim: int = 16,
                 num_scales: int | None = None, decay: float | tuple[float, float] = 2.0,
                 interpolation: str = "linear", bidirectional: bool = True, skip: bool = True,
                 kernel_lr_scale: float | None = None, backend: str = "fft", device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        if not bidirectional:
            raise ConvArgumentError("SGConv2d kernels are two-sided; bidirectional=False (causal) exists in 1-D only")
        if kernel_size is None:
            raise ConvArgumentError("SGConv2d needs kernel_size (the box its kernel spans), got None")
        out_channels = in_channels if out_channels is None else out_channels
        positive_int(in_channels, "in_channels")
        positive_int(out_channels, "out_channels")
        super().__init__(in_channels, out_channels, 1, "same", 1, in_channels if out_channels == in_channels else 1,
                         bias, "zeros", backend, device, dtype)
        self.kernel_size = ntuple(kernel_size, 2, "kernel_size", minimum=1)
        # Each axis: taps at offsets >= 0 (K - (K-1)//2 of them) and < 0 ((K-1)//2), from one generator.
        self.kernel_h, self.kernel_w = (
            SGKernel(2 * in_channels, k - (k - 1) // 2, kernel_dim, num_scales, decay, interpolation,
                     kernel_lr_scale, **factory) for k in self.kernel_size)
        self.D = nn.Parameter(torch.empty(in_channels, **factory)) if skip else None
        if self.out_channels != self.in_channels:
            self.pointwise = nn.Parameter(torch.empty(self.out_channels, self.in_channels, **factory))
        else:
            self.register_parameter("pointwise", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.kernel_h.reset_parameters()
        self.kernel_w.reset_parameters()
        _reset_skip_pointwise_bias(self)

    def _axis(self, generator: SGKernel, size: int) -> Tensor:
        k = generator(size)  # (2C, K - left)
        left = (size - 1) // 2
        c = self.in_channels
        return torch.cat([k[c:, :left].flip(-1), k[:c]], dim=-1)  # (C, K): tap j is offset j - left

    def depthwise_kernel(self) -> Tensor:
        """The box applied to each channel, ``(C, 1, K_h, K_w)``, before ``D``, pointwise and bias."""
        a = self._axis(self.kernel_h, self.kernel_size[0])  # (C, K_h)
        b = self._axis(self.kernel_w, self.kernel_size[1])  # (C, K_w)
        return (a.unsqueeze(-1) * b.unsqueeze(-2)).unsqueeze(1)  # (C, 1, K_h, K_w)

    def _with_skip(self) -> Tensor:
        """The depthwise box with ``D`` added at its centre, ``(C, 1, K_h, K_w)``."""
        weight = self.depthwise_kernel()  # (C, 1, K_h, K_w)
        if self.D is None:
            return weight
        centre = torch.zeros_like(weight)
        centre[:, 0, (self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2] = 1.0
        return weight + centre * self.D.view(-1, 1, 1, 1)

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The dense kernel, ``(out, 1 or in, K_h, K_w)`` in torch conv layout, ``D`` and pointwise folded in
        (whatever the input size)."""
        weight = self._with_skip()
        if self.pointwise is not None:
            weight = self.pointwise.view(*self.pointwise.shape, 1, 1) * weight.transpose(0, 1)  # (out, in, Kh, Kw)
        return weight

    @leaf_under_fx
    def forward(self, input: Tensor) -> Tensor:
        if self.pointwise is None:
            return super().forward(input)
        self._spatial_size(input)
        y = convolve(input, self._with_skip(), None, padding="same", groups=self.in_channels, backend=self.backend)
        # The pointwise map as torch's 1x1 convolution: an unbatched input, channels_last kept, the bias fused
        bias = None if self.bias is None else self.bias.to(y.dtype)
        return convolve(y, self.pointwise.view(*self.pointwise.shape, 1, 1).to(y.dtype), bias, backend="direct")

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.D is None:
            s += ", skip=False"
        if self.bias is None:
            s += ", bias=False"
        return s if self.backend == "fft" else f"{s}, backend={self.backend!r}"
