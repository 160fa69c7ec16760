"""Spectral products: the FFT path's forward and backward, and the autograd Function around them.

Every FFT convolution of the library goes through one spectral product
(:func:`largekernel.functional._product.spectral_product` chooses how it runs): the input is
transformed on the plan's grid, multiplied by a kernel spectrum (with the channel
contraction or mixing of the call) and transformed back. The kernel is either a spatial
kernel in torch conv layout, placed on the grid and transformed here (a
cross-correlation, as ``torch.nn.functional.convNd``), or a *filter* given on the grid
(NIFF's frequency-domain filters: a circular convolution). Two implementations:

* on real transforms (``rfftn`` / ``irfftn``): any groups, stride (decimation in the
  frequency domain), channel contraction as one real bmm per call over frequency-major
  operands, an optional real channel mixing after the product (NIFF's pointwise map),
  cache-sized channel blocks for elementwise products;
* on channel pairs of a sample packed as one complex signal
  (:mod:`largekernel.functional._packed`), for elementwise products at stride 1.

Both keep what their gradients need from the forward (the input spectrum for the kernel
gradient, the kernel spectrum for the input gradient), so the backward transforms only
the output gradient. They are plain functions (:func:`product_forward`,
:func:`product_backward`) that the autograd Function :class:`SpectralProduct` (eager) and
the opaque operators ``torch.compile`` records both run. When a graph of the backward is
asked for (``create_graph=True``: gradient penalties, MAML, Hessian-vector products) the
gradients are computed from differentiable torch operations instead
(:func:`reference_product`), so every order of derivative works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from largekernel.functional._args import conv_memory_format, own_nodes
from largekernel.functional._native import spectral_grad as native_spectral_grad
from largekernel.functional._native import transpose as native_transpose
from largekernel.functional._grid import (conjugate, gather_kernel, hermitian_extension, hermitian_part, irfft_keep,
                                          mirror, place_kernel, rfft_placed, spatial_dims, write)
from largekernel.functional._packed import mirror_grad, mirror_product, pack_pairs, unpack_pairs
from largekernel.functional._tracing import batched, tracing
from largekernel.functional.planner import FFTGeometry

__all__ = ["SpectralProduct", "product_forward", "product_backward", "reference_product", "pointwise"]


def pointwise(spectrum: Tensor, weight: Tensor) -> Tensor:
    """A real ``(out, in)`` matrix applied over the channels of a complex spectrum ``(B, in, *freq)``, one real GEMM."""
    b, c = spectrum.shape[:2]
    freq = spectrum.shape[2:]
    parts = torch.view_as_real(spectrum).reshape(b, c, -1)  # (B, in, 2 * prod(freq)) real
    return torch.view_as_complex(torch.matmul(weight, parts).reshape(b, -1, *freq, 2))  # (B, out, *freq)


def _half(grid: tuple[int, ...]) -> tuple[int, ...]:
    return (*grid[:-1], grid[-1] // 2 + 1)


def _bias_grad(grad: Tensor) -> Tensor:
    return grad.sum(dim=(0, *range(2, grad.dim())))


def _blocks(units: int, step: int) -> list[slice]:
    return [slice(u, min(u + step, units)) for u in range(0, units, step)]


# ----------------------------------------------------------------------------- products (real spectra)
# x: (B, G*I, *F), w: (G*O, I, *F), y: (B, G*O, *F); P = prod(F) frequencies.
#
# Without a channel contraction (depthwise, channel multiplier: I == 1) the products are elementwise. With
# one (I > 1), every frequency is a small complex matrix product. torch's complex bmm calls BLAS once per
# matrix on the CPU, so (unless the products are tiny: contraction "einsum") they are done as *real* bmm's over
# frequency-major operands instead: the complex kernel spectrum viewed as real, (P*G, O, 2I) with re/im
# interleaved, against an expanded real copy of the smaller activation operand:
#
#   x block (P, G, 2, B, I, 2):  [0] = (re x, im x),  [1] = (im x, -re x)
#   y = x conj(w):      y[(c, b), o]   = sum_(i, t) xblock[c, b, i, t] w[o, i, t]   (c = re / im)
#   gw = sum_b x conj(g): gw[o, (i, t)] = sum_(c, b) gplanar[c, b, o] xblock[c, b, i, t]
#   gx = g w:           from [re g; im g] (2B, O) times w (O, 2I)
#
# so one bmm per product, with every operand either a view or a single pass of copying.

_TILE = 64


def _transpose(matrix: Tensor) -> Tensor:
    """``(R, C) -> (C, R)`` contiguous: the native kernel's square tiles (:func:`largekernel.functional._native.
    transpose`), else copied in row tiles (a plain strided copy is not cache-blocked; this is ~1.3x faster on the
    spectra here). While a graph is recorded, one transposed copy: the loop would be unrolled into the graph and
    fix its row count (the batch's multiple) there."""
    rows = matrix.shape[0]
    if matrix.device.type != "cpu" or tracing():
        return matrix.T.contiguous()
    native = native_transpose(matrix)
    if native is not None:
        return native
    out = matrix.new_empty(matrix.shape[::-1])
    step = max(_TILE, -(-rows // 256))  # at most 256 copies
    for j in range(0, rows, step):
        out[:, j:j + step] = matrix[j:j + step].T
    return out


def _frequency_major(spectrum: Tensor, groups: int) -> Tensor:
    """``(N, G*C, *F)`` complex -> ``(P, G, N, C)``, frequencies outermost."""
    n, channels = spectrum.shape[:2]
    out = _transpose(spectrum.reshape(n * channels, -1))  # (P, N*G*C)
    return out.view(-1, n, groups, channels // groups).transpose(1, 2)  # (P, G, N, C) view


def _channel_major(re: Tensor, im: Tensor, freq: tuple[int, ...]) -> Tensor:
    """Real and imaginary parts ``(P, G, N, C)`` -> the complex spectrum ``(N, G*C, *F)``."""
    p, g, n, c = re.shape
    spectrum = torch.complex(re, im).transpose(1, 2).reshape(p, n * g * c)  # (P, N*G*C)
    return _transpose(spectrum).view(n, g * c, *freq)


def _x_block(x_f: Tensor, groups: int) -> Tensor:
    """The expanded activation operand ``(P, G, 2, B, I, 2)`` (see above), real."""
    x = torch.view_as_real(_frequency_major(x_f, groups))  # (P, G, B, I, 2)
    block = x.new_empty(*x.shape[:2], 2, *x.shape[2:])
    block[:, :, 0] = x
    block[:, :, 1, ..., 0] = x[..., 1]
    block[:, :, 1, ..., 1] = x[..., 0].neg()  # (not neg(out=): torch.compile cannot trace a strided out=)
    return block


def _g_planar(g_f: Tensor, groups: int) -> Tensor:
    """``(P*G, 2B, O)`` real: the output-gradient spectrum with re stacked over im."""
    g = _frequency_major(g_f, groups)  # (P, G, B, O)
    p, _, b, o = g.shape
    return torch.stack((g.real, g.imag), 2).view(p * groups, 2 * b, o)


def _contract_forward(x_f: Tensor, w_f: Tensor, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """``y = sum_i x conj(w)`` and the operands backward reuses: (y, x block, frequency-major w)."""
    b, freq = x_f.shape[0], x_f.shape[2:]
    cout, i = w_f.shape[:2]
    o = cout // groups
    w = _transpose(w_f.reshape(cout * i, -1))  # (P, G*O*I) complex
    block = _x_block(x_f, groups)  # (P, G, 2, B, I, 2)
    p = block.shape[0]
    w_real = torch.view_as_real(w).view(p * groups, o, 2 * i)
    y = torch.bmm(block.view(p * groups, 2 * b, 2 * i), w_real.transpose(1, 2)).view(p, groups, 2, b, o)
    return _channel_major(y[:, :, 0], y[:, :, 1], freq), block, w


def _contract_input_grad(g: Tensor, w: Tensor, groups: int, freq: tuple[int, ...]) -> Tensor:
    """``gx = sum_o g w`` from the planar gradient ``(P*G, 2B, O)`` and frequency-major ``w``."""
    pg, b2, o = g.shape
    i = w.shape[1] // (groups * o)
    t = torch.bmm(g, torch.view_as_real(w).view(pg, o, 2 * i)).view(pg // groups, groups, 2, b2 // 2, i, 2)
    return _channel_major(t[:, :, 0, ..., 0] - t[:, :, 1, ..., 1], t[:, :, 0, ..., 1] + t[:, :, 1, ..., 0], freq)


def _contract_weight_grad(g: Tensor, block: Tensor) -> Tensor:
    """``gw = sum_b x conj(g)``, frequency-major ``(P, G*O*I)`` complex."""
    p, groups, _, b, i, _ = block.shape
    gw = torch.bmm(g.transpose(1, 2), block.view(p * groups, 2 * b, 2 * i))  # (P*G, O, 2I)
    return torch.view_as_complex(gw.view(p, -1, 2))


def _product(x_f: Tensor, m: Tensor, groups: int) -> Tensor:
    """Output spectrum ``y = sum_i x * m`` per group (``m`` the multiplier: a conjugated kernel spectrum or a
    filter), elementwise without a channel contraction."""
    b = x_f.shape[0]
    cout, i = m.shape[:2]
    o = cout // groups
    if i == 1:  # depthwise (o == 1) or channel multiplier: elementwise
        y_f = x_f.reshape(b, groups, 1, -1) * m.reshape(groups, o, -1)  # (B, G, O, F)
    else:
        y_f = torch.einsum("bgif,goif->bgof", x_f.reshape(b, groups, i, -1), m.reshape(groups, o, i, -1))
    return y_f.reshape(b, cout, *x_f.shape[2:])


def _input_grad_product(g_f: Tensor, m: Tensor, groups: int) -> Tensor:
    """Input-gradient spectrum ``gx = sum_o g * conj(m)``. May overwrite ``g_f``."""
    b, cout = g_f.shape[:2]
    i = m.shape[1]
    o = cout // groups
    freq = g_f.shape[2:]
    if i == 1 and o == 1:  # depthwise: in place (no fresh spectrum-sized allocation)
        return g_f.mul_(m.reshape(cout, *freq).conj())
    x_f = torch.einsum("bgof,goif->bgif", g_f.reshape(b, groups, o, -1), m.reshape(groups, o, i, -1).conj())
    return x_f.reshape(b, groups * i, *freq)


def _weight_grad_product(x_f: Tensor, g_f: Tensor, groups: int) -> Tensor:
    """Kernel-gradient spectrum ``gw = sum_b x * conj(g)``: reduced over the batch before the inverse transform."""
    b, cout = g_f.shape[:2]
    i = x_f.shape[1] // groups
    o = cout // groups
    w_f = torch.einsum("bgif,bgof->goif", x_f.reshape(b, groups, i, -1), g_f.reshape(b, groups, o, -1).conj())
    return w_f.reshape(cout, i, *g_f.shape[2:])


def filter_spectrum(kernel: Tensor, geometry: FFTGeometry) -> Tensor:
    """A filter (``geometry.kernel`` None) as the complex ``(Cout, *grid)`` it stands for: it may come as its real
    and imaginary parts ``(Cout, *grid, 2)`` (``torch.view_as_real``'s layout), as NIFF passes it, so that a
    compiled graph holds no complex tensor (inductor generates no code for them, and warns of each graph that
    has one). A view where the parts' layout allows one (pairs in place: a compiled graph may hand them over in a
    layout of its choice, a caller a strided tensor), else a copy; a spatial kernel or a complex filter is returned
    as it is."""
    if geometry.kernel is None and not kernel.is_complex():
        # (Dynamo, tracing torch.export(strict=True), cannot read a storage offset; there the parts are the graph's)
        odd_offset = not torch.compiler.is_dynamo_compiling() and kernel.storage_offset() % 2
        if kernel.stride(-1) != 1 or odd_offset or any(s % 2 for s in kernel.stride()[:-1]):
            kernel = kernel.clone(memory_format=torch.contiguous_format)
        return torch.view_as_complex(kernel)
    return kernel


def _half_multiplier(kernel: Tensor, geometry: FFTGeometry) -> Tensor:
    """The multiplier on the half spectrum, ``(Cout, I, *half)``: ``conj(rfftn(placed kernel))`` (a correlation) or
    the filter's half (a convolution)."""
    nd = len(geometry.grid)
    if geometry.kernel is None:
        return kernel[..., : geometry.grid[-1] // 2 + 1].unsqueeze(1).contiguous()
    return torch.fft.rfftn(place_kernel(kernel, geometry), dim=spatial_dims(nd)).conj_physical_()


def _kernel_grad_from_half(acc: Tensor, geometry: FFTGeometry) -> Tensor:
    """The kernel (or filter) gradient from the half-spectrum sum ``acc = sum_b X conj(G)`` ``(Cout, I, *half)``."""
    nd = len(geometry.grid)
    if geometry.kernel is None:  # filter: (1/N) conj(X) G on the full grid
        return hermitian_extension(acc[:, 0].conj_physical_().div_(math.prod(geometry.grid)), geometry.grid)
    return gather_kernel(torch.fft.irfftn(acc, s=geometry.grid, dim=spatial_dims(nd)), geometry)


def reference_product(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None,
                      geometry: FFTGeometry) -> Tensor:
    """What :func:`spectral_product` computes, from differentiable torch operations (the double backward)."""
    nd = len(geometry.grid)
    x_f = torch.fft.rfftn(x, s=geometry.grid, dim=spatial_dims(nd))  # (B, Cin, *half)
    if geometry.kernel is None:
        # The filter's Hermitian part (the filter itself, as documented): its half determines the product, and
        # through it the filter's gradient is the Hermitian one of the first-order backward (without it the half
        # would take the whole gradient, twice its bins' share, and the mirrored bins none).
        # (Parts as torch.complex, not a complex view: a view's double backward fails on gradients that arrive
        # at an odd storage offset.)
        w = kernel if kernel.is_complex() else torch.complex(kernel[..., 0], kernel[..., 1])
        w = 0.5 * (w + conjugate(mirror(w, spatial_dims(nd))))
        m = w[..., : geometry.grid[-1] // 2 + 1].unsqueeze(1)
    else:
        m = conjugate(torch.fft.rfftn(place_kernel(kernel, geometry), dim=spatial_dims(nd)))
    b = x.shape[0]
    groups = geometry.groups
    cout, i = m.shape[:2]
    y_f = torch.einsum("bgif,goif->bgof", x_f.reshape(b, groups, i, -1), m.reshape(groups, cout // groups, i, -1))
    y_f = y_f.reshape(b, cout, *x_f.shape[2:])
    if mixing is not None:
        y_f = pointwise(y_f, mixing)
    y = irfft_keep(y_f, geometry)
    return y if bias is None else y + bias.view(-1, *([1] * nd))


def _graph_gradients(grad: Tensor, inputs: tuple, needs: tuple, geometry: FFTGeometry) -> tuple:
    """The gradients for ``inputs`` ``(x, kernel, mixing, bias)`` where ``needs`` says so, as a differentiable
    function of ``grad`` and the inputs (the backward with ``create_graph=True``)."""
    with torch.enable_grad():
        inputs = own_nodes(*inputs)
        wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
        y = reference_product(*inputs, geometry)
        grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need and t is not None else None for t, need in zip(inputs, needs))


# ----------------------------------------------------------------------------- real transforms
# Forward and backward are plain functions of tensors and the geometry, so that the autograd Function below
# (eager) and the opaque operator that torch.compile records (largekernel.functional._product) run the same code.
# ``needs``: which gradients the forward keeps operands for, (input, kernel, mixing); the backward's ``needs``
# add the bias and must agree with the forward's. ``saved``: the kept spectra, present ones only, in order.


def _real_forward(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None, geometry: FFTGeometry,
                  needs: tuple[bool, bool, bool]) -> tuple[Tensor, list[Tensor]]:
    """The product on real transforms; elementwise products without mixing run in cache-sized channel blocks
    (``geometry.channel_block`` groups each). Returns the output and what the backward reuses."""
    nd = len(geometry.grid)
    dims = spatial_dims(nd)
    batch = x.shape[0]
    groups = geometry.groups
    need_x, need_kernel, need_mixing = needs
    layout = conv_memory_format(x)
    if geometry.contraction == "bmm":
        w_f = torch.fft.rfftn(place_kernel(kernel, geometry), dim=dims)  # (Cout, Cin/g, *half) complex
        x_f = torch.fft.rfftn(x, s=geometry.grid, dim=dims)  # (B, Cin, *half) complex
        y_f, x_block, w_major = _contract_forward(x_f, w_f, groups)
        out = irfft_keep(y_f, geometry)  # (B, Cout, *out)
        # the add (or copy) also makes the strided slice contiguous, like torch's conv output
        out = out + bias.view(-1, *([1] * nd)) if bias is not None else out.contiguous()
        saved = [w_major] if need_x else []
        return out.contiguous(memory_format=layout), saved + ([x_block] if need_kernel else [])
    m = _half_multiplier(kernel, geometry)  # (Cout, I, *half)
    cout, i = m.shape[:2]
    per = cout // groups
    out_channels = cout if mixing is None else mixing.shape[0]
    out = x.new_empty(batch, out_channels, *geometry.out)
    specs = []
    for block in _real_blocks(geometry, mixing):
        ins, outs = slice(block.start * i, block.stop * i), slice(block.start * per, block.stop * per)
        x_f = torch.fft.rfftn(x[:, ins], s=geometry.grid, dim=dims)  # (B, block inputs, *half) complex
        y_f = _product(x_f, m[outs], block.stop - block.start)
        if mixing is not None:
            y_f = pointwise(y_f, mixing)  # (B, out, *half)
            outs = slice(None)
        write(out[:, outs], irfft_keep(y_f, geometry), None if bias is None else bias[outs])
        if need_kernel or need_mixing:  # (else freed now: the next block reuses its memory)
            specs.append(x_f)
    return out.contiguous(memory_format=layout), ([m] if need_x or need_mixing else []) + specs


def _real_blocks(geometry: FFTGeometry, mixing: Tensor | None) -> list[slice]:
    """The channel blocks (of groups) of an elementwise product: one when a mixing follows (it needs them all)."""
    return [slice(0, geometry.groups)] if mixing is not None else _blocks(geometry.groups, geometry.channel_block)


def _real_backward(grad: Tensor, x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None,
                   saved: list[Tensor], geometry: FFTGeometry, needs: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients ``(x, kernel, mixing, bias)`` of :func:`_real_forward` (None where not needed)."""
    need_x, need_kernel, need_mixing, need_bias = needs
    nd = len(geometry.grid)
    dims = spatial_dims(nd)
    grad = grad.contiguous()
    groups = geometry.groups
    size, layout = tuple(x.shape[2:]), conv_memory_format(x)
    grad_x = grad_kernel = grad_mixing = grad_bias = None
    if need_bias:
        grad_bias = _bias_grad(grad)
    if not (need_x or need_kernel or need_mixing):
        return grad_x, grad_kernel, grad_mixing, grad_bias
    if geometry.contraction == "bmm":
        w_major = saved.pop(0) if need_x else None
        x_block = saved.pop(0) if need_kernel else None
        freq = _half(geometry.grid)
        g = _g_planar(rfft_placed(grad, geometry), groups)  # (P*G, 2B, O)
        if need_kernel:
            cout, i = grad.shape[1], x_block.shape[4]
            gw = _transpose(_contract_weight_grad(g, x_block)).view(cout, i, *freq)  # (Cout, I, *half)
            grad_kernel = gather_kernel(torch.fft.irfftn(gw, s=geometry.grid, dim=dims), geometry)
        if need_x:
            gx_f = _contract_input_grad(g, w_major, groups, freq)  # (B, Cin, *half)
            grad_x = irfft_keep(gx_f, geometry, size, (1,) * nd, (0,) * nd)
            grad_x = grad_x.contiguous(memory_format=layout)
        return grad_x, grad_kernel, grad_mixing, grad_bias
    blocks = _real_blocks(geometry, mixing)
    m = saved.pop(0) if need_x or need_mixing else None
    specs = saved if need_kernel or need_mixing else [None] * len(blocks)
    batch = grad.shape[0]
    cout, i = (kernel.shape[0], 1) if geometry.kernel is None else kernel.shape[:2]
    per = cout // groups
    freq = _half(geometry.grid)
    if need_x:
        grad_x = grad.new_empty(batch, groups * i, *size)
    if need_kernel:
        acc = torch.empty(cout, i, *freq, dtype=specs[0].dtype, device=grad.device)  # sum_b X conj(G)
    for block, x_f in zip(blocks, specs):
        ins, outs = slice(block.start * i, block.stop * i), slice(block.start * per, block.stop * per)
        n = block.stop - block.start
        if mixing is not None:
            g_f = rfft_placed(grad, geometry)  # (B, out, *half)
            if need_mixing:  # sum over b and frequencies of Re(conj(G) Z), the half bins weighted
                z = _product(x_f, m, groups)  # (B, in, *half)
                weights = torch.full((freq[-1],), 2.0, dtype=grad.dtype, device=grad.device)
                weights[0] = 1.0
                if geometry.grid[-1] % 2 == 0:
                    weights[-1] = 1.0
                weights /= math.prod(geometry.grid)
                gz = torch.view_as_real(g_f * weights).reshape(batch, g_f.shape[1], -1)
                grad_mixing = torch.einsum("bom,bim->oi", gz, torch.view_as_real(z).reshape(batch, z.shape[1], -1))
            g_f = pointwise(g_f, mixing.t())  # (B, in, *half)
        else:
            g_f = rfft_placed(grad[:, outs], geometry)  # (B, block outputs, *half)
        if not (need_x or need_kernel):
            continue
        # Depthwise: sum_b x * conj(g) and g *= conj(m) in one native pass.
        if i == per == 1 and native_spectral_grad(
                x_f if need_kernel else None, g_f, m[outs].view(n, *freq) if need_x else None,
                acc[outs].view(n, *freq) if need_kernel else None, conj_q=True, conj_w=True):
            gx_f = g_f
        else:
            if need_kernel:  # first: the input-gradient product below may overwrite g_f
                acc[outs] = _weight_grad_product(x_f, g_f, n)
            if need_x:
                gx_f = _input_grad_product(g_f, m[outs], n)  # (B, block inputs, *half)
        if need_x:
            grad_x[:, ins] = irfft_keep(gx_f, geometry, size, (1,) * nd, (0,) * nd)
    if need_kernel:
        grad_kernel = _kernel_grad_from_half(acc, geometry)
    if need_x:
        grad_x = grad_x.contiguous(memory_format=layout)
    return grad_x, grad_kernel, grad_mixing, grad_bias


# ----------------------------------------------------------------------------- packed channel pairs


def _outputs(t: Tensor, channels: slice, per: int) -> Tensor:
    """The ``per`` outputs of each of ``channels`` (a slice of input channels) in ``t`` ``(B, C * per, ...)``: a
    slice of dim 1 (a flattened ``(C, per)`` view would make torch.export compare symbolic sizes it cannot
    decide)."""
    return t[:, channels.start * per:channels.stop * per]


def _packed_forward(x: Tensor, kernel: Tensor, bias: Tensor | None, geometry: FFTGeometry,
                    need_kernel: bool) -> tuple[Tensor, list[Tensor]]:
    """The product for elementwise products at stride 1 on channel pairs packed as complex signals
    (:mod:`largekernel.functional._packed`): channel ``p`` and ``h + p`` of each sample (``h = ceil(C/2)``),
    in blocks of ``geometry.channel_block`` pairs; the kernel spectra on the full grid. Returns the output and
    what the backward reuses: the kernel spectra ``(C, per, *grid)``, then (``need_kernel``) the packed input
    spectra."""
    nd = len(geometry.grid)
    dims = spatial_dims(nd)
    batch, channels = x.shape[:2]
    if geometry.kernel is None:
        m = kernel  # (Cout, *grid) filter
    else:
        m = torch.fft.fftn(place_kernel(kernel.flatten(0, 1), geometry), dim=dims).conj_physical_()
    cout = m.shape[0]
    per = cout // channels
    pairs = (channels + 1) // 2
    spectra = m.reshape(channels, per, *geometry.grid).contiguous()  # first members 0 .. pairs - 1, then partners
    out = x.new_empty(batch, cout, *geometry.out)
    bias_pairs = None if bias is None else bias.view(channels, per)
    specs = []
    for block in _blocks(pairs, geometry.channel_block):
        second = slice(pairs + block.start, min(pairs + block.stop, channels))
        z = torch.fft.fftn(pack_pairs(x[:, block], x[:, second], geometry.grid), dim=dims)  # (B, n, *grid)
        y = torch.fft.ifftn(mirror_product(z, spectra[block], spectra[second]), dim=dims)  # (B, n, per, *grid)
        unpack_pairs(y.flatten(1, 2), _outputs(out, block, per), _outputs(out, second, per),
                     geometry.out_start, None if bias is None else bias_pairs[block].flatten(),
                     None if bias is None else bias_pairs[second].flatten())
        if need_kernel:  # (else freed now: the next block reuses its memory)
            specs.append(z)
    return out.contiguous(memory_format=conv_memory_format(x)), [spectra, *specs]


def _packed_backward(grad: Tensor, x: Tensor, kernel: Tensor, bias: Tensor | None, saved: list[Tensor],
                     geometry: FFTGeometry, needs: tuple[bool, bool, bool]) -> tuple:
    """Gradients ``(x, kernel, bias)`` of :func:`_packed_forward` (None where not needed)."""
    need_x, need_kernel, need_bias = needs
    spectra, *specs = saved
    nd = len(geometry.grid)
    dims = spatial_dims(nd)
    batch, channels = x.shape[:2]
    per = spectra.shape[1]
    pairs = (channels + 1) // 2
    blocks = _blocks(pairs, geometry.channel_block)
    specs = specs if need_kernel else [None] * len(blocks)
    grad = grad.contiguous()
    grad_x = torch.empty(batch, channels, *x.shape[2:], dtype=grad.dtype, device=grad.device) if need_x else None
    grad_bias = _bias_grad(grad) if need_bias else None
    # X_c conj(G_c) (up to anti-Hermitian parts) of the first members, then of the second (pairs + p; the
    # partner of an odd channel count's last channel is dropped)
    sums = torch.empty(2 * pairs, per, *geometry.grid, dtype=spectra.dtype, device=grad.device) if need_kernel else None
    if need_x or need_kernel:
        for block, z in zip(blocks, specs):
            second = slice(pairs + block.start, min(pairs + block.stop, channels))
            g = pack_pairs(_outputs(grad, block, per), _outputs(grad, second, per), geometry.grid, geometry.out_start)
            g = torch.fft.fftn(g, dim=dims).view(batch, -1, per, *geometry.grid)  # (B, n, per, *grid)
            gx = mirror_grad(z, g, spectra[block], spectra[second], need_x, *(
                (sums[block], sums[pairs + block.start: pairs + block.stop]) if need_kernel else ()))
            if need_x:
                unpack_pairs(torch.fft.ifftn(gx, dim=dims), grad_x[:, block], grad_x[:, second], (0,) * nd)
    grad_kernel = None
    if need_kernel:
        sums = sums[:channels].view(channels * per, *geometry.grid)
        if geometry.kernel is None:  # filter: (1/N) conj(X) G
            grad_kernel = hermitian_part(sums, nd, 1 / math.prod(geometry.grid), conj=True)
        else:
            # Re(ifftn(S)) is the inverse transform of S's Hermitian part: a real one, half the work
            half = hermitian_part(sums, nd)[..., : geometry.grid[-1] // 2 + 1]
            buffer = torch.fft.irfftn(half, s=geometry.grid, dim=dims)
            grad_kernel = gather_kernel(buffer, geometry).view_as(kernel)
    if need_x:
        grad_x = grad_x.contiguous(memory_format=conv_memory_format(x))
    return grad_x, grad_kernel, grad_bias


# ----------------------------------------------------------------------------- one entry for both


def product_forward(x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None, geometry: FFTGeometry,
                    needs: tuple[bool, bool, bool]) -> tuple[Tensor, list[Tensor]]:
    """The spectral product (packed or on real transforms, as ``geometry`` says) and the tensors its backward
    reuses; ``needs``: the gradients wanted, (input, kernel, mixing). A filter may come as its parts
    (:func:`filter_spectrum`)."""
    kernel = filter_spectrum(kernel, geometry)
    if geometry.packed and mixing is None:
        return _packed_forward(x, kernel, bias, geometry, needs[1])
    return _real_forward(x, kernel, mixing, bias, geometry, needs)


def product_backward(grad: Tensor, x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None,
                     saved: list[Tensor], geometry: FFTGeometry, needs: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients ``(x, kernel, mixing, bias)`` of :func:`product_forward` from the output gradient, the inputs and
    the ``saved`` tensors (``needs``: the forward's three, then the bias). A filter given as its parts
    (:func:`filter_spectrum`) has its gradient as parts too."""
    saved = list(saved)
    spectrum = filter_spectrum(kernel, geometry)
    if geometry.packed and mixing is None:
        grad_x, grad_kernel, grad_bias = _packed_backward(grad, x, spectrum, bias, saved, geometry,
                                                          (needs[0], needs[1], needs[3]))
        grad_mixing = None
    else:
        grad_x, grad_kernel, grad_mixing, grad_bias = _real_backward(grad, x, spectrum, mixing, bias, saved,
                                                                     geometry, needs)
    if grad_kernel is not None and spectrum is not kernel:
        grad_kernel = torch.view_as_real(grad_kernel)
    return grad_x, grad_kernel, grad_mixing, grad_bias


class SpectralProduct(torch.autograd.Function):
    """:func:`product_forward` with :func:`product_backward` as its backward (the eager path).

    ``keep``: whether a kernel (or mixing) gradient will be wanted (the caller knows the grad mode): only
    then are the input spectra kept. With a graph of the backward asked for (``create_graph=True``), or batched
    gradients (``is_grads_batched=True``: the native kernels batch nothing), the gradients come from
    :func:`reference_product` instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, mixing: Tensor | None, bias: Tensor | None, geometry: FFTGeometry,
                keep: bool) -> Tensor:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1] and keep,
                 mixing is not None and ctx.needs_input_grad[2] and keep)
        out, saved = product_forward(x, kernel, mixing, bias, geometry, needs)
        ctx.save_for_backward(x, kernel, mixing, bias, *saved)
        ctx.geometry, ctx.needs = geometry, needs
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, kernel, mixing, bias, *saved = ctx.saved_tensors
        if torch.is_grad_enabled() or batched(grad):  # a graph of the backward, or batched gradients
            return (*_graph_gradients(grad, (x, kernel, mixing, bias), ctx.needs_input_grad[:4], ctx.geometry),
                    None, None)
        needs = (*ctx.needs, ctx.needs_input_grad[3])
        return (*product_backward(grad, x, kernel, mixing, bias, saved, ctx.geometry, needs), None, None)
