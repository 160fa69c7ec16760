"""Model registry and architectures (ConvNeXt, ResNet, FlexNet, ViT/FiT, 1-D sequence nets,
RepLKNet, UniRepLKNet, SLaK).

Every architecture file registers its variants on import; a new architecture file
is added to the imports below.
"""

from largekernel.models import (  # noqa: F401  (@register_model)
    convnext, flexnet, replknet, resnet, seq1d, slak, unireplknet, vit)
from largekernel.models._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "is_model"]
