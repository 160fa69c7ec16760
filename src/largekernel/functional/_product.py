"""The spectral product's entry point: which implementation runs, in eager mode or while a graph is recorded.

Every FFT path of the library (seed 003; :mod:`~largekernel.functional.fft_conv`,
:mod:`~largekernel.functional.spectral`) calls :func:`spectral_product`. The computation is
:mod:`largekernel.functional._spectral`'s; how it is run depends on who is asking:

* **eager** (and ``torch.jit.trace``): the autograd Function
  :class:`~largekernel.functional._spectral.SpectralProduct`, native CPU kernels included;
* **torch.func** transforms (``grad``, ``vmap``, ``jvp``...) and forward-mode AD: the product's reference, plain
  differentiable torch operations (:func:`~largekernel.functional._spectral.reference_product`), which torch can
  batch and differentiate forwards (the Function could not);
* **torch.compile**: the same forward and backward as two opaque operators,
  ``largekernel::spectral_product`` and ``largekernel::spectral_product_backward``
  (``torch.library.custom_op``; each name tagged with the library's source,
  ``_tracing.op_name``). Inductor generates no code for complex tensors, and tracing the
  many small steps of the product (channel blocks, packing, tiled transposes) compiled for
  minutes and ran slower than eager (docs/deploy.md); as opaque calls they
  cost the graph nothing to compile and run the eager code, native kernels included. Shapes
  come from running the same code on fake tensors;
* **torch.export**: traced through, so that an exported program holds torch operations
  only and runs wherever ``torch.export`` programs run;
* **torch.onnx.export**: ONNX has no operators for the complex products (``conj``, complex
  multiply-add), so the product is recorded in real arithmetic on the real and imaginary
  parts of ``rfftn`` (:func:`real_arithmetic_product`): ONNX ``DFT`` nodes and real
  multiply-adds.
"""

from __future__ import annotations

import operator
from functools import lru_cache

import torch
from torch import Tensor

from largekernel.functional._grid import place_kernel, spatial_dims
from largekernel.functional._spectral import (SpectralProduct, _graph_gradients, product_backward,
                                              product_forward, reference_product)
from largekernel.functional._tracing import (OPAQUE, compiling, define_op, exporting_onnx, library_op,
                                             refuse_torchscript_onnx, symbolic, transformed)
from largekernel.functional.planner import FFTGeometry

__all__ = ["spectral_product", "real_arithmetic_product"]


def spectral_product(x: Tensor, kernel: Tensor, bias: Tensor | None, geometry: FFTGeometry,
                     mixing: Tensor | None = None) -> Tensor:
    """The FFT path's product for ``x`` ``(B, Cin, *geometry.size)``: a spatial ``kernel`` ``(Cout, Cin/g, *k)``
    (cross-correlation) or, with ``geometry.kernel = None``, a Hermitian filter ``(Cout, *grid)`` complex
    (circular convolution), or its real and imaginary parts ``(Cout, *grid, 2)`` (its gradient then comes as parts
    too, and a compiled graph computes no complex tensor); optional real ``mixing`` ``(out, Cout)`` after it;
    ``bias`` per output channel. Returns ``(B, out, *geometry.out)``."""
    keep = torch.is_grad_enabled() and (kernel.requires_grad or (mixing is not None and mixing.requires_grad))
    if exporting_onnx():
        return real_arithmetic_product(x, kernel, mixing, bias, geometry)
    if compiling():
        return _opaque_product(x, kernel, mixing, bias, geometry, keep)
    if transformed(x, kernel, mixing, bias):
        return reference_product(x, kernel, mixing, bias, geometry)
    return SpectralProduct.apply(x, kernel, mixing, bias, geometry, keep)


# ----------------------------------------------------------------------------- torch.compile: opaque operators

_CONTRACTIONS = ("elementwise", "einsum", "bmm")


