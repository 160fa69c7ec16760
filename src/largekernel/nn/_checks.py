"""Input checks shared by the layers that run their own forward (not through ``torch.nn.ConvNd``)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["check_input"]


def check_input(layer: nn.Module, input: Tensor, spatial_dims: int, in_channels: int, layout: str) -> None:
    """Raise a clear error unless ``input`` is a real floating-point ``(batch, in_channels, *spatial)``
    tensor with ``spatial_dims`` spatial dims; ``layout`` names them for the message (e.g. ``"length"``)."""
    name = type(layer).__name__
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} expects a Tensor input, got {type(input).__name__}")
    if input.dim() != spatial_dims + 2:
        raise ValueError(f"{name} expects a {spatial_dims + 2}-D input (batch, channels, {layout}), "
                         f"got shape {tuple(input.shape)}")
    if input.shape[1] != in_channels:
        raise ValueError(f"{name} expects {in_channels} input channels, got input of shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a real floating-point tensor, got dtype {input.dtype}")
