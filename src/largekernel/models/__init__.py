"""Model registry and architectures (ConvNeXt, ResNet, FlexNet, ViT/FiT, 1-D sequence nets,
RepLKNet, UniRepLKNet, SLaK).

Every architecture file registers its variants on import; a new architecture file
is added to the imports below. When timm is installed, the models are also
registered in timm's registry (``largekernel.models._timm``).
"""

from largekernel.models import (  # noqa: F401  (@register_model)
    convnext, flexnet, replknet, resnet, seq1d, slak, unireplknet, vit)
from largekernel.models._registry import create_model, is_model, list_models, pretrained_cfg, register_model
from largekernel.models._timm import register_with_timm, timm_name
from largekernel.models.features import FeatureListNet

__all__ = ["create_model", "list_models", "register_model", "is_model", "pretrained_cfg", "FeatureListNet",
           "register_with_timm", "timm_name"]

register_with_timm()