def _encode(g: FFTGeometry) -> list[int]:
    """The geometry as an operator argument (operators take no dataclasses): ints, the per-dim tuples in a row.

    With dynamic shapes the input and output extents (``size``, ``out``) are the graph's symbolic sizes, which the
    operator takes as they are (its schema's ``SymInt[]``); everything else is the plan's Python ints."""
    nd = len(g.grid)
    kernel = (-1,) * nd if g.kernel is None else g.kernel
    fixed = [operator.index(v) for v in (*g.out_start, *g.stride, *kernel, *g.dilation, *g.shift, g.groups,
                                           int(g.packed), g.channel_block, _CONTRACTIONS.index(g.contraction))]
    return [nd, *map(operator.index, g.grid), *g.size, *g.out, *fixed]


def _decode(code: list[int]) -> FFTGeometry:
    if symbolic(code):  # shapes of fake tensors: symbols are not hashable
        return _decoded.__wrapped__(tuple(code))
    return _decoded(tuple(code))


@lru_cache(maxsize=1024)
def _decoded(code: tuple[int, ...]) -> FFTGeometry:
    nd = code[0]
    grid, size, out, out_start, stride, kernel, dilation, shift = (code[1 + j * nd:1 + (j + 1) * nd] for j in range(8))
    groups, packed, block, contraction = code[1 + 8 * nd:]
    return FFTGeometry(grid=grid, size=size, out=out, out_start=out_start, stride=stride,
                       kernel=None if kernel[0] < 0 else kernel, dilation=dilation, shift=shift, groups=groups,
                       packed=bool(packed), channel_block=block, contraction=_CONTRACTIONS[contraction])


def _fresh(t: Tensor, inputs: tuple) -> Tensor:
    """``t``, copied if it is a view of one of ``inputs`` (an operator's outputs must not alias its inputs)."""
    return t.clone() if any(i is not None and torch._C._is_alias_of(t, i) for i in inputs) else t


