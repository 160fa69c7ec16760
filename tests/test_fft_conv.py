import pytest
import torch
import torch.nn.functional as F

from largekernel.functional import fft_conv

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1, "dilation": 2}, {"padding": "same", "groups": 2}])
def test_matches_torch_conv(nd, kw):
    groups = kw.get("groups", 1)
    x = torch.randn(2, 4, *([9] * nd), dtype=torch.float64)
    w = torch.randn(6, 4 // groups, *([3] * nd), dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(fft_conv(x, w, b, **kw), TORCH_CONV[nd](x, w, b, **kw))
