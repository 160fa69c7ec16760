"""NIFF's two frequency networks as one call of native kernels in eager mode, and as one opaque operator inside
a ``torch.compile`` graph.

A NIFF layer's filter is a function of its nets' parameters on the input's frequency grid:
``W_sym(k) = (W(k) + conj(W(-k))) / 2``, ``W = mlp_real + i mlp_imag``, each net 1x1 layers with
SiLU between. Traced, inductor generates C++ kernels for both nets and their backward on every
grid a model's stages see: 24 of the 95 kernels of a converted ConvNeXt-atto, about 19 s of its
60 s compile (docs/deploy.md). As the operator ``largekernel::niff_filter`` (named by the
library's source, :func:`~largekernel.functional._tracing.op_name`) they cost no compile time.

On the CPU the operator runs the library's native kernels (:mod:`largekernel.functional._native`:
both nets, the symmetrisation and both output layers in one call, the backward's chain rule in
another), where the nets are small enough that torch's cost is the number of its operations (a
stage's grid of a few hundred points, the small preset's widths): torch operations there, about
25 in the forward and 30 in the written-out backward below, cost a compiled model about 10 % of
its step, more than the compiled region did. Elsewhere (larger nets and grids, other devices and
dtypes, no C compiler) the operator runs those torch operations.

Where the operator applies (:func:`applies`): while ``torch.compile`` records (not an export,
not under torch.func's transforms or ``torch.autocast``), for nets whose layers are linear with
``nn.SiLU`` between (hooks, layers or activations of the user's own are traced as written). Its
results are the traced layer's up to rounding (another order of the same sums). In eager mode
(:func:`eager`) the same kernels run as an autograd Function where they can (the CPU, float32 or
float64), saving a small NIFF model 5-9 % of its training step (docs/spectral.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from largekernel.functional import _native as native
from largekernel.functional._args import own_nodes
from largekernel.functional._tracing import OPAQUE, batched, compiling, define_op, library_op, tracing, transformed

__all__ = ["applies", "tensors", "run", "eager"]

# Multiply-adds of the forward up to which the native kernels run (plain loops: torch's GEMMs win on larger nets).
NATIVE_MAX_WORK = 2**22


def applies(real: nn.Sequential, imag: nn.Sequential, like: Tensor) -> bool:
    """Whether :func:`run` computes the filter of the nets ``real`` and ``imag`` here: while ``torch.compile``
    records, outside ``torch.autocast``, for nets of linear layers with ``nn.SiLU`` after each one but the last
    (``like``: a tensor on the device that autocast is checked for)."""
    if not (OPAQUE and compiling()) or torch.is_autocast_enabled(like.device.type):
        return False
    return _plain(real, imag)


def _plain(real: nn.Sequential, imag: nn.Sequential) -> bool:
    """Whether both nets are linear layers with biases and ``nn.SiLU`` between, of the same widths."""
    a, b = list(real), list(imag)
    return (len(a) % 2 == 1 and len(a) == len(b)
            and all(type(m) is nn.SiLU and type(n) is nn.SiLU for m, n in zip(a[1::2], b[1::2]))
            and all(isinstance(m, nn.Linear) and isinstance(n, nn.Linear) and m.bias is not None
                    and n.bias is not None and m.weight.shape == n.weight.shape for m, n in zip(a[::2], b[::2])))


def tensors(real: nn.Sequential, imag: nn.Sequential) -> list[Tensor]:
    """The operator's parameters: per linear layer of both nets, in order, the real net's weight and bias, then the
    imaginary net's."""
    return [t for a, b in zip(list(real)[::2], list(imag)[::2]) for t in (a.weight, a.bias, b.weight, b.bias)]


def _widths(coords: Tensor, params: Sequence[Tensor]) -> list[int]:
    """``(ndim, *hidden, filters)``."""
    return [coords.shape[0], *(params[i].shape[0] for i in range(0, len(params), 4))]


def _native_pays(widths: list[int], points: int) -> bool:
    return 2 * points * sum(a * b for a, b in zip(widths[:-1], widths[1:])) <= NATIVE_MAX_WORK


