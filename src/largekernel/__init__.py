"""largekernel: convolutions with large, learnable, or input-sized receptive fields.

Submodules: ``functional`` (FFT convolution, kernel construction), ``nn``
(drop-in layers), ``models`` (registry and architectures), ``surgery``
(``convert``, ``bake``, ``load_dense``), ``optim`` (parameter groups), ``data``, ``train``,
``analysis``, ``bench``.
"""

from importlib import import_module

__version__ = "0.1.0"

__all__ = ["__version__", "convert", "bake"]


def __getattr__(name: str):
    # convert/bake live in largekernel.surgery, which imports every layer family;
    # resolve them lazily so `import largekernel` stays cheap.
    if name in ("convert", "bake"):
        return getattr(import_module("largekernel.surgery"), name)
    raise AttributeError(f"module 'largekernel' has no attribute {name!r}")
