"""Lazy package namespaces: public names resolved on first access, so that importing one layer
family (or one analysis module) does not import the others, nor matplotlib."""

from __future__ import annotations

from importlib import import_module
from typing import Callable

__all__ = ["lazy_namespace"]


def lazy_namespace(package: str, modules: dict[str, list[str]]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting, from each module of ``modules``
    (module path -> public names), its names on first access."""
    where = {name: module for module, names in modules.items() for name in names}
    names = sorted(where)

    def __getattr__(name: str):
        if name in where:
            return getattr(import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return names

    return names, __getattr__, __dir__
