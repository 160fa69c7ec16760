"""Parameter, MAC and FLOP counts, with the FFT operations that ``torch.utils.flop_counter`` ignores.

FFT convolution (seed 003) and the frequency-domain layers (NIFF, SGConv, FiT)
spend their compute in ``torch.fft`` calls and complex products, which torch's
counter does not see; comparing them with direct convolution needs both.

Convention (stated so that numbers can be compared):

- a real multiply-add is 2 FLOPs, as in ``torch.utils.flop_counter`` (convolutions,
  matmuls and attention use torch's formulas);
- a complex FFT of ``N = n1 n2 ...`` points is ``5 N log2 N`` FLOPs (Cooley-Tukey
  radix-2 count, as in FFTW's benchmarks); a real-input or real-output FFT is half
  of that, ``2.5 N log2 N``; each batch of transforms counts once per transform;
- a complex matmul costs 4 real ones (4x torch's count); an elementwise complex
  product is 6 FLOPs per element (4 multiplies, 2 adds), complex times real 2;
- other elementwise ops (norms, activations) are not counted, as in torch;
- MACs = FLOPs / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = ["count", "Counts", "fft_flops"]

aten = torch.ops.aten


@dataclass
class Counts:
    """Result of :func:`count`: parameters, FLOPs and MACs of one forward pass, FLOPs per op."""

    params: int
    flops: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return self.flops // 2

    def __str__(self) -> str:
        return f"params {self.params:,}, MACs {self.macs:,}, FLOPs {self.flops:,}"


def fft_flops(n: int, *, real: bool) -> int:
    """FLOPs of one ``n``-point FFT: ``5 n log2 n`` complex, half of that for a real input or output."""
    if n <= 1:
        return 0
    full = 5.0 * n * math.log2(n)
    return int(round(full / 2 if real else full))


def _fft_count(shape: Sequence[int], dims: Sequence[int], real: bool) -> int:
    n = math.prod(shape[d] for d in dims)
    transforms = math.prod(shape) // max(n, 1)
    return transforms * fft_flops(n, real=real)


def _r2c(x, dim, normalization, onesided, out_val=None):
    return _fft_count(x.shape, dim, real=True)


def _c2r(x, dim, normalization, last_dim_size, out_val=None):
    # The real output holds the signal length (the input is the half spectrum).
    return _fft_count(out_val.shape, dim, real=True)


def _c2c(x, dim, normalization, forward, out_val=None):
    return _fft_count(x.shape, dim, real=False)


def _complex_matmul(op):
    base = flop_registry[op]

    def flops(*args, out_val=None, **kwargs):
        real = base(*args, out_val=out_val, **kwargs)
        return 4 * real if out_val is not None and out_val.is_complex() else real

    return flops


def _complex_mul(a, b, out_val=None, **kwargs):  # kwargs: out= of torch.mul(..., out=...)
    if not (isinstance(out_val, Tensor) and out_val.is_complex()):
        return 0
    both = isinstance(a, Tensor) and isinstance(b, Tensor) and a.is_complex() and b.is_complex()
    return (6 if both else 2) * out_val.numel()


def _raw(fn):
    fn._get_raw = True  # FlopCounterMode passes tensors (dtype needed), not shapes
    return fn


_MAPPING = {
    aten._fft_r2c: _raw(_r2c),
    aten._fft_c2r: _raw(_c2r),
    aten._fft_c2c: _raw(_c2c),
    aten.mm: _raw(_complex_matmul(aten.mm)),
    aten.bmm: _raw(_complex_matmul(aten.bmm)),
    aten.addmm: _raw(_complex_matmul(aten.addmm)),
    aten.baddbmm: _raw(_complex_matmul(aten.baddbmm)),
    aten.mul: _raw(_complex_mul),
    aten.mul_: _raw(_complex_mul),  # in place (spectral products at inference)
}


def count(model: nn.Module, input_size: Sequence[int], *, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> Counts:
    """Parameters, FLOPs and MACs of ``model`` on one input of shape ``input_size`` (batch included).

    Runs the forward pass (twice: the first lets ``backend="auto"`` layers settle their choice, the
    second is counted) in eval mode under ``torch.no_grad`` on zeros of that shape (dtype and device
    of the model's first real parameter unless given), restores the training mode, and counts with
    ``torch.utils.flop_counter.FlopCounterMode`` plus the FFT and complex-product formulas of this
    module (see the module docstring for the convention). Shared parameters count once.
    """
    if isinstance(input_size, (str, bytes)) or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise ValueError(f"input_size must be a sequence of positive ints (batch, channels, *spatial), "
                         f"got {input_size!r}")
    # Real inputs in the dtype of the first real parameter (spectral layers may hold complex ones).
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = dtype or (first.dtype if first is not None else torch.float32)
    device = device or (first.device if first is not None else "cpu")
    x = torch.zeros(tuple(input_size), dtype=dtype, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Warm-up outside the counter: backend="auto" may time both paths on a shape's first call.
            model(x)
            with FlopCounterMode(display=False, custom_mapping=_MAPPING) as counter:
                model(x)
    finally:
        model.train(was_training)
    by_op = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts().get("Global", {}).items() if n}
    params = sum(p.numel() for p in model.parameters())
    return Counts(params=params, flops=counter.get_total_flops(), by_op=by_op)
