import pytest
import torch

from largekernel.models import create_model, list_models


@pytest.mark.parametrize("name,shape", [("dwnet1d_tiny", (2, 1, 40)), ("dwnet1d_small", (2, 3, 40)),
                                        ("dwnet2d_tiny", (2, 1, 8, 8)), ("dwnet2d_small", (2, 3, 32, 32))])
@pytest.mark.parametrize("conv", ["conv", "fft", "dilated"])
def test_dwnet_forward_backward(name, shape, conv):
    model = create_model(name, num_classes=7, in_chans=shape[1], conv=conv, kernel_size=9, drop_path_rate=0.1)
    x = torch.randn(shape, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.isfinite(x.grad).all()


def test_dwnet_registered():
    assert {"dwnet1d_tiny", "dwnet1d_small", "dwnet2d_tiny", "dwnet2d_small"} <= set(list_models("dwnet*"))
