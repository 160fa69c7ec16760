"""What was learned: effective kernel size, receptive fields, positions, masks, counts, figures.

Names resolve lazily (matplotlib is only imported by the plotting functions).
"""

from importlib import import_module

# module -> public names it defines; each analysis file adds its names here.
_MODULES: dict[str, list[str]] = {
    "largekernel.analysis.flops": ["count"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'largekernel.analysis' has no attribute {name!r}")


def __dir__():
    return __all__
