"""Kernel networks: small coordinate networks that map relative positions to convolution kernel values.

CKConv (Romero et al., "CKConv: Continuous Kernel Convolution for Sequential
Data", ICLR 2022) parameterises a convolution kernel as a function
``psi: [-1, 1]^d -> R^{out x in}`` given by a small network; FlexConv (Romero,
Bruintjes et al., "FlexConv: Continuous Kernel Convolutions with Differentiable
Kernel Sizes", ICLR 2022) introduces MAGNet, a multiplicative anisotropic Gabor
network whose frequency content is known analytically. This module provides:

- :class:`MLPKernel`: linear layers with ReLU / GELU (the original CKConv MLP);
- :class:`SIRENKernel`: ``sin(omega_0 (W x + b))`` layers with the SIREN
  initialisation (Sitzmann et al., 2020);
- :class:`FourierKernel`, :class:`GaborKernel`: multiplicative filter networks
  (Fathony et al., "Multiplicative Filter Networks", ICLR 2021);
- :class:`MAGNetKernel`: MAGNet, FlexConv's default (anisotropic Gaussian windows,
  ``gamma_l ~ Gamma(alpha / (l + 1), beta)``), with :meth:`~MAGNetKernel.frequency_bounds`.

One interface for all: ``net(coords) -> kernel`` with ``coords`` of shape
``(*grid, dim)`` (``(N, dim)`` for scattered points) and the kernel returned
*channels first*, ``(out_features, *grid)``, which is a convolution kernel's
layout. Layers are linear maps over the last (coordinate) axis, so sampling costs
``O(grid * hidden * out_features)`` and never depends on the batch size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from largekernel.nn._base import must_call
from largekernel.nn.marks import mark

__all__ = ["MLPKernel", "SIRENKernel", "FourierKernel", "GaborKernel", "MAGNetKernel", "KERNEL_NETS",
           "KernelNetLinear", "create_kernel_net"]


class KernelNetLinear(nn.Linear):
    """``torch.nn.Linear`` as a kernel net's layer: a type of its own, so that tools acting on a model's
    ``nn.Linear`` layers by type leave the kernel nets alone. ``torch.ao.quantization.quantize_dynamic(model,
    {nn.Linear})`` replaced them with quantized layers, which hold no ``weight`` tensor for the kernel net to read
    (CKConv, FlexConv and NIFF failed); a kernel net computes a kernel, not activations, and keeps its own
    initialisation."""


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class _KernelNet(nn.Module):
    """Shared plumbing: coordinate checks, the output layer and the channels-first layout.

    Subclasses implement ``_hidden(coords (N, dim), by_modules) -> (N, hidden_channels)``.
    """

    def __init__(self, dim: int, out_features: int, hidden_channels: int, bias: bool, factory: dict) -> None:
        super().__init__()
        _check_positive_int(dim, "dim")
        _check_positive_int(out_features, "out_features")
        _check_positive_int(hidden_channels, "hidden_channels")
        self.dim = dim
        self.out_features = out_features
        self.hidden_channels = hidden_channels
        self.output = KernelNetLinear(hidden_channels, out_features, bias=bias, **factory)

    def forward(self, coords: Tensor, scale: Tensor | None = None) -> Tensor:
        """Kernel values ``(out_features, *grid)`` at ``coords`` ``(*grid, dim)``.

        ``scale`` (shape ``grid``, optional) multiplies every channel at each
        position: ``net(coords, scale) == net(coords) * scale``, but applied to
        the ``hidden_channels`` features before the output layer, which is far
        cheaper than rescaling the ``out_features``-channel kernel (FlexConv's
        mask is such a per-position factor).
        """
        if not isinstance(coords, Tensor):
            raise TypeError(f"coords must be a Tensor of shape (*grid, {self.dim}), got {type(coords).__name__}")
        if coords.dim() < 1 or coords.shape[-1] != self.dim:
            raise ValueError(f"coords must have shape (*grid, {self.dim}) for a {self.dim}-D kernel net, "
                             f"got {tuple(coords.shape)}")
        grid = coords.shape[:-1]
        if scale is not None and scale.shape != grid:
            raise ValueError(f"scale must have the grid's shape {tuple(grid)}, got {tuple(scale.shape)}")
        if self._calls_layers():
            # The layers called as modules (hooks, or a layer of the user's): the output layer on the features,
            # then the scale.
            out = self.output(self._hidden(coords.reshape(-1, self.dim), by_modules=True))  # (N, out_features)
            out = out.t().reshape(self.out_features, *grid)
            return out if scale is None else out * scale
        flat = None if scale is None else scale.reshape(-1)  # (N,)
        return self.project(self.features(coords.reshape(-1, self.dim), flat), grid, flat)

    def features(self, coords: Tensor, scale: Tensor | None = None) -> Tensor:
        """What the output layer maps, at points ``coords`` ``(N, dim)``: the last hidden features
        ``(N, hidden_channels)``, times ``scale`` ``(N,)`` per point when given.

        The part of the net that does not depend on ``out_features``: under ``torch.compile``, FlexConv's
        layers compile it once per grid and kernel net, whatever their channels (:meth:`project` follows)."""
        h = self._hidden(coords)  # (N, hidden)
        return h if scale is None else h * scale.unsqueeze(1)

    def project(self, features: Tensor, grid: Sequence[int], scale: Tensor | None = None) -> Tensor:
        """The output layer on :meth:`features` computed with the same ``scale`` (which scales the bias too),
        laid out as the kernel: ``(out_features, *grid)``."""
        weight, bias = self.output.weight, self.output.bias
        if scale is not None and bias is not None:
            # The bias becomes one more input feature, s itself: (W | b) @ (h s | s)^T in one GEMM.
            features = torch.cat([features, scale.unsqueeze(1)], dim=1)  # (N, hidden + 1)
            weight, bias = torch.cat([weight, bias.unsqueeze(1)], dim=1), None  # (out, hidden + 1)
        # W @ h^T writes the kernel channels-first directly: no transpose copy of the (large) output.
        if bias is None:
            out = weight @ features.t()  # (out_features, N)
        else:
            out = torch.addmm(bias.unsqueeze(1), weight, features.t())  # (out_features, N)
        return out.view(self.out_features, *grid)

    def _read_not_called(self) -> tuple[nn.Module, ...]:
        """The layers whose parameters the fast path reads without calling them (:meth:`project`'s output layer;
        subclasses add theirs)."""
        return (self.output,)

    def _calls_layers(self) -> bool:
        """Whether :meth:`forward` calls every layer as a module (:func:`~largekernel.nn._base.must_call`): where
        a layer it would read has hooks, or is not the library's own (one the user put in its place)."""
        return must_call(*self._read_not_called(), own=(KernelNetLinear, _MFNFilter))

    def _hidden(self, coords: Tensor, by_modules: bool = False) -> Tensor:
        """The last hidden features ``(N, hidden_channels)`` at ``coords`` ``(N, dim)``; ``by_modules``: every
        layer called as a module (:meth:`_calls_layers`), not only those the fast path calls."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_features={self.out_features}, hidden_channels={self.hidden_channels}"


class MLPKernel(_KernelNet):
    """``num_layers`` linear layers with ReLU or GELU in between (CKConv's MLP kernel).

    Args:
        dim: coordinate dimension (1 for sequences, 2 for images).
        out_features: kernel values per position (``out * in / groups``).
        hidden_channels: width of the hidden layers.
        num_layers: number of linear layers, the output layer included (>= 2).
        activation: ``"relu"`` or ``"gelu"``.

    Shape:
        - Input: ``(*grid, dim)``
        - Output: ``(out_features, *grid)``
    """

    def __init__(self, dim: int, out_features: int, hidden_channels: int = 32, num_layers: int = 3,
                 activation: str = "gelu", bias: bool = True, device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(dim, out_features, hidden_channels, bias, factory)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 2:
            raise ValueError(f"num_layers must be an int >= 2 (input and output layers), got {num_layers!r}")
        acts = {"relu": nn.ReLU, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {tuple(acts)}, got {activation!r}")
        self.activation = activation
        layers: list[nn.Module] = [KernelNetLinear(dim, hidden_channels, bias=bias, **factory), acts[activation]()]
        for _ in range(num_layers - 2):
            layers += [KernelNetLinear(hidden_channels, hidden_channels, bias=bias, **factory), acts[activation]()]
        self.body = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = "relu" if self.activation == "relu" else "linear"
        for m in [*self.body, self.output]:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _hidden(self, coords: Tensor, by_modules: bool = False) -> Tensor:
        return self.body(coords)


class _SineLayer(nn.Module):
    """``sin(omega_0 * (W x + b))`` (Sitzmann et al. 2020; omega_0 multiplies the bias too, as in CKConv)."""

    def __init__(self, in_features: int, out_features: int, omega_0: float, learn_omega_0: bool, bias: bool,
                 factory: dict) -> None:
        super().__init__()
        self.linear = KernelNetLinear(in_features, out_features, bias=bias, **factory)
        omega = torch.full((), float(omega_0), **factory)
        if learn_omega_0:
            self.omega_0 = mark(nn.Parameter(omega), kind="kernel_net", weight_decay=0.0)
        else:
            self.register_buffer("omega_0", omega)

    def preactivation(self, x: Tensor) -> Tensor:
        return self.omega_0 * self.linear(x)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.preactivation(x))


class SIRENKernel(_KernelNet):
    """SIREN kernel: ``num_layers - 1`` sine layers then a linear output (CKConv's default kernel).

    Initialisation (Sitzmann et al. 2020, as used by CKConv): first layer
    ``W ~ U(-1/dim, 1/dim)``, later layers ``W ~ U(-sqrt(6/fan_in)/omega_0, +...)``,
    so that every hidden pre-activation ``omega_0 (W x + b)`` is ~ N(0, 1)
    (up to the bias) and every sine output is arcsine-distributed with variance 1/2.

    Args:
        omega_0: frequency multiplier of every sine layer (SIREN's 30 by default).
        learn_omega_0: make ``omega_0`` a parameter.

    Shape:
        - Input: ``(*grid, dim)``
        - Output: ``(out_features, *grid)``
    """

    def __init__(self, dim: int, out_features: int, hidden_channels: int = 32, num_layers: int = 3,
                 omega_0: float = 30.0, learn_omega_0: bool = False, bias: bool = True, device=None,
                 dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(dim, out_features, hidden_channels, bias, factory)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 2:
            raise ValueError(f"num_layers must be an int >= 2 (input and output layers), got {num_layers!r}")
        if not omega_0 > 0:
            raise ValueError(f"omega_0 must be > 0, got {omega_0!r}")
        self.omega_0 = float(omega_0)
        sizes = [dim] + [hidden_channels] * (num_layers - 1)
        self.layers = nn.ModuleList(_SineLayer(i, o, omega_0, learn_omega_0, bias, factory)
                                    for i, o in zip(sizes[:-1], sizes[1:]))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for idx, layer in enumerate(self.layers):
            layer.omega_0.fill_(self.omega_0)  # a buffer, or the learned one's initial value
            fan_in = layer.linear.in_features
            bound = 1.0 / fan_in if idx == 0 else math.sqrt(6.0 / fan_in) / self.omega_0
            layer.linear.weight.uniform_(-bound, bound)
            if layer.linear.bias is not None:
                b = 1.0 / math.sqrt(fan_in)
                layer.linear.bias.uniform_(-b, b)
        bound = math.sqrt(6.0 / self.hidden_channels) / self.omega_0
        self.output.weight.uniform_(-bound, bound)
        if self.output.bias is not None:
            self.output.bias.zero_()

    def _hidden(self, coords: Tensor, by_modules: bool = False) -> Tensor:
        h = coords
        for layer in self.layers:
            h = layer(h)  # (N, hidden)
        return h


def _filter_values(x: Tensor, pre: Tensor, gamma: Tensor | None, mu: Tensor | None) -> Tensor:
    """``window(x) * sin(pre)`` at points ``x`` ``(N, dim)``, ``pre = W x + b`` ``(..., N, hidden)``, for one
    filter or a stack of them (leading dims on ``pre`` and every parameter): ``(..., N, hidden)``.

    The window's ``gamma`` and ``mu`` come transposed, ``(..., dim or 1, hidden)``: every term of the window
    then runs along ``hidden`` in memory. Inductor's C++ code vectorises only such loads; with the parameters'
    own ``(hidden, dim)`` layout the compiled window was scalar code, 3x slower than eager (docs/deploy.md)."""
    out = torch.sin(pre)
    if gamma is not None:
        z = gamma.unsqueeze(-2) * (x.t().unsqueeze(-1) - mu.unsqueeze(-2))  # (..., dim, N, hidden)
        out = out * torch.exp(-0.5 * z.square().sum(-3))
    return out


class _MFNFilter(nn.Module):
    """One multiplicative filter: ``window(x) * sin(W x + b)``; ``window`` a Gaussian for Gabor / MAGNet.

    ``gamma`` has shape ``(hidden, dim)`` (anisotropic, MAGNet) or ``(hidden, 1)``
    (isotropic, Gabor); ``None`` gives a pure sine filter (FourierNet).
    """

    def __init__(self, dim: int, hidden: int, input_scale: float, gamma_shape: tuple[int, int] | None,
                 alpha: float, beta: float, init_spatial_value: float, bias: bool, factory: dict) -> None:
        super().__init__()
        self.linear = KernelNetLinear(dim, hidden, bias=bias, **factory)
        self.input_scale = input_scale
        self.alpha, self.beta, self.init_spatial_value = alpha, beta, init_spatial_value
        if gamma_shape is None:
            self.gamma = self.mu = None
        else:
            # Window centres and widths are positions/scales, not weights: no weight decay on them.
            self.gamma = mark(nn.Parameter(torch.empty(gamma_shape, **factory)), kind="kernel_net", weight_decay=0.0)
            self.mu = mark(nn.Parameter(torch.empty(hidden, dim, **factory)), kind="kernel_net", weight_decay=0.0)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.linear.reset_parameters()
        scale = self.input_scale
        if self.gamma is not None:
            # on the CPU whatever the default device: sampling checks its arguments' values, which a layer built
            # on the meta device (deferred initialisation) does not have
            gamma = torch.distributions.Gamma(torch.tensor(float(self.alpha), device="cpu"),
                                              torch.tensor(float(self.beta), device="cpu"))
            self.gamma.copy_(gamma.sample(self.gamma.shape).to(self.gamma))
            self.mu.uniform_(-1.0, 1.0).mul_(self.init_spatial_value)
            scale = scale * self.gamma  # (hidden, dim or 1): frequency grows with the window's precision
        self.linear.weight.mul_(scale)
        if self.linear.bias is not None:
            self.linear.bias.uniform_(-math.pi, math.pi)

    def forward(self, x: Tensor) -> Tensor:
        gamma, mu = (None, None) if self.gamma is None else (self.gamma.t(), self.mu.t())  # (dim or 1, hidden)
        return _filter_values(x, self.linear(x), gamma, mu)  # (N, hidden)

    def frequency_bound(self, gauss_stddevs: float) -> Tensor:
        """Largest frequency (cycles per unit of coordinate) along any axis: sine term plus window spread."""
        sines = self.linear.weight.abs() / (2 * math.pi)  # (hidden, dim)
        if self.gamma is not None:
            sines = sines + gauss_stddevs * self.gamma.abs() / (2 * math.pi)  # (hidden, dim)
        return sines.max()


class _MFN(_KernelNet):
    """Multiplicative filter network: ``z_0 = g_0(x)``, ``z_l = g_l(x) * (W_l z_{l-1} + b_l)``, linear output.

    ``num_layers`` hidden linear layers and ``num_layers + 1`` filters. Hidden
    linear weights ``~ U(-sqrt(weight_scale/hidden), +...)``; each filter's input
    scale is ``input_scale / sqrt(num_layers + 1)`` so that the product of the
    ``num_layers + 1`` filters has the overall bandwidth ``input_scale``.
    """

    _window: str | None = None  # None, "isotropic" or "anisotropic"

    def __init__(self, dim: int, out_features: int, hidden_channels: int = 32, num_layers: int = 3,
                 input_scale: float = 25.6, weight_scale: float = 1.0, alpha: float = 6.0, beta: float = 1.0,
                 init_spatial_value: float = 1.0, bias: bool = True, device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(dim, out_features, hidden_channels, bias, factory)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int (hidden layers; filters = num_layers + 1), "
                             f"got {num_layers!r}")
        for name, value in (("input_scale", input_scale), ("weight_scale", weight_scale), ("alpha", alpha),
                            ("beta", beta), ("init_spatial_value", init_spatial_value)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.num_layers = num_layers
        self.input_scale = float(input_scale)
        self.weight_scale = float(weight_scale)
        per_filter = input_scale / math.sqrt(num_layers + 1)
        filters = []
        for layer in range(num_layers + 1):
            if self._window is None:
                shape, a = None, alpha
            elif self._window == "isotropic":
                shape, a = (hidden_channels, 1), alpha / (num_layers + 1)  # GaborNet: same law for all filters
            else:
                shape, a = (hidden_channels, dim), alpha / (layer + 1)  # MAGNet: later filters get wider windows
            filters.append(_MFNFilter(dim, hidden_channels, per_filter, shape, a, beta, init_spatial_value, bias,
                                      factory))
        self.filters = nn.ModuleList(filters)
        self.linears = nn.ModuleList(KernelNetLinear(hidden_channels, hidden_channels, bias=bias, **factory)
                                     for _ in range(num_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for f in self.filters:
            f.reset_parameters()
        bound = math.sqrt(self.weight_scale / self.hidden_channels)
        for lin in self.linears:
            lin.reset_parameters()
            lin.weight.uniform_(-bound, bound)
        self.output.reset_parameters()

    def _filter_outputs(self, coords: Tensor) -> Tensor:
        """Every filter at once, ``(L + 1, N, hidden)``: the same values as calling each
        :class:`_MFNFilter`, in a dozen batched ops instead of ~9 per filter (these nets run on
        small grids at every training step, where per-op overhead dominates)."""
        filters = self.filters

        def stacked(name: str, transposed: bool = False) -> Tensor | None:
            tensors = [getattr(f.linear if name in ("weight", "bias") else f, name) for f in filters]
            if tensors[0] is None:
                return None
            return torch.stack([t.t() for t in tensors] if transposed else tensors)  # (L + 1, ...)

        pre = torch.matmul(coords, stacked("weight").transpose(-1, -2))  # (L + 1, N, hidden)
        bias = stacked("bias")
        if bias is not None:
            pre = pre + bias.unsqueeze(-2)
        return _filter_values(coords, pre, stacked("gamma", True), stacked("mu", True))

    def _read_not_called(self) -> tuple[nn.Module, ...]:
        return (self.output, *self.filters)  # the filters run as one batched product (_filter_outputs)

    def _hidden(self, coords: Tensor, by_modules: bool = False) -> Tensor:
        g = [f(coords) for f in self.filters] if by_modules else self._filter_outputs(coords)
        out = g[0]
        for l, lin in enumerate(self.linears):
            out = g[l + 1] * lin(out)  # (N, hidden)
        return out

    def frequency_bounds(self, gauss_stddevs: float = 2.0) -> Tensor:
        """Per-filter frequency bounds in cycles per unit of coordinate, shape ``(num_layers + 1,)``.

        A product of sinusoids has the sum of their frequencies, and the linear
        layers in between add none, so ``frequency_bounds().sum()`` bounds the
        network's output spectrum (FlexConv, Sec. 4: the Gaussian window of
        precision ``gamma`` spreads a sine of frequency ``|w| / 2 pi`` by
        ``gauss_stddevs * gamma / 2 pi``). Differentiable: the anti-aliasing
        regulariser is built from it.
        """
        return torch.stack([f.frequency_bound(gauss_stddevs) for f in self.filters])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_layers={self.num_layers}, input_scale={self.input_scale}"


class FourierKernel(_MFN):
    """FourierNet (Fathony et al. 2021): filters ``sin(W x + b)``, ``W`` scaled by ``input_scale / sqrt(L + 1)``.

    Shape:
        - Input: ``(*grid, dim)``
        - Output: ``(out_features, *grid)``
    """

    _window = None


class GaborKernel(_MFN):
    """GaborNet (Fathony et al. 2021): isotropic Gaussian windows times sines.

    Window precision ``gamma ~ Gamma(alpha / (L + 1), beta)`` (one per unit),
    centres ``mu ~ U(-1, 1) * init_spatial_value``, sine weights scaled by
    ``input_scale / sqrt(L + 1) * gamma``, phases ``~ U(-pi, pi)``.

    Shape:
        - Input: ``(*grid, dim)``
        - Output: ``(out_features, *grid)``
    """

    _window = "isotropic"


class MAGNetKernel(_MFN):
    """MAGNet (FlexConv, Romero et al. 2022): anisotropic Gabor filters multiplied layer by layer.

    Filter ``l`` (of ``L + 1``): ``exp(-1/2 sum_d (gamma_ld (x_d - mu_ld))^2) sin(W_l x + b_l)``
    with ``gamma_l ~ Gamma(alpha / (l + 1), beta)`` per unit and dimension (later
    filters are smoother), ``mu ~ U(-1, 1) * init_spatial_value``, ``W_l``'s rows
    scaled by ``input_scale / sqrt(L + 1) * gamma_l``, phases ``~ U(-pi, pi)``.
    :meth:`frequency_bounds` gives the analytic bandwidth used for anti-aliasing.

    Shape:
        - Input: ``(*grid, dim)``
        - Output: ``(out_features, *grid)``
    """

    _window = "anisotropic"


KERNEL_NETS: dict[str, type[_KernelNet]] = {
    "mlp": MLPKernel,
    "siren": SIRENKernel,
    "fourier": FourierKernel,
    "gabor": GaborKernel,
    "magnet": MAGNetKernel,
}


def create_kernel_net(name: str, dim: int, out_features: int, **kwargs) -> nn.Module:
    """Build the kernel net called ``name`` (one of :data:`KERNEL_NETS`, case-insensitive)."""
    if not isinstance(name, str) or name.lower() not in KERNEL_NETS:
        raise ValueError(f"kernel_net must be one of {tuple(KERNEL_NETS)} or an nn.Module, got {name!r}")
    return KERNEL_NETS[name.lower()](dim, out_features, **kwargs)
