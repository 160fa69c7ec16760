"""Whether operations are being recorded (``torch.compile``, ``torch.export``, ``torch.jit.trace``) or run.

Code that reads tensor values into Python (a crop size, a timing) or calls foreign code
(the native kernels) must take another route while a graph is recorded: a tracer
cannot see the Python value (it guards on it, breaks the graph, or freezes it) nor
the foreign call. One definition, used wherever that choice is made.
"""

from __future__ import annotations

import torch

__all__ = ["tracing", "exporting_onnx"]


def tracing() -> bool:
    """Whether a graph is being recorded: ``torch.compile`` (dynamo), ``torch.export`` (strict or not),
    ``torch.onnx.export`` or ``torch.jit.trace`` / ``script``."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def exporting_onnx() -> bool:
    """Whether ``torch.onnx.export`` is recording the graph (ONNX lacks operators of some torch paths)."""
    return torch.onnx.is_in_onnx_export()
