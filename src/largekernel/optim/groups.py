"""Optimizer parameter groups built from marks (the s4 convention, state-spaces/s4 ``optim_groups``).

A layer that needs its own learning rate or no weight decay for some parameters marks them at
construction time with :func:`largekernel.nn.mark` (``param._optim = {"lr_scale": 5.0,
"weight_decay": 0.0, "kind": "position"}``); :func:`param_groups` turns the marks into groups, in
torch's or timm's convention for per-group learning rates. No name matching on strings.
"""

from __future__ import annotations

from torch import nn

from largekernel.nn.marks import mark, marks

__all__ = ["mark", "param_groups"]


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[int, float]:
    """id(parameter) -> timm's layer-wise learning-rate scale (``timm.optim.param_groups_layer_decay``, which
    reads the model's ``group_matcher``, or groups by depth without one)."""
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) or not layer_decay > 0:
        raise ValueError(f"layer_decay must be a positive number (timm's: each layer's lr scale is layer_decay ** "
                         f"(layers after it)), got {layer_decay!r}")
    try:
        from timm.optim import param_groups_layer_decay
    except ImportError as error:
        raise ImportError("param_groups(..., layer_decay=) groups layers as timm does and needs timm: pip install "
                          "'largekernel[timm]'") from error
    return {id(p): group["lr_scale"] for group in param_groups_layer_decay(model, layer_decay=float(layer_decay))
            for p in group["params"]}


def param_groups(model: nn.Module, lr: float | None = None, weight_decay: float | None = None,
                 position_lr_scale: float = 5.0, layer_decay: float | None = None) -> list[dict]:
    """Optimizer groups for ``model``, in one of two layouts, chosen by whether ``lr`` is given.

    Which parameters go where:

    - unmarked parameters with ``dim() >= 2``: ``weight_decay``, lr scale 1;
    - unmarked biases, norm weights (``dim() < 2``) and names listed by the
      model's ``no_weight_decay()``: no weight decay, lr scale 1;
    - marked parameters: their mark's lr scale (positions and sigmas default to
      ``position_lr_scale``, others to 1) and weight decay (default 0).

    Layouts (every group also has ``"kind"``, the mark's kind or ``"default"``, and ``"names"``):

    - ``lr`` given, torch's convention: each group's ``"lr"`` is ``lr * scale``, absolute, and carries no
      ``"lr_scale"``. For ``torch.optim`` optimizers with or without a ``torch.optim.lr_scheduler``, and
      for timm's schedulers too: every scheduler scales each group's own initial lr, so the ratio holds
      (timm's warmup, starting all groups at one absolute ``warmup_lr_init``, excepted).
    - ``lr=None``, timm's convention: no ``"lr"`` (the optimizer's lr is the base) and ``"lr_scale"`` on
      every group, which the scheduler multiplies into the lr it sets, once: timm's schedulers and
      ``largekernel train`` do. This is the form for ``timm.optim.create_optimizer_v2(model, ...,
      param_group_fn=largekernel.optim.param_groups)``. Without such a scheduler the scale is not applied.

    ``weight_decay=None`` leaves ``"weight_decay"`` out of the decayed group, so the optimizer's own
    default applies (what ``param_group_fn`` needs); groups without decay always say ``0.0``.
    Parameters shared between modules appear once.

    ``layer_decay``: timm's layer-wise learning-rate decay on top (needs timm): each parameter's scale
    multiplied by the one ``timm.optim.param_groups_layer_decay`` gives it (the model's ``group_matcher``;
    the weight decay stays as above), what ``create_optimizer_v2(..., layer_decay=)`` would do, which timm
    ignores once a ``param_group_fn`` is given: ``param_group_fn=functools.partial(param_groups,
    layer_decay=0.75)``. Each group then also says its ``"layer_scale"``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    marked = marks(model)
    layers = {} if layer_decay is None else _layer_scales(model, layer_decay)
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mark_ = marked.get(id(p))
        if mark_ is not None:
            kind = mark_["kind"]
            scale = mark_["lr_scale"]
            if scale is None:
                scale = position_lr_scale if kind in ("position", "sigma") else 1.0
            wd = 0.0 if mark_["weight_decay"] is None else mark_["weight_decay"]
        else:
            kind, scale = "default", 1.0
            wd = 0.0 if (p.dim() < 2 or name in skip) else weight_decay
        depth = layers.get(id(p), 1.0)
        key = (kind, scale, wd, depth)
        if key not in groups:
            group = {"params": [], "kind": kind, "names": []}
            if layer_decay is not None:
                group["layer_scale"] = depth
            if lr is None:
                group["lr_scale"] = scale * depth
            else:
                group["lr"] = lr * scale * depth
            if wd is not None:
                group["weight_decay"] = wd
            groups[key] = group
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


