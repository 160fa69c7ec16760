"""largekernel's models in timm's registry, when timm is installed (``pip install largekernel[timm]``).

Importing ``largekernel.models`` registers every model of :func:`largekernel.models.list_models`
with ``timm.models.register_model``, so that ``timm.create_model("convnext_tiny_dcls")``,
``timm.list_models("*dcls*")`` and timm's data config (``pretrained_cfg``: input size,
mean/std, classifier) work. A name timm already uses for its own model (``convnext_tiny``,
``resnet18``, ...) is registered as ``lk_<name>``, leaving timm's model as it is.
``features_only=True`` / ``out_indices`` return timm's ``FeatureListNet`` over the model's
``feature_info`` (another of timm's wrappers with ``feature_cls="dict"``, ``"hook"``, ``"fx"`` or,
for the hierarchical models, ``"getter"``, as for timm's models). Those models also carry timm's
model methods (``forward_intermediates``, ``prune_intermediate_layers``, ``group_matcher``,
``set_grad_checkpointing``, ``get_classifier``, ``reset_classifier(num_classes, global_pool)``:
:class:`largekernel.models.layers.Backbone`). There are no pretrained weights: ``pretrained=True``
is an error.

The core library never imports timm; only this module does, and only when it is installed.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any, Callable, Sequence

from torch import nn

__all__ = ["TIMM_PREFIX", "timm_name", "register_with_timm"]

TIMM_PREFIX = "lk_"
# timm's register_model reads a registered function's module for ``default_cfgs``: the entry points live here.
default_cfgs: dict[str, dict[str, Any]] = {}
_REGISTERED: dict[str, str] = {}  # largekernel name -> timm name


def timm_name(name: str) -> str:
    """The name under which largekernel's model ``name`` is registered in timm (after :func:`register_with_timm`)."""
    if name not in _REGISTERED:
        raise ValueError(f"{name!r} is not registered with timm (is timm installed? registered: "
                         f"{sorted(_REGISTERED)})")
    return _REGISTERED[name]


def _entrypoint(name: str, registered: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, features_only: bool = False, out_indices: Sequence[int] | None = None,
              feature_cls: str | type = "list", **kwargs) -> nn.Module:
        from timm.models import FeatureDictNet, FeatureGraphNet, FeatureHookNet, FeatureListNet, build_model_with_cfg
        from timm.models._features import FeatureGetterNet

        from largekernel.models._registry import create_model, pretrained_cfg

        if pretrained:
            raise ValueError(f"largekernel's {registered!r} has no pretrained weights; use pretrained=False "
                             f"(largekernel.convert turns a pretrained timm model into a large-kernel one)")
        if len(pretrained_cfg(name).get("input_size", (0, 0, 0))) == 3:
            model = build_model_with_cfg(lambda **kw: create_model(name, **kw), registered, pretrained=False,
                                         **kwargs)
        else:  # 1-D models: timm's builder takes an image's (C, H, W) input size only (it asserts three entries)
            builder_only = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # what timm.create_model adds
            model = create_model(name, **{k: v for k, v in kwargs.items() if k not in builder_only})
            model.default_cfg = model.pretrained_cfg
        if not features_only:
            if out_indices is not None:
                raise ValueError(f"out_indices={out_indices!r} selects feature maps and needs features_only=True")
            return model
        if not getattr(model, "feature_info", None):
            raise ValueError(f"{registered!r} declares no feature_info, so features_only=True has nothing to return")
        indices = tuple(range(len(model.feature_info))) if out_indices is None else tuple(out_indices)
        cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier", "pool_size")}
        # timm's feature_cls names ("getter": the model's own forward_intermediates, where it has one)
        wrappers = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "fx": FeatureGraphNet}
        if hasattr(model, "forward_intermediates"):
            wrappers["getter"] = FeatureGetterNet
        wrapper = feature_cls if isinstance(feature_cls, type) else wrappers.get(str(feature_cls).lower())
        if wrapper is None:
            raise ValueError(f"feature_cls must be one of {sorted(wrappers)} or a timm feature class, got "
                             f"{feature_cls!r}")
        options = {} if issubclass(wrapper, (FeatureGraphNet, FeatureGetterNet)) else {"flatten_sequential": True}
        features = wrapper(model, out_indices=indices, **options)
        features.pretrained_cfg = features.default_cfg = cfg
        return features

    entry.__name__ = entry.__qualname__ = registered
    entry.__module__ = __name__
    entry.__doc__ = f"largekernel's ``{name}`` (``largekernel.models.create_model({name!r}, **kwargs)``)."
    return entry


def register_with_timm() -> dict[str, str]:
    """Register every largekernel model with timm; returns ``{largekernel name: timm name}``.

    Idempotent. Does nothing (returns ``{}``) when timm is not installed; warns, without failing,
    when it is installed but cannot be imported.
    """
    if _REGISTERED or importlib.util.find_spec("timm") is None:
        return dict(_REGISTERED)
    try:
        from timm.models import is_model, register_model
    except Exception as err:  # a broken optional install must not break largekernel
        warnings.warn(f"timm is installed but could not be imported ({type(err).__name__}: {err}); "
                      f"largekernel's models are not registered with it", stacklevel=2)
        return {}
    from largekernel.models._registry import list_models, pretrained_cfg

    for name in list_models():
        registered = TIMM_PREFIX + name if is_model(name) else name
        cfg = pretrained_cfg(name)
        cfg.pop("architecture")  # timm sets it
        default_cfgs[registered] = cfg
        register_model(_entrypoint(name, registered))
        _REGISTERED[name] = registered
    return dict(_REGISTERED)
