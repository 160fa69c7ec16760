"""Optimizer parameter groups built from marks placed on parameters where they are created.

Following state-spaces/s4: a layer that needs its own learning rate or no weight
decay for some parameters calls :func:`mark` on them at construction time
(``param._optim = {"lr_scale": 5.0, "weight_decay": 0.0, "kind": "position"}``);
:func:`param_groups` turns the marks into groups. No name matching on strings.
"""

from __future__ import annotations

from torch import nn

__all__ = ["mark", "param_groups"]


def mark(param: nn.Parameter, *, kind: str, lr_scale: float | None = None,
         weight_decay: float | None = None) -> nn.Parameter:
    """Tag ``param`` for :func:`param_groups`.

    ``kind`` names the role (``"position"``, ``"sigma"``, ``"ssm"``, ``"mask"``,
    ``"kernel_net"`` ...); ``lr_scale`` multiplies the base lr (``None``: the
    group-level default for this kind); ``weight_decay`` overrides the base decay.
    Returns ``param`` so it can wrap the ``nn.Parameter(...)`` expression.
    """
    param._optim = {"kind": kind, "lr_scale": lr_scale, "weight_decay": weight_decay}
    return param


def param_groups(model: nn.Module, lr: float, weight_decay: float, position_lr_scale: float = 5.0) -> list[dict]:
    """Optimizer groups for ``model``.

    - unmarked parameters with ``dim() >= 2``: ``lr``, ``weight_decay``;
    - unmarked biases, norm weights (``dim() < 2``) and names listed by the
      model's ``no_weight_decay()``: ``lr``, no weight decay;
    - marked parameters: their mark's lr scale (positions and sigmas default to
      ``position_lr_scale``) and weight decay (default 0).

    Parameters shared between modules appear once.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mark_ = getattr(p, "_optim", None)
        if mark_ is not None:
            kind = mark_["kind"]
            scale = mark_["lr_scale"]
            if scale is None:
                scale = position_lr_scale if kind in ("position", "sigma") else 1.0
            wd = 0.0 if mark_["weight_decay"] is None else mark_["weight_decay"]
        else:
            kind, scale = "default", 1.0
            wd = 0.0 if (p.dim() < 2 or name in skip) else weight_decay
        key = (kind, scale, wd)
        group = groups.setdefault(key, {"params": [], "lr": lr * scale, "weight_decay": wd,
                                        "lr_scale": scale, "kind": kind, "names": []})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
