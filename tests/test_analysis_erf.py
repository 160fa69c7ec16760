"""ERF of known networks: a single convolution's ERF is its kernel footprint."""

import numpy as np
import pytest
import torch
from torch import nn

from largekernel.analysis import effective_receptive_field, erf_area_ratios


@pytest.mark.parametrize("dim,size,k", [(1, 31, 7), (2, 15, 5)])
def test_single_conv_erf_is_its_kernel(dim, size, k):
    conv = getattr(nn, f"Conv{dim}d")(3, 3, k, padding="same", groups=3)
    x = torch.randn(5, 3, *(size,) * dim)
    erf = effective_receptive_field(conv, x)
    lo = size // 2 - (k - 1) // 2
    window = (slice(lo, lo + k),) * dim
    # d/dx of sum_c y_c[centre] is the correlation kernel itself at the centre: sum_c |w_c|
    torch.testing.assert_close(erf[window], conv.weight.detach().abs().sum((0, 1)))
    outside = erf.clone()
    outside[window] = 0
    assert torch.all(outside == 0)


def test_erf_of_two_stacked_convs_and_dataloader_input():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, padding=1, bias=False))
    with torch.no_grad():
        for conv in net:
            conv.weight.fill_(1.0)
    batches = [(torch.randn(2, 1, 11, 11), torch.zeros(2)) for _ in range(3)]
    erf = effective_receptive_field(net, batches, max_images=4)
    tent = torch.tensor([1.0, 2, 3, 2, 1])  # a 3-box convolved with a 3-box
    expected = torch.zeros(11, 11)
    expected[3:8, 3:8] = tent[:, None] * tent[None, :]
    torch.testing.assert_close(erf, expected)


def test_uses_forward_features_and_restores_training_mode():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3, padding=1)
            self.head = nn.Linear(2, 4)

        def forward_features(self, x):
            return self.conv(x)

        def forward(self, x):
            return self.head(self.forward_features(x).mean(-1))

    model = Classifier().train()
    erf = effective_receptive_field(model, torch.randn(3, 1, 9))
    assert model.training
    assert (erf > 0).nonzero().flatten().tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="feature map"):
        effective_receptive_field(model, torch.randn(3, 1, 9), features=model)
    with pytest.raises(ValueError, match="max_images"):
        effective_receptive_field(model, torch.randn(3, 1, 9), max_images=0)


def test_area_ratios_of_a_box():
    erf = torch.zeros(20, 20)
    erf[7:14, 7:14] = 1.0  # a 7x7 box centred at 20 // 2 = 10
    ratios = erf_area_ratios(erf, thresholds=(0.2, 0.99))
    # a 3x3 window holds 9/49 < 0.2, a 5x5 one 25/49
    assert ratios["0.2"] == {"side": 5, "area_ratio": 25 / 400}
    assert ratios["0.99"] == {"side": 7, "area_ratio": 49 / 400}
    line = torch.zeros(10)
    line[5] = 1.0
    assert erf_area_ratios(line)["0.99"] == {"side": 1, "area_ratio": 0.1}


def test_area_ratios_log_scale_follows_replknet():
    erf = torch.rand(9, 9) * 50
    data = np.log10(1 + erf.numpy().astype(np.float64))
    data = data / data.max()

    def replknet_rectangle(thresh):  # RepLKNet's analyze_erf.get_rectangle, extended to the full map
        h, w = data.shape
        for i in range(0, h // 2 + 1):
            area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i].sum()
            if area / data.sum() >= thresh:
                return 2 * i + 1, (2 * i + 1) ** 2 / (h * w)

    ours = erf_area_ratios(erf, log_scale=True)
    for t in (0.2, 0.3, 0.5, 0.99):
        side, ratio = replknet_rectangle(t)
        assert ours[str(t)]["side"] == side
        assert ours[str(t)]["area_ratio"] == pytest.approx(ratio)
    with pytest.raises(ValueError, match="thresholds"):
        erf_area_ratios(erf, thresholds=(0,))
