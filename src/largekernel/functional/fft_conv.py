"""FFT convolution with the exact semantics of ``torch.nn.functional.conv{1,2,3}d``.

Seed 003 (FFT for vision; also the FFT path of FiT / SGConv): a cross-correlation
computed as a product of spectra, so that its cost does not grow with the kernel size.
This module holds the public function and the execution of a plan's FFT path; the plan
itself (transform lengths, packing, channel blocks, overlap-save segments) comes from
:mod:`largekernel.functional.planner`, the transforms and products from
:mod:`largekernel.functional._spectral`. docs/fft_conv.md has the derivations:

* **Circular length.** The correlation is computed as a circular one on a grid, with the
  *unpadded* input at offset 0 and the kernel shifted by the padding before: zero padding
  is never materialised. ``padding_mode="circular"`` is the same computation on one
  period; reflect and replicate padding (and circular padding longer than a period) are
  materialised with ``F.pad`` first.
* **Overlap-save.** A 1-D kernel much shorter than the signal is applied in segments: each
  segment of outputs is a valid correlation of an overlapping input segment at a short
  length, so the kernel is transformed at the segment length, not the signal's.
* **Precision.** fp16 / bf16 operands are computed in fp32 and the result returned in
  their dtype; under ``torch.autocast`` the operands are first cast to the autocast dtype,
  as torch's convolutions are, and the transforms still run in fp32.
* **Memory format.** A ``channels_last`` input gives a ``channels_last`` output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from largekernel.functional._args import (PADDING_MODES, autocast_off, autocast_operands, complex_convolution,
                                          complex_operands, conv_args, flat_pads)
from largekernel.functional._product import spectral_product
from largekernel.functional.planner import ConvPlan, fast_fft_length, make_plan
from largekernel.functional._fx import call_under_fx

__all__ = ["fft_conv", "fast_fft_length", "run_fft", "PADDING_MODES"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@call_under_fx
def fft_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | tuple[tuple[int, int], ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """Same result as ``torch.nn.functional.conv{1,2,3}d``, computed with FFTs.

    The dimension comes from ``weight`` (``(out, in/groups, *kernel)``); ``input``
    is ``(batch, in, *spatial)`` or unbatched ``(in, *spatial)`` as in torch.

    Args:
        input: floating-point tensor, or complex (then ``weight`` and ``bias`` too: three real
            convolutions of the parts, as torch computes a complex convolution).
        weight: kernel in torch conv layout, same dtype and device as ``input``.
        bias: optional ``(out,)`` tensor.
        stride, dilation: positive int or tuple of one int per spatial dim.
        padding: non-negative int or tuple, per-side pairs ``((before, after), ...)``,
            ``"same"`` (stride 1 only) or ``"valid"``.
        groups: number of channel groups (divides in and out channels).
        padding_mode: ``"zeros" | "circular" | "reflect" | "replicate"``, as the
            ``padding_mode`` of ``torch.nn.ConvNd``.

    Returns:
        ``(batch, out, *out_size)`` with ``out_size = (size + pad_before + pad_after
        - dilation * (kernel - 1) - 1) // stride + 1``, in the input dtype
        (fp16 / bf16 are computed in fp32), ``channels_last`` if the input is.

    Gradients of every order flow to ``input``, ``weight`` and ``bias``. A sample's
    output never depends on another sample; within a sample, a NaN or infinity spreads
    over the whole output of the channels it reaches (every frequency sees every sample).

    Example:
        >>> x, w = torch.randn(2, 4, 32, 32), torch.randn(4, 1, 15, 15)
        >>> y = fft_conv(x, w, padding="same", groups=4)
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding="same", groups=4), atol=1e-4)
        True
    """
    input, weight, bias = autocast_operands(input, weight, bias)
    if complex_operands(input, weight, bias):
        return complex_convolution(lambda x, w, b: fft_conv(x, w, b, stride, padding, dilation, groups, padding_mode),
                                   input, weight, bias)
    args = conv_args(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return run_fft(make_plan(args, input, weight, bias, backend="fft"), input, weight, bias)


def run_fft(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The FFT (or overlap-save) path of ``plan`` on operands it was made for."""
    nd = len(plan.kernel)
    if input.dim() == nd + 1:
        return run_fft(plan, input.unsqueeze(0), weight, bias)[0]
    if input.shape[0] == 0:  # nothing to transform (and MKL rejects empty FFTs): torch's conv on the padded input
        mode = "constant" if plan.padding_mode == "zeros" else plan.padding_mode
        padded = F.pad(input, flat_pads(plan.pads), mode=mode)
        return (F.conv1d, F.conv2d, F.conv3d)[nd - 1](padded, weight, bias, plan.stride, 0, plan.dilation, plan.groups)
    dtype = input.dtype
    layout = torch.channels_last if nd == 2 else torch.channels_last_3d
    keep_layout = nd in (2, 3) and not input.is_contiguous() and input.is_contiguous(memory_format=layout)
    with autocast_off(input.device.type):
        if dtype in _LOW_PRECISION:
            input, weight = input.float(), weight.float()
            bias = None if bias is None else bias.float()
        if plan.pre_pad:
            input = F.pad(input, flat_pads(plan.pads), mode=plan.padding_mode)  # (B, Cin, *padded)
        if plan.path == "overlap-save":
            out = _segmented(plan, input, weight, bias)
        else:
            out = spectral_product(input, weight, bias, plan.geometry)
    out = out.to(dtype)
    return out.contiguous(memory_format=layout) if keep_layout else out


def _segmented(plan: ConvPlan, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Overlap-save: each segment of outputs is a valid correlation of one overlapping input segment, computed on
    the short grid of ``plan.geometry``. Segmenting and reassembling are differentiable views and copies, so
    autograd overlap-adds the input gradient."""
    geometry = plan.geometry
    nd = len(geometry.grid)
    b, cin = input.shape[:2]
    pads = ((0, 0),) * nd if plan.pre_pad else plan.pads
    flat = []
    for n, (lo, _), length, (valid, count), s in zip(input.shape[2:], pads, geometry.grid, plan.segments,
                                                    plan.stride):
        flat.append((lo, (count - 1) * valid * s + length - lo - n))  # segment j starts at j * valid * s - lo
    x = F.pad(input, flat_pads(flat))  # (B, Cin, *padded); negative pads crop
    for i, (length, (valid, _), s) in enumerate(zip(geometry.grid, plan.segments, plan.stride)):
        x = x.unfold(2 + i, length, valid * s)  # (B, Cin, *count, *length) once all dims are done
    counts = tuple(c for _, c in plan.segments)
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (B, *count, Cin, *length)
    x = x.reshape(b * math.prod(counts), cin, *geometry.grid)
    y = spectral_product(x, weight, None, geometry)  # (B * segments, Cout, *valid)
    cout = y.shape[1]
    y = y.view(b, *counts, cout, *geometry.out)
    y = y.permute(0, 1 + nd, *[j for i in range(nd) for j in (1 + i, 2 + nd + i)])  # (B, Cout, count1, valid1, ...)
    y = y.reshape(b, cout, *(c * v for c, v in zip(counts, geometry.out)))
    y = y[(..., *(slice(0, k) for k in plan.out))]  # (B, Cout, *out)
    return y + bias.view(-1, *([1] * nd)) if bias is not None else y.contiguous()
