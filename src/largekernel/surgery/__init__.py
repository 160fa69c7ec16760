"""Model surgery: :func:`convert` a network to a large-kernel family, :func:`bake` it back into plain
convolutions, :func:`load_dense` a dense checkpoint into a converted network.

``largekernel.convert`` and ``largekernel.bake`` are these functions; ``largekernel convert`` is
:mod:`largekernel.surgery.cli`.
"""

from largekernel.surgery.bake import bake
from largekernel.surgery.convert import (ConvertReport, DynamicSamePad, ReplacedLayer, SkippedLayer, convert,
                                         is_depthwise_spatial, match_params)
from largekernel.surgery.dense import DenseLoadReport, load_dense

__all__ = ["convert", "bake", "load_dense", "match_params", "ConvertReport", "ReplacedLayer", "SkippedLayer",
           "DenseLoadReport", "DynamicSamePad", "is_depthwise_spatial"]
