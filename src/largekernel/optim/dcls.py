"""The learning techniques of DCLS (Khalfaoui-Hassani, Pellegrini and Masquelier, ICLR 2023, section 3; seed 001).

Generic over any module that exposes the small protocol the DCLS layers implement:

- clamping after every optimizer step (``clamp_parameters()``): :func:`install_dcls_clamp`;
- positions shared by the layers of a stage, gradients summed: :func:`share_positions`;
- the repulsive loss of KPConv (Thomas et al. 2019) against overlapping
  elements (a ``P`` parameter): :func:`dcls_repulsive_loss`;
- a decreasing Gaussian width over training (``set_sigma(value)``), as in the
  Gaussian DCLS follow-ups: :class:`SigmaSchedule`.

(The fourth, the positions' learning rate x5 without weight decay, is :func:`largekernel.optim.param_groups`.)
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["install_dcls_clamp", "share_positions", "dcls_repulsive_loss", "SigmaSchedule"]


def install_dcls_clamp(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Call ``clamp_parameters()`` of every submodule of ``model`` that has one after each ``optimizer.step()``.

    Positions that reach the box limit stay there (the paper clamps "at the end of
    every batch step"). Generic: any module with a ``clamp_parameters`` method is
    clamped, whatever its family (those present when the hook is installed).
    Returns the hook handle; ``handle.remove()`` stops clamping.

    Example:
        >>> model = nn.Sequential(largekernel.nn.DclsConv2d(4, 4, 9, 7, padding=3))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> handle = install_dcls_clamp(opt, model)
    """
    clampers = [m for m in model.modules() if callable(getattr(m, "clamp_parameters", None))]
    if not clampers:
        raise ValueError(f"model has no submodule with a clamp_parameters() method: {type(model).__name__}")

    def clamp(_optimizer, _args, _kwargs) -> None:
        for module in clampers:
            module.clamp_parameters()

    return optimizer.register_step_post_hook(clamp)


def share_positions(layers: Iterable[nn.Module], *, sigmas: bool = True) -> nn.Parameter:
    """Make ``layers`` use one position Parameter ``P`` (and ``SIG`` when ``sigmas``); weights stay their own.

    The paper shares positions across the blocks of a stage: every layer then
    reads the same Parameter, so autograd sums the layers' position gradients
    into it, and optimizers and :func:`param_groups` see it once. The first
    layer's values are kept. Returns the shared ``P``.
    """
    layers = list(layers)
    if len(layers) < 2:
        raise ValueError(f"layers must hold at least two modules to share positions, got {len(layers)}")
    first = layers[0]
    for i, layer in enumerate(layers):
        P = getattr(layer, "P", None)
        if not isinstance(P, nn.Parameter):
            raise TypeError(f"layers[{i}] ({type(layer).__name__}) has no position Parameter P")
        if P.shape != first.P.shape:
            raise ValueError(f"layers[{i}].P has shape {tuple(P.shape)}, expected {tuple(first.P.shape)} "
                             "as layers[0]: shared positions need equal channels, kernel_count and box")
    share_sigma = sigmas and all(getattr(layer, "SIG", None) is not None for layer in layers)
    for layer in layers[1:]:
        layer.P = first.P
        if share_sigma:
            layer.SIG = first.SIG
    return first.P


def _pairwise_overlap(P: Tensor, influence: float, chunk: int) -> Tensor:
    """Sum over kernels of sum over element pairs of max(0, 1 - d / influence)^2, and the kernel count."""
    m, count = P.shape[0], P.shape[-1]
    pos = P.reshape(m, -1, count).permute(1, 2, 0)  # (B, count, M)
    first, second = torch.triu_indices(count, count, 1, device=P.device)
    total = P.new_zeros(())
    for start in range(0, pos.shape[0], chunk):
        block = pos[start:start + chunk]
        dist = torch.linalg.vector_norm(block[:, first] - block[:, second], dim=-1)  # (b, count*(count-1)/2)
        total = total + torch.relu(1 - dist / influence).square().sum()
    return total


