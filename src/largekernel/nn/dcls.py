"""DCLS layers: convolutions whose few kernel elements sit at learnable real-valued positions.

Dilated Convolution with Learnable Spacings (Khalfaoui-Hassani, Pellegrini and
Masquelier, ICLR 2023, arXiv:2112.03740; seeds 001 and 004), with the Gaussian
interpolation of the follow-up paper. Each layer builds its dense kernel with
:func:`largekernel.functional.dcls.construct_kernel` and applies it through the
convolution engine (:func:`largekernel.functional.convolve`), so large boxes get
the FFT path while the reference package always runs a direct convolution.

Parameters are named and shaped as in the official ``dcls`` package: its
``Dcls1d/2d/3d`` (and ``Dcls3_1d``) checkpoints load with ``load_state_dict``.
``interpolation="bilinear"`` is its ``version="v1"``, ``"gaussian"`` its
``version="gauss"`` and ``"triangle"`` its ``version="max"``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import init

from largekernel.functional._args import ConvArgumentError, ntuple
from largekernel.functional.dcls import INTERPOLATIONS, SIGMA_OFFSET, WIDTH_INTERPOLATIONS, construct_kernel
from largekernel.nn._base import KernelConvNd, centre_kernel, check_choice, positive_int
from largekernel.nn.marks import mark

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "Dcls2_1d", "Dcls3_1d", "Dcls3_2d"]

_POSITION_INITS = ("normal", "uniform")
# Initial SIG: the reference's Gaussian width 0.23 + 0.27 = 0.5; the triangle starts as bilinear
# (half-width 1 + 0.01) but not at the reference's SIG = 0, where |SIG| has zero gradient forever.
_SIG_INIT = {"gaussian": 0.23, "triangle": 0.01}


class _DclsNd(KernelConvNd):
    """Shared machinery: kernel of ``dense_kernel_size`` dense dims followed by learned dims.

    Plain ``DclsConvNd`` layers have no dense dims; the N-MD variants learn
    positions along the last M of N dims and are dense along the first N - M.
    """

    size_knob = "kernel_count"
    # Version 1 state dicts come from the reference package, which measures P[i]
    # from box[i] // 2 instead of the centre of the dimension it moves along;
    # the two agree for square boxes and are converted on load otherwise.
    _version = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dense_kernel_size: tuple[int, ...],
        dilated_kernel_size: tuple[int, ...],
        stride,
        padding,
        dilation,
        groups: int,
        bias: bool,
        padding_mode: str,
        interpolation: str,
        backend: str,
        position_init: str,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, stride, padding, dilation, groups, bias, padding_mode, backend,
                         device, dtype)
        self.kernel_count = positive_int(kernel_count, "kernel_count")
        self.dense_kernel_size = ntuple(dense_kernel_size, len(dense_kernel_size), "dense_kernel_size", minimum=1)
        self.dilated_kernel_size = ntuple(dilated_kernel_size, len(dilated_kernel_size), "dilated_kernel_size",
                                          minimum=1)
        self.interpolation = check_choice(interpolation, INTERPOLATIONS, "interpolation")
        self.position_init = check_choice(position_init, _POSITION_INITS, "position_init")
        factory = {"device": device, "dtype": dtype}
        lead = (out_channels, in_channels // groups, *self.dense_kernel_size)
        self.weight = nn.Parameter(torch.empty(*lead, kernel_count, **factory))
        self.P = mark(nn.Parameter(torch.empty(len(dilated_kernel_size), *lead, kernel_count, **factory)),
                      kind="position")
        if interpolation in WIDTH_INTERPOLATIONS:
            self.SIG = mark(nn.Parameter(torch.empty_like(self.P)), kind="sigma")
        else:
            self.register_parameter("SIG", None)
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------------

    def _limits(self) -> list[tuple[int, int]]:
        """The clamp bounds of each row of P (P[i] moves along learned dim M-1-i): the box, ``-(size // 2)`` to
        ``size // 2`` as in the reference; for ``bilinear`` the upper bound is the box's last cell (``size // 2 - 1``
        for an even size), since an element on the next one, outside the box, adds nothing and has no gradient."""
        box = self.dilated_kernel_size
        sizes = [box[len(box) - 1 - i] for i in range(len(box))]
        if self.interpolation == "bilinear":
            return [(-(size // 2), size - 1 - size // 2) for size in sizes]
        return [(-(size // 2), size // 2) for size in sizes]

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and bias (as ``torch.nn.ConvNd``), positions per ``position_init``."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            for row, (low, high) in zip(self.P, self._limits()):
                if self.position_init == "normal":
                    row.normal_(0.0, 0.5).clamp_(low, high)  # the paper's N(0, 0.5), kept in the box
                else:
                    row.uniform_(low, high)
            if self.SIG is not None:
                self.SIG.fill_(_SIG_INIT[self.interpolation])

    def clamp_parameters(self) -> None:
        """Clamp positions into the box (the paper does this after every optimizer step): from ``-(size // 2)`` to
        ``size // 2``, and for ``bilinear`` to the box's last cell (``size // 2 - 1`` in an even box)."""
        with torch.no_grad():
            for row, (low, high) in zip(self.P, self._limits()):
                row.clamp_(low, high)

    def set_sigma(self, value: float) -> None:
        """Set every element's width to ``value`` (used by :class:`largekernel.optim.SigmaSchedule`)."""
        if self.SIG is None:
            raise ValueError(f"set_sigma needs a width interpolation {WIDTH_INTERPOLATIONS}, "
                             f"this layer has interpolation={self.interpolation!r}")
        offset = SIGMA_OFFSET[self.interpolation]
        if value < offset:
            raise ValueError(f"sigma must be >= {offset} for interpolation={self.interpolation!r}, got {value!r}")
        with torch.no_grad():
            self.SIG.fill_(value - offset)

    # -- kernel and forward -------------------------------------------------------------------

    def construct_kernel(self, input_size: Sequence[int] | None = None) -> Tensor:
        """The dense kernel ``(out, in/groups, *dense_kernel_size, *dilated_kernel_size)`` this layer applies
        (whatever the input size)."""
        return construct_kernel(self.weight, self.P, self.SIG, dilated_kernel_size=self.dilated_kernel_size,
                                interpolation=self.interpolation)

    @classmethod
    def size_limit(cls, kernel_size: Sequence[int]) -> int:
        """More elements than the box has cells buy nothing."""
        return math.prod(kernel_size)

    @torch.no_grad()
    def fit_dense(self, dense: Tensor, fitted: set[int] | None = None) -> None:
        """Positions on the cells of largest magnitude, then weights by least squares through the layer's own
        interpolation (exact for ``bilinear`` when the dense kernel has at most ``kernel_count`` non-zero taps).
        Positions shared with a layer fitted before (``id(P)`` in ``fitted``) are kept."""
        if self.dense_kernel_size:
            raise ConvArgumentError(f"{type(self).__name__} keeps dense dimensions {self.dense_kernel_size}: fit_dense "
                                    f"takes the plain DclsConv{{1,2,3}}d layers")
        fitted = set() if fitted is None else fitted
        box, count = self.dilated_kernel_size, self.kernel_count
        target = centre_kernel(dense.to(self.weight), box)  # (out, in/g, *box)
        pairs = target.shape[0] * target.shape[1]
        flat = target.reshape(pairs, -1)  # (pairs, cells)
        if id(self.P) not in fitted:
            order = flat.abs().argsort(dim=1, descending=True)  # (pairs, cells)
            # More elements than cells: the extra ones share cells (least squares splits the value between them).
            cells = order[:, torch.arange(count, device=order.device) % order.shape[1]]  # (pairs, count)
            for i, size in enumerate(box):  # P[m - 1 - i] moves along box dimension i
                stride = math.prod(box[i + 1:])
                index = (cells // stride) % size - size // 2
                self.P[len(box) - 1 - i].copy_(index.view(self.P.shape[1:]))
            fitted.add(id(self.P))
        basis = []
        for j in range(count):  # the kernel of element j alone: the interpolation is linear in the weights
            unit = torch.zeros_like(self.weight)
            unit[..., j] = 1
            basis.append(construct_kernel(unit, self.P, self.SIG, dilated_kernel_size=box,
                                          interpolation=self.interpolation).reshape(pairs, -1))
        matrix = torch.stack(basis, dim=-1)  # (pairs, cells, count)
        # The pseudo-inverse: least squares that also takes rank-deficient systems (shared cells), on any device.
        weights = torch.linalg.pinv(matrix) @ flat.unsqueeze(-1)  # (pairs, count, 1)
        self.weight.copy_(weights.view(self.weight.shape))

    # -- state dict ---------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        expected = {"weight": self.weight.shape, "P": self.P.shape, "bias": None if self.bias is None else
                    self.bias.shape, "SIG": None if self.SIG is None else self.SIG.shape}
        for name, shape in expected.items():
            key = prefix + name
            if key in state_dict and shape is not None and tuple(state_dict[key].shape) != tuple(shape):
                raise ConvArgumentError(
                    f"{key}: shape {tuple(state_dict[key].shape)} in the state_dict does not match this "
                    f"{type(self).__name__}'s {tuple(shape)} (out, in/groups, ..., kernel_count="
                    f"{self.kernel_count}, dilated_kernel_size={self.dilated_kernel_size})")
        box = self.dilated_kernel_size
        if local_metadata.get("version") == 1 and prefix + "P" in state_dict and len(set(box)) > 1:
            shift = torch.tensor([box[i] // 2 - box[len(box) - 1 - i] // 2 for i in range(len(box))])
            P = state_dict[prefix + "P"]
            state_dict[prefix + "P"] = P + shift.to(P).view(-1, *([1] * (P.dim() - 1)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        family = f", kernel_count={self.kernel_count}"
        if self.dense_kernel_size:
            family += f", dense_kernel_size={self.dense_kernel_size}"
        family += f", dilated_kernel_size={self.dilated_kernel_size}"
        s = self._conv_repr(family)
        return s if self.interpolation == "bilinear" else f"{s}, interpolation={self.interpolation!r}"


_SHAPE_DOC = r"""
    Shape:
        - Input: :math:`(N, C_{in}, *L_{in})` or :math:`(C_{in}, *L_{in})`
        - Output: :math:`(N, C_{out}, *L_{out})` or :math:`(C_{out}, *L_{out})`, per dimension :math:`d` with the
          kernel extent :math:`K_d` (``dilated_kernel_size``, or ``dense_kernel_size``
          on dense dimensions):
          :math:`L_{out} = \lfloor (L_{in} + 2 p_d - \text{dilation}_d (K_d - 1) - 1) / \text{stride}_d + 1 \rfloor`
          (``padding="same"`` keeps :math:`L_{in}` at stride 1).

    Attributes:
        weight: ``(out_channels, in_channels / groups, [*dense_kernel_size,] kernel_count)``.
        P: ``(M, out_channels, in_channels / groups, [*dense_kernel_size,] kernel_count)``
            positions, ``P[i]`` along learned dimension ``M - 1 - i``, relative to the
            box centre; initialised N(0, 0.5) clamped to the box (``position_init="normal"``)
            or uniform over the box; marked ``kind="position"`` for
            :func:`largekernel.optim.param_groups`.
        SIG: like ``P``, only for ``gaussian`` (width ``|SIG| + 0.27``, init 0.23) and
            ``triangle`` (half-width ``|SIG| + 1``, init 0.01); marked ``kind="sigma"``.
        bias: ``(out_channels,)``.
"""

_ARGS_DOC = """
    Args:
        in_channels, out_channels, stride, padding, dilation, groups, bias, padding_mode:
            as ``torch.nn.ConvNd`` (``dilation`` spreads the constructed kernel).
        kernel_count: number of elements (weights with a position) per (out, in) pair.
        dilated_kernel_size: the box the positions move in, int or per-dimension tuple.
        interpolation: ``"bilinear"`` (reference ``version="v1"``), ``"gaussian"``
            (``version="gauss"``), ``"triangle"`` (``version="max"``) or ``"bicubic"``.
        backend: ``"auto" | "direct" | "fft"``, the convolution engine's path.
        position_init: ``"normal"`` (the paper) or ``"uniform"``.
"""


def _make_layer(name: str, nd: int, learned: int, doc: str) -> type[_DclsNd]:
    """A public class with ``nd`` kernel dims of which the last ``learned`` carry positions."""
    dense = nd - learned

    if dense == 0:
        def __init__(self, in_channels: int, out_channels: int, kernel_count: int,
                     dilated_kernel_size: int | Sequence[int], stride=1, padding=0, dilation=1, groups: int = 1,
                     bias: bool = True, padding_mode: str = "zeros", interpolation: str = "bilinear",
                     backend: str = "auto", *, position_init: str = "normal", device=None, dtype=None) -> None:
            _DclsNd.__init__(self, in_channels, out_channels, kernel_count, (),
                             ntuple(dilated_kernel_size, learned, "dilated_kernel_size"), stride, padding,
                             dilation, groups, bias, padding_mode, interpolation, backend, position_init,
                             device, dtype)
    else:
        def __init__(self, in_channels: int, out_channels: int, kernel_count: int,
                     dense_kernel_size: int | Sequence[int], dilated_kernel_size: int | Sequence[int], stride=1,
                     padding=0, dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                     interpolation: str = "bilinear", backend: str = "auto", *, position_init: str = "normal",
                     device=None, dtype=None) -> None:
            _DclsNd.__init__(self, in_channels, out_channels, kernel_count,
                             ntuple(dense_kernel_size, dense, "dense_kernel_size"),
                             ntuple(dilated_kernel_size, learned, "dilated_kernel_size"), stride, padding,
                             dilation, groups, bias, padding_mode, interpolation, backend, position_init,
                             device, dtype)

    return type(name, (_DclsNd,), {"__init__": __init__, "__doc__": doc + _ARGS_DOC + _SHAPE_DOC, "_nd": nd,
                                   "__module__": __name__, "__qualname__": name})


DclsConv1d = _make_layer("DclsConv1d", 1, 1, """1-D DCLS convolution: ``kernel_count`` weights at learnable positions.

    Example:
        >>> conv = DclsConv1d(8, 8, kernel_count=5, dilated_kernel_size=31, padding=15, groups=8)
        >>> conv(torch.randn(2, 8, 100)).shape
        torch.Size([2, 8, 100])
""")
DclsConv2d = _make_layer("DclsConv2d", 2, 2, """2-D DCLS convolution (ConvNeXt-dcls: depthwise, 34 elements in 17x17).

    Example:
        >>> conv = DclsConv2d(96, 96, kernel_count=34, dilated_kernel_size=17, padding=8, groups=96)
        >>> conv(torch.randn(1, 96, 56, 56)).shape
        torch.Size([1, 96, 56, 56])
""")
DclsConv3d = _make_layer("DclsConv3d", 3, 3, """3-D DCLS convolution: positions learned along all three dims.

    Example:
        >>> conv = DclsConv3d(4, 4, kernel_count=8, dilated_kernel_size=(5, 7, 7), padding=(2, 3, 3))
        >>> conv(torch.randn(1, 4, 8, 16, 16)).shape
        torch.Size([1, 4, 8, 16, 16])
""")
Dcls2_1d = _make_layer("Dcls2_1d", 2, 1, """2-D convolution, dense along dim 0, learned positions along dim 1.

    ``kernel_count`` elements per (out, in, dense row). Example:
        >>> conv = Dcls2_1d(4, 4, 3, dense_kernel_size=3, dilated_kernel_size=9, padding=(1, 4))
        >>> conv(torch.randn(1, 4, 10, 20)).shape
        torch.Size([1, 4, 10, 20])
""")
Dcls3_1d = _make_layer("Dcls3_1d", 3, 1, """3-D convolution, dense along dims 0-1, learned positions along dim 2.

    Parameters as the reference package's ``Dcls3_1d``. Example:
        >>> conv = Dcls3_1d(4, 4, 3, dense_kernel_size=(3, 3), dilated_kernel_size=9, padding=(1, 1, 4))
        >>> conv(torch.randn(1, 4, 6, 6, 20)).shape
        torch.Size([1, 4, 6, 6, 20])
""")
Dcls3_2d = _make_layer("Dcls3_2d", 3, 2, """3-D convolution, dense along dim 0, learned positions along dims 1-2.

    Example:
        >>> conv = Dcls3_2d(4, 4, 6, dense_kernel_size=3, dilated_kernel_size=(7, 9), padding=(1, 3, 4))
        >>> conv(torch.randn(1, 4, 6, 12, 16)).shape
        torch.Size([1, 4, 6, 12, 16])
""")
