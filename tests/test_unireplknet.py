"""UniRepLKNet: the paper's sizes and counts, the block written out, the dilated re-param layers."""

import pytest
import torch
import torch.nn.functional as F

from largekernel.models import create_model
from largekernel.nn import Conv2d
from largekernel.nn.reparam import DilatedReparamConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,published,depths,dims,stage3", [
    ("unireplknet_t", 31, (3, 3, 18, 3), (80, 160, 320, 640), (13, 3)),
    ("unireplknet_s", 56, (3, 3, 27, 3), (96, 192, 384, 768), (13, 3, 3)),
])
def test_paper_sizes_and_kernel_layout(name, published, depths, dims, stage3):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) // 10**6 == published  # Ding et al. 2024, Table 2
    assert [len(s.blocks) for s in model.stages] == list(depths)
    expected = [(3,) * depths[0], (13,) * depths[1], stage3 * (depths[2] // len(stage3)), (13,) * depths[3]]
    for stage, kernels, chs in zip(model.stages, expected, dims):
        for block, k in zip(stage.blocks, kernels):
            conv = block.conv_dw
            assert conv.kernel_size == (k, k) and conv.groups == chs and conv.bias is None
            if k == 13:  # UniRepLKNet's branches for 13: 5x5, 7x7 d2, 3x3 d3, d4, d5
                assert isinstance(conv, DilatedReparamConv2d)
                assert conv.dilated_branches == ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))
            else:
                assert type(conv) is Conv2d
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_block_matches_the_official_formula():
    model = create_model("unireplknet_t", dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), kernel_sizes=(3, 3, 3, 3),
                         num_classes=2).double().eval()
    block = model.stages[0].blocks[0]
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
        for bn in (block.norm, block.norm2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)

    def bn(y, m):
        return ((y - m.running_mean.view(1, -1, 1, 1)) / torch.sqrt(m.running_var.view(1, -1, 1, 1) + m.eps)
                * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1))

    y = bn(F.conv2d(x, block.conv_dw.weight, None, padding=1, groups=8), block.norm)
    gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(y.mean((2, 3), keepdim=True), block.se.down.weight,
                                                  block.se.down.bias)), block.se.up.weight, block.se.up.bias))
    y = (y * gate).permute(0, 2, 3, 1)
    y = F.gelu(F.linear(y, block.fc1.weight, block.fc1.bias))
    g = y.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()  # GRN (ConvNeXt V2): spatial L2 norm per channel
    y = (block.grn.gamma * g / (g.mean(-1, keepdim=True) + 1e-6) + 1) * y + block.grn.beta
    y = bn(F.linear(y, block.fc2.weight).permute(0, 3, 1, 2), block.norm2)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.gamma.view(1, -1, 1, 1) * y)


def test_kernel_sizes_must_match_depths():
    with pytest.raises(ValueError, match=r"kernel_sizes\[2\] must be an int or 2 ints \(depths\[2\]\), got \(13,\)"):
        create_model("unireplknet_t", depths=(1, 1, 2, 1), kernel_sizes=(3, 13, (13,), 13))