def _symmetrised(h: Tensor, mirror: Tensor) -> tuple[Tensor, Tensor]:
    """The output layers' inputs at ``k`` and ``-k`` combined: the real net's even part, the imaginary net's odd
    part (the output layers are affine, so ``W_sym`` is theirs applied to these)."""
    re, im = h[0], h[1]
    return 0.5 * (re + re.index_select(1, mirror)), 0.5 * (im - im.index_select(1, mirror))


def _forward(coords: Tensor, mirror: Tensor, params: list[Tensor]) -> list[Tensor]:
    """``W_sym`` on the grid, ``(filters, 2 * points)`` (real and imaginary parts interleaved), and what the
    backward reads (:func:`~largekernel.functional._native.niff_kept_size`): ``coords`` ``(ndim, points)``,
    ``mirror`` the index of ``-k`` for every point, ``params`` as :func:`tensors` gives them."""
    widths, points = _widths(coords, params), coords.shape[1]
    if _native_pays(widths, points):
        flat = torch.cat([p.reshape(-1) for p in params])
        out = flat.new_empty((widths[-1], 2 * points))
        kept = flat.new_empty(native.niff_kept_size(widths, points))
        if native.niff_nets_forward(widths, coords.contiguous(), mirror.contiguous(), flat, kept, out):
            return [out, kept]
    out, kept = _torch_forward(coords, mirror, params)
    return [out, torch.cat([k.reshape(-1) for k in kept])]


