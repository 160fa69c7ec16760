"""Parameter marks: a layer tags the parameters that need their own learning rate or weight decay where it
creates them (the s4 convention); :func:`largekernel.optim.param_groups` turns the marks into optimizer groups."""

from __future__ import annotations

from torch import nn

__all__ = ["mark"]


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


