"""Model registry with timm's conventions: ``@register_model`` functions that only set sizes.

Each architecture file also holds ``default_cfgs``, timm's ``pretrained_cfg`` per
model name: the input it is made for (size, mean/std), its classifier and first
convolution. No weights ship (no ``url`` / ``hf_hub_id``): the cfg describes the
data, so that timm's data pipeline (``timm.data.resolve_data_config``) and a
user's own know what to feed the model.
"""

from __future__ import annotations

import fnmatch
import sys
from typing import Any, Callable, Sequence

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "pretrained_cfg", "model_cfg",
           "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD", "STANDARDIZED"]

# The datasets' published statistics (the same values largekernel.data normalises with; models do not import data).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The embedded datasets (MNIST-1D, scikit-learn digits) are standardised when loaded.
STANDARDIZED = {"mean": (0.0,), "std": (1.0,)}

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its ``__name__`` (decorator)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def _load_all() -> None:
    # Importing the package imports every architecture file, which registers them.
    import largekernel.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted."""
    _load_all()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _load_all()
    return name in _MODELS


def model_cfg(input_size: Sequence[int], *, mean: Sequence[float], std: Sequence[float], num_classes: int,
              classifier: str = "head", first_conv: str = "stem.0", **extra: Any) -> dict[str, Any]:
    """A ``pretrained_cfg`` dict with timm's keys: ``input_size`` is ``(C, *spatial)``, ``mean``/``std`` per channel."""
    return dict(input_size=tuple(input_size), mean=tuple(mean), std=tuple(std), num_classes=num_classes,
                classifier=classifier, first_conv=first_conv, **extra)


def _check_name(name: str) -> None:
    _load_all()
    if name not in _MODELS:
        close = fnmatch.filter(_MODELS, f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint}. See largekernel.models.list_models()")


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` of model ``name`` (a copy): from its file's ``default_cfgs``, else only the
    classifier convention every largekernel model follows."""
    _check_name(name)
    cfgs = getattr(sys.modules[_MODELS[name].__module__], "default_cfgs", {})
    return dict(cfgs.get(name, {"classifier": "head"}), architecture=name)


def _build(name: str, kwargs: dict) -> nn.Module:
    """``_MODELS[name](**kwargs)``; a ``global_pool`` (timm's keyword: ``"avg"``, or ``""`` with ``num_classes=0``
    for the unpooled feature map) that the constructor does not take goes to the classifier models'
    ``reset_classifier`` instead, as timm's models take it at construction."""
    from largekernel.models.layers import Classifier

    pool = kwargs.get("global_pool")
    try:
        return _MODELS[name](**kwargs)
    except TypeError as error:
        if pool is None or "global_pool" not in str(error):
            raise
        model = _MODELS[name](**{k: v for k, v in kwargs.items() if k != "global_pool"})
        if not isinstance(model, Classifier):
            raise
    model.reset_classifier(model.num_classes, pool)
    return model


def create_model(name: str, *, features_only: bool = False, out_indices: Sequence[int] | None = None,
                 **kwargs) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its constructor (``num_classes``, ``in_chans``, ``conv``, ...).

    The model carries ``pretrained_cfg`` (:func:`pretrained_cfg`, with its actual ``num_classes``).
    ``features_only=True`` returns the backbone instead, a :class:`~largekernel.models.features.FeatureListNet`
    giving the feature maps at ``out_indices`` (positions in the model's ``feature_info``; default all), as
    timm's ``features_only`` does.
    """
    _check_name(name)
    model = _build(name, kwargs)
    cfg = pretrained_cfg(name)
    if "num_classes" in cfg and hasattr(model, "num_classes"):
        cfg["num_classes"] = model.num_classes
    if features_only:
        from largekernel.models.features import FeatureListNet

        model = FeatureListNet(model, out_indices)
        cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier")}
    elif out_indices is not None:
        raise ValueError(f"out_indices={out_indices!r} selects feature maps and needs features_only=True")
    model.pretrained_cfg = cfg
    return model