def dcls_repulsive_loss(model: nn.Module, influence: float = 1.0) -> Tensor:
    """Repulsive loss of KPConv (Thomas et al. 2019) over the kernel elements of every DCLS layer of ``model``.

    For each kernel (one (out, in) pair, and dense cell of N-MD layers), every
    pair of elements closer than ``influence`` (in cells; 1 = the bilinear
    footprint) costs ``(1 - d / influence)^2``; the loss sums pairs and averages
    over kernels, then sums over layers. Shared position Parameters count once.
    Cost: O(count^2 * M) per kernel, computed in chunks to bound memory. Add it
    to the task loss with a small factor.
    """
    if influence <= 0:
        raise ValueError(f"influence must be > 0, got {influence!r}")
    loss, seen = None, set()
    for module in model.modules():
        P = getattr(module, "P", None)
        if not isinstance(P, nn.Parameter) or id(P) in seen or P.shape[-1] < 2:
            continue
        seen.add(id(P))
        count = P.shape[-1]
        kernels = P[0].numel() // count
        term = _pairwise_overlap(P, influence, chunk=max(1, (1 << 22) // (count * count))) / kernels
        loss = term if loss is None else loss + term
    if loss is None:
        raise ValueError(f"model has no DCLS layer (a module with a position Parameter P): {type(model).__name__}")
    return loss


class SigmaSchedule:
    """Width of the Gaussian (or triangle) DCLS elements, decreasing from ``start`` to ``end`` over training.

    Wide elements early spread the gradient over the box and let positions move
    far; narrow ones late make the kernel sparse (the schedule of the Gaussian DCLS
    follow-ups, e.g. Hammouamri et al. 2023 for learned delays). Every submodule
    with a ``set_sigma`` method and a width parameter ``SIG`` is set to the
    current value at construction and on each :meth:`step`; with ``freeze=True``
    the widths stop being learned (``SIG.requires_grad_(False)``) so the optimizer
    does not fight the schedule.

    Args:
        model: the model holding the layers.
        start, end: the width (sigma, in cells) at step 0 and at ``total_steps``.
        total_steps: number of :meth:`step` calls over which to go from start to end.
        mode: ``"linear"`` or ``"cosine"``.
        freeze: stop learning ``SIG`` (default ``True``).

    Example:
        >>> schedule = SigmaSchedule(model, start=8.0, end=0.5, total_steps=epochs)
        >>> for epoch in range(epochs):
        ...     train_one_epoch(model)
        ...     schedule.step()
    """

    def __init__(self, model: nn.Module, start: float, end: float, total_steps: int, mode: str = "linear",
                 freeze: bool = True) -> None:
        if mode not in ("linear", "cosine"):
            raise ValueError(f"mode must be 'linear' or 'cosine', got {mode!r}")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        self.layers = [m for m in model.modules()
                       if callable(getattr(m, "set_sigma", None)) and getattr(m, "SIG", None) is not None]
        if not self.layers:
            raise ValueError(f"model has no layer with a width (interpolation 'gaussian' or 'triangle'): "
                             f"{type(model).__name__}")
        self.start, self.end, self.total_steps, self.mode = float(start), float(end), total_steps, mode
        self.last_step = 0
        if freeze:
            for layer in self.layers:
                layer.SIG.requires_grad_(False)
        self._apply()

    @property
    def sigma(self) -> float:
        """The width for the current step."""
        t = min(self.last_step, self.total_steps) / self.total_steps
        if self.mode == "cosine":
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t

    def _apply(self) -> None:
        for layer in self.layers:
            layer.set_sigma(self.sigma)

    def step(self) -> float:
        """Advance one step, set the layers' width, return it."""
        self.last_step += 1
        self._apply()
        return self.sigma

    def state_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "total_steps": self.total_steps, "mode": self.mode,
                "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Resume: restore the step counter (and settings) and re-apply the width."""
        self.start, self.end = float(state["start"]), float(state["end"])
        self.total_steps, self.mode, self.last_step = state["total_steps"], state["mode"], state["last_step"]
        self._apply()