def _torch_forward(coords: Tensor, mirror: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """:func:`_forward` as torch operations (differentiable): the filter and the pieces of what it keeps."""
    h, kept = coords.unsqueeze(0).expand(2, -1, -1), []  # (2, ndim, points)
    for i in range(0, len(params) - 4, 4):
        w_re, b_re, w_im, b_im = params[i:i + 4]
        z = torch.baddbmm(torch.stack([b_re, b_im]).unsqueeze(-1), torch.stack([w_re, w_im]), h)  # (2, out, points)
        h = F.silu(z)
        kept += [z, h]
    even, odd = _symmetrised(h, mirror)
    w_re, b_re, w_im, b_im = params[-4:]
    zero = 0.5 * (b_im - b_im)  # the imaginary bias cancels; kept with its (zero) gradient, as the traced layer
    out = torch.stack([torch.addmm(b_re.unsqueeze(1), w_re, even), torch.addmm(zero.unsqueeze(1), w_im, odd)], -1)
    return out.view(out.shape[0], -1), [*kept, even, odd]


def _backward(grad: Tensor, coords: Tensor, mirror: Tensor, params: list[Tensor], kept: Tensor) -> Tensor:
    """The gradients of :func:`_forward`'s ``params`` for the output's gradient ``grad``, one after another in one
    tensor, written out layer by layer (``coords`` and ``mirror`` have none); ``kept``: the forward's."""
    widths, points = _widths(coords, params), coords.shape[1]
    grad = grad.contiguous()
    if _native_pays(widths, points):
        flat = torch.cat([p.reshape(-1) for p in params])
        dparams = torch.empty_like(flat)
        if native.niff_nets_backward(widths, coords.contiguous(), mirror.contiguous(), flat, kept, grad, dparams):
            return dparams
    pieces = kept.split([4 * points * w for w in widths[1:-1]] + [2 * widths[-2] * points])
    pre = [p[: p.numel() // 2].view(2, -1, points) for p in pieces[:-1]]
    inputs = [coords.unsqueeze(0).expand(2, -1, -1), *(p[p.numel() // 2:].view(2, -1, points) for p in pieces[:-1])]
    even, odd = pieces[-1].view(2, -1, points)
    g = grad.view(grad.shape[0], -1, 2)
    g_re, g_im = g[..., 0], g[..., 1]  # (filters, points) each
    w_re, _, w_im, _ = params[-4:]
    s_im = g_im.sum(1)
    out = [g_re @ even.t(), g_re.sum(1), g_im @ odd.t(), 0.5 * s_im - 0.5 * s_im]
    d_even, d_odd = w_re.t() @ g_re, w_im.t() @ g_im  # (width, points) each
    # even = (h + h[mirror]) / 2, and mirror is its own inverse: h's gradient is (d + d[mirror]) / 2
    d_h = torch.stack([0.5 * (d_even + d_even.index_select(1, mirror)),
                       0.5 * (d_odd - d_odd.index_select(1, mirror))])  # (2, width, points)
    hidden: list[Tensor] = []
    for i in reversed(range(len(pre))):
        d_z = torch.ops.aten.silu_backward(d_h, pre[i])  # (2, out, points)
        hidden[:0] = [g for n in (0, 1) for g in (d_z[n] @ inputs[i][n].t(), d_z[n].sum(-1))]
        if i:
            w = torch.stack([params[4 * i], params[4 * i + 2]])
            d_h = torch.bmm(w.transpose(1, 2), d_z)  # (2, in, points)
    return torch.cat([t.reshape(-1) for t in hidden + out])


if OPAQUE:
    _forward_op = define_op("niff_filter", _forward)

    @_forward_op.register_fake
    def _(coords, mirror, params):
        widths, points, like = _widths(coords, params), coords.shape[1], params[0]
        return [like.new_empty((widths[-1], 2 * points)), like.new_empty(native.niff_kept_size(widths, points))]

    _backward_op = define_op("niff_filter_backward", _backward)

    @_backward_op.register_fake
    def _(grad, coords, mirror, params, kept):
        return params[0].new_empty(sum(math.prod(p.shape) for p in params))

    def _setup_context(ctx, inputs, output) -> None:
        coords, mirror, params = inputs
        ctx.save_for_backward(coords, mirror, output[1], *params)
        ctx.mark_non_differentiable(output[1])

    def _backward_formula(ctx, grads):
        coords, mirror, kept, *params = ctx.saved_tensors
        flat = _BACKWARD_OP(grads[0], coords, mirror, params, kept)
        return None, None, [g.view(p.shape) for g, p in zip(flat.split([p.numel() for p in params]), params)]

    _forward_op.register_autograd(_backward_formula, setup_context=_setup_context)
    _FORWARD_OP, _BACKWARD_OP = library_op("niff_filter"), library_op("niff_filter_backward")


class _NativeNets(torch.autograd.Function):
    """:func:`_forward` with :func:`_backward` as its backward, in eager mode (:func:`eager`). With a graph of the
    backward asked for (``create_graph=True``) or batched gradients (``is_grads_batched=True``), the gradients come
    from :func:`_torch_forward`, differentiated by autograd."""

    @staticmethod
    def forward(ctx, coords: Tensor, mirror: Tensor, *params: Tensor) -> Tensor:
        out, kept = _forward(coords, mirror, list(params))
        ctx.save_for_backward(coords, mirror, kept, *params)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        coords, mirror, kept, *params = ctx.saved_tensors
        if torch.is_grad_enabled() or batched(grad):
            with torch.enable_grad():
                params = own_nodes(*params)
                out, _ = _torch_forward(coords, mirror, params)
                grads = torch.autograd.grad(out, params, grad, create_graph=True)
        else:
            flat = _backward(grad, coords, mirror, params, kept)
            grads = [g.view(p.shape) for g, p in zip(flat.split([p.numel() for p in params]), params)]
        return None, None, *grads


def eager(real: nn.Sequential, imag: nn.Sequential, coords: Tensor, mirror: Tensor) -> Tensor | None:
    """``W_sym`` ``(filters, 2 * points)`` computed by the native kernels in eager mode, where they run: CPU float32
    or float64 tensors, nets as :func:`applies` takes them and small enough (``NATIVE_MAX_WORK``), not while a graph
    is recorded, not under torch.func's transforms, forward-mode AD, a dispatch mode or ``torch.autocast``
    (whose casts the kernels would not make); None elsewhere (the caller then runs torch operations)."""
    if tracing() or torch.is_autocast_enabled("cpu") or not _plain(real, imag):
        return None
    params = tensors(real, imag)
    if (transformed(coords, *params)
            or not native.available(coords, *(p.detach() for p in params))  # (a Parameter counts as a Tensor)
            or not _native_pays(_widths(coords, params), coords.shape[1])):
        return None
    return _NativeNets.apply(coords, mirror, *params)


def run(coords: Tensor, mirror: Tensor, params: list[Tensor]) -> Tensor:
    """``W_sym`` as the operator (call it where :func:`applies`): ``(filters, 2 * points)``."""
    return _FORWARD_OP(coords, mirror, params)[0]
