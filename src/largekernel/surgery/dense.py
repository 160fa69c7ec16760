"""Loading a dense checkpoint into a converted model: each converted layer takes the nearest kernel it can build.

Pretrained dense weights (a timm checkpoint, say) are where most converted models start; the
family decides how its own parameters fit a dense kernel (``fit_dense`` of DCLS, CKConv/FlexConv).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from largekernel.functional import ConvArgumentError
from largekernel.nn._base import KernelConvNd, centre_kernel
from largekernel.surgery.convert import DynamicSamePad

__all__ = ["load_dense", "DenseLoadReport"]

_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class DenseLoadReport:
    """What :func:`load_dense` did: per fitted layer, the relative L2 error ``||K - D|| / ||D||`` of the kernel
    ``K`` it now builds against the checkpoint's dense kernel ``D`` (0: exact), and the keys left over."""

    fitted: dict[str, float] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fitted {len(self.fitted)} layer(s) to their dense kernels"]
        lines += [f"  {name}: relative error {err:.2e}" for name, err in self.fitted.items()]
        for title, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if keys:
                lines.append(f"{title} keys: {', '.join(keys)}")
        return "\n".join(lines)


def _relative_error(kernel: Tensor, dense: Tensor) -> float:
    size = [max(a, b) for a, b in zip(kernel.shape[2:], dense.shape[2:])]
    reference = dense.to(kernel)
    diff = centre_kernel(kernel.detach(), size) - centre_kernel(reference, size)
    return (torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(reference).clamp_min(1e-30)).item()


def load_dense(model: nn.Module, state_dict: dict[str, Tensor], *, strict: bool = True) -> DenseLoadReport:
    """Load the state dict of a dense model (e.g. a pretrained timm checkpoint) into its converted version.

    Entries whose module now is another layer are turned into the nearest kernel that layer can build,
    the rest loads as usual:

    - a dense convolution of another ``kernel_size``: the checkpoint's kernel zero-padded (or cropped) around
      its centre, exact when it grew;
    - DCLS: each kernel's ``kernel_count`` largest-magnitude taps become the positions (on cells; positions
      shared across layers keep the first layer's), then the weights are the least-squares fit through the
      layer's interpolation: exact for ``bilinear`` when at most ``kernel_count`` taps are non-zero;
    - CKConv / FlexConv: the kernel net's output layer is the least-squares fit of the checkpoint's kernel
      on the layer's grid, its hidden layers kept; FlexConv's mask is widened to cover the kernel first.

    Taps map one to one onto the new layer's taps (box cells, grid samples), centred. NIFF, SGConv and S4D
    build input-sized kernels and cannot take a dense one (an error). ``strict``: raise when keys are
    missing or unexpected after that. Returns a :class:`DenseLoadReport` with each fitted layer's error.
    """
    state = dict(state_dict)
    for name, module in model.named_modules():  # converted Conv2dSame: the layer moved to "<name>.1"
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], DynamicSamePad):
            for leaf in ("weight", "bias"):
                if f"{name}.{leaf}" in state:
                    state[f"{name}.1.{leaf}"] = state.pop(f"{name}.{leaf}")
    result = DenseLoadReport()
    fitted: set[int] = set()
    covered: set[str] = set()
    for name, layer in model.named_modules():
        key = f"{name}.weight"
        dense = state.get(key)
        if dense is None or not isinstance(layer, (KernelConvNd, *_TORCH_CONVS)):
            continue
        if isinstance(layer, _TORCH_CONVS):
            if tuple(layer.weight.shape) == tuple(dense.shape):
                continue  # loads as it is
            if dense.dim() != layer.weight.dim() or layer.weight.shape[:2] != dense.shape[:2]:
                raise ConvArgumentError(f"{key}: the checkpoint's kernel {tuple(dense.shape)} does not match the "
                                        f"layer's (out, in/groups, *kernel) = {tuple(layer.weight.shape)}")
            with torch.no_grad():
                layer.weight.copy_(centre_kernel(dense.to(layer.weight), layer.weight.shape[2:]))
            kernel = layer.weight
            covered.add(key)
        else:
            if dense.dim() != layer._nd + 2:
                raise ConvArgumentError(f"{key}: expected a dense kernel (out, in/groups, {layer._nd} spatial sizes) "
                                        f"for {type(layer).__name__}, got shape {tuple(dense.shape)}")
            layer.fit_dense(dense, fitted)
            kernel = layer.construct_kernel()
            covered |= {f"{name}.{n}" for n, _ in layer.named_parameters()} | {f"{name}.{n}" for n, _ in
                                                                               layer.named_buffers()}
            covered.add(f"{name}._extra_state")
        result.fitted[name] = _relative_error(kernel, dense)
        covered.discard(f"{name}.bias")
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    result.missing_keys = [k for k in missing if k not in covered]
    result.unexpected_keys = list(unexpected)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ConvArgumentError(f"load_dense: the checkpoint does not cover the model:\n{result}")
    return result


