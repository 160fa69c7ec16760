"""SLaK: the paper's SLaK-T sizes (width x1.3, kernels 51/49/47/13 by 5) and its parameter count."""

import pytest
import torch

from largekernel.models import create_model
from largekernel.nn.reparam import SLaKConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slak_tiny_sizes_and_parameter_count():
    with torch.device("meta"):
        model = create_model("slak_tiny")
    dims = [int(d * 1.3) for d in (96, 192, 384, 768)]
    assert dims == [124, 249, 499, 998]
    expected = 3 * 124 * 16 + 124 + 2 * 124  # stem: 4x4 stride-4 conv, LayerNorm
    for i, (c, depth, m) in enumerate(zip(dims, (3, 3, 9, 3), (51, 49, 47, 13))):
        if i:
            expected += 2 * dims[i - 1] + dims[i - 1] * c * 4 + c  # LayerNorm, 2x2 stride-2 conv
        branches = c * (m * 5 + 5 * m + 5 * 5) + 3 * 2 * c  # M x 5, 5 x M, 5 x 5, three BatchNorms
        expected += depth * (branches + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + c)  # + LN, MLP, gamma
        for block in model.stages[i].blocks:
            conv = block.conv_dw
            assert isinstance(conv, SLaKConv2d) and conv.kernel_size == (m, m) and conv.bias is None
            assert [tuple(c.kernel_size) for c, _ in conv.branches()] == [(m, 5), (5, m), (5, 5)]
    expected += 2 * 998 + 998 * 1000 + 1000
    assert sum(p.numel() for p in model.parameters()) == expected


def test_input_too_small_is_refused():
    model = create_model("slak_tiny", dims=(8, 8, 8, 8), depths=(1, 1, 1, 1), num_classes=2)
    with pytest.raises(ValueError, match=r"SLaK expects \(B, C, H, W\) input with H, W >= 32, got shape "
                                         r"\(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))
