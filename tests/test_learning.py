"""Every family learns: 150 steps on the 8x8 digits (scikit-learn's, offline) reach an accuracy far above
chance (10 %), with a fixed seed. The reference is the held-out labels, nothing of the implementation."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from largekernel.models import create_model
from largekernel.optim import param_groups

FAMILIES = ["conv", "fft", "dilated", "dcls", "flexconv", "ckconv", "niff", "sgconv", "replk", "dilated_reparam",
            "slak"]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


@pytest.mark.parametrize("conv", FAMILIES)
def test_family_learns_the_digits(conv, digits, device):
    (x, y), (x_test, y_test) = (tuple(t.to(device) for t in split) for split in digits)
    torch.manual_seed(0)
    model = create_model("dwnet2d_tiny", num_classes=10, in_chans=1, conv=conv, kernel_size=7).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, lr=3e-3, weight_decay=0.01))
    batches = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(150):
        index = torch.randint(0, len(y), (64,), generator=batches).to(device)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.85, f"{conv}: {accuracy:.3f} on held-out digits after 150 steps"
