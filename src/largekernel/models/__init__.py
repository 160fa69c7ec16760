"""Model registry and architectures (ConvNeXt, ResNet, FlexNet, ViT/FiT, 1-D sequence nets).

Every architecture file registers its variants on import; add new files to the
import list below.
"""

from importlib import import_module

from largekernel.models._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "is_model"]

# Architecture files, imported for their @register_model side effect. A file that
# does not exist yet is skipped so that families can land independently.
_ARCHITECTURES = ("convnext", "resnet", "seq1d", "flexnet", "vit")

for _name in _ARCHITECTURES:
    try:
        import_module(f"largekernel.models.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"largekernel.models.{_name}":
            raise