def _eager_dispatch():
    """Dispatch as in eager mode inside an operator: a compiled graph calls its operators with the Conjugate and
    Negative keys excluded (it records functional aten operations only), which silently turns the product's lazy
    ``.conj()`` views into no-ops (wrong results, not errors); restore them."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.Conjugate, torch._C.DispatchKey.Negative, torch._C.DispatchKey.ZeroTensor):
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _forward_impl(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None, geometry: list[int],
                  needs: list[bool]) -> list[Tensor]:
    with _eager_dispatch():
        out, saved = product_forward(x, kernel, mixing, bias, _decode(geometry), tuple(needs))
    inputs = (x, kernel, mixing, bias)
    return [_fresh(t, inputs) for t in (out, *saved)]


def _backward_impl(grad: Tensor, x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None,
                   saved: list[Tensor], geometry: list[int], needs: list[bool]) -> list[Tensor]:
    with _eager_dispatch():
        grads = product_backward(grad, x, kernel, mixing, bias, saved, _decode(geometry), tuple(needs))
    inputs = (grad, x, kernel, mixing, bias, *saved)
    return [_fresh(g, inputs) for g in grads if g is not None]


def _setup_context(ctx, inputs, output) -> None:
    x, kernel, mixing, bias, geometry, needs = inputs
    ctx.save_for_backward(x, kernel, mixing, bias, *output[1:])
    ctx.geometry, ctx.needs = geometry, needs
    # The saved tensors are outputs for autograd's sake only: no gradient flows into them, and none is made of
    # zeros for them (a zero-filled complex buffer per block at every backward otherwise).
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grads):
    x, kernel, mixing, bias, *saved = ctx.saved_tensors
    if torch.is_grad_enabled():  # a graph of the backward: differentiable operations
        return (*_graph_gradients(grads[0], (x, kernel, mixing, bias), ctx.needs_input_grad[:4],
                                  _decode(ctx.geometry)), None, None)
    needs = [*ctx.needs, ctx.needs_input_grad[3]]
    computed = iter(_BACKWARD_OP(grads[0], x, kernel, mixing, bias, saved, ctx.geometry, needs))
    return (*(next(computed) if need else None for need in needs), None, None)


if OPAQUE:
    _forward_op = define_op("spectral_product", _forward_impl)
    _forward_op.register_fake(_forward_impl)  # the same code on fake tensors gives every shape and stride
    _forward_op.register_autograd(_backward, setup_context=_setup_context)
    _backward_op = define_op("spectral_product_backward", _backward_impl)
    _backward_op.register_fake(_backward_impl)
    _FORWARD_OP, _BACKWARD_OP = library_op("spectral_product"), library_op("spectral_product_backward")


def _opaque_product(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None, geometry: FFTGeometry,
                    keep: bool) -> Tensor:
    grad = torch.is_grad_enabled()
    needs = [grad and x.requires_grad, grad and kernel.requires_grad and keep,
             grad and mixing is not None and mixing.requires_grad and keep]
    return _FORWARD_OP(x, kernel, mixing, bias, _encode(geometry), needs)[0]


# ----------------------------------------------------------------------------- ONNX: real arithmetic


def real_arithmetic_product(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None,
                            geometry: FFTGeometry) -> Tensor:
    """What :func:`spectral_product` computes, with complex numbers only as the ``(..., 2)`` real and imaginary
    parts of ``rfftn`` / ``irfftn`` (what ONNX's ``DFT`` takes): products as real multiply-adds."""
    refuse_torchscript_onnx("largekernel's FFT convolution path (backend 'fft', which 'auto' takes for large kernels; "
                            "NIFF, SGConv and S4D)")
    nd = len(geometry.grid)
    dims = spatial_dims(nd)
    half = geometry.grid[-1] // 2 + 1
    x_f = torch.view_as_real(torch.fft.rfftn(x, s=geometry.grid, dim=dims))  # (B, Cin, *half, 2)
    if geometry.kernel is None:  # a filter on the grid: a convolution, W X
        parts = kernel[..., :half, :] if not kernel.is_complex() else torch.view_as_real(kernel[..., :half])
        w = parts.unsqueeze(1)  # (Cout, 1, *half, 2)
        sign = 1.0
    else:  # a kernel: a correlation, conj(W) X
        w = torch.view_as_real(torch.fft.rfftn(place_kernel(kernel, geometry), dim=dims))  # (Cout, I, *half, 2)
        sign = -1.0
    b, groups = x.shape[0], geometry.groups
    cout, i = w.shape[:2]
    freq = x_f.shape[2:-1]
    xr, xi = (x_f[..., c].reshape(b, groups, i, -1) for c in (0, 1))  # (B, G, I, P)
    wr, wi = (w[..., c].reshape(groups, cout // groups, i, -1) for c in (0, 1))  # (G, O, I, P)
    wi = sign * wi
    re = torch.einsum("bgip,goip->bgop", xr, wr) - torch.einsum("bgip,goip->bgop", xi, wi)  # (B, G, O, P)
    im = torch.einsum("bgip,goip->bgop", xi, wr) + torch.einsum("bgip,goip->bgop", xr, wi)
    y = torch.stack((re, im), -1).reshape(b, cout, -1)  # (B, Cout, P * 2)
    if mixing is not None:
        y = torch.matmul(mixing, y)  # (B, out, P * 2)
    y = torch.view_as_complex(y.reshape(b, -1, *freq, 2))  # (B, out, *half) complex
    out = torch.fft.irfftn(y, s=geometry.grid, dim=dims)  # (B, out, *grid)
    out = out[(..., *(slice(a, a + (k - 1) * s + 1, s) for a, k, s in zip(geometry.out_start, geometry.out,
                                                                           geometry.stride)))]
    return out.contiguous() if bias is None else out + bias.view(-1, *([1] * nd))
