"""Parameter marks: a layer tags the parameters that need their own learning rate or weight decay where it
creates them (the s4 convention); :func:`largekernel.optim.param_groups` turns the marks into optimizer groups.

A mark lives on the parameter (``param._optim``) and, from the moment the parameter is registered on a module, on
that module under the parameter's name too: many of torch's ways of handling a model hand it new parameter objects
without the old one's attributes (``copy.deepcopy``, ``load_state_dict(..., assign=True)`` as after building on
the meta device, ``.to()`` and ``load_state_dict`` under ``torch.__future__``'s swap or overwrite settings, FSDP2's
``fully_shard``), while the parameter keeps its module and name. :func:`marks` reads both.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

__all__ = ["mark", "marks"]

#: Where a module keeps the marks of its own parameters, by name (a plain attribute: not in the state dict).
_BY_NAME = "_param_marks"


def mark(param: nn.Parameter, *, kind: str, lr_scale: float | None = None,
         weight_decay: float | None = None) -> nn.Parameter:
    """Tag ``param`` for :func:`param_groups`.

    ``kind`` names the role (``"position"``, ``"sigma"``, ``"ssm"``, ``"mask"``,
    ``"kernel_net"`` ...); ``lr_scale`` multiplies the base lr (``None``: the
    group-level default for this kind); ``weight_decay`` overrides the base decay.
    Returns ``param`` so it can wrap the ``nn.Parameter(...)`` expression. Mark it before it is assigned to its
    module, which then keeps the mark under the parameter's name (the module docstring says why).
    """
    param._optim = {"kind": kind, "lr_scale": lr_scale, "weight_decay": weight_decay}
    return param


def _remember(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    """torch's global parameter-registration hook: a marked parameter's mark is kept by its module too."""
    found = getattr(param, "_optim", None)
    if found is not None:
        module.__dict__.setdefault(_BY_NAME, {})[name] = found


register_module_parameter_registration_hook(_remember)


def marks(model: nn.Module) -> dict[int, dict]:
    """The mark of every marked parameter of ``model``, by ``id(param)``: the parameter's own, else the one its
    module keeps under its name."""
    found: dict[int, dict] = {}
    for module in model.modules():
        kept = module.__dict__.get(_BY_NAME, {})
        for name, param in module.named_parameters(recurse=False):
            m = getattr(param, "_optim", None) or kept.get(name)
            if m is not None:
                found.setdefault(id(param), m)
    return found
