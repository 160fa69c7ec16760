"""RepLKNet: the paper's sizes and parameter counts, the large-kernel choice, the seed-003 FFT swap."""

import pytest
import torch

import largekernel
from largekernel.models import create_model
from largekernel.nn import Conv2d
from largekernel.nn.reparam import RepLKConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **kwargs):
    with torch.device("meta"):  # shapes only: counting 335M parameters costs nothing
        return create_model(name, **kwargs)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn(cin: int, cout: int, k: int, depthwise: bool = False) -> int:
    return cout * (1 if depthwise else cin) * k * k + 2 * cout


def _replknet_params(dims, depths, kernels, small, dw_ratio=1.0, classes=1000) -> int:
    """The official RepLKNet's parameters, layer by layer (replknet.py)."""
    c0 = dims[0]
    n = _conv_bn(3, c0, 3) + _conv_bn(c0, c0, 3, True) + _conv_bn(c0, c0, 1) + _conv_bn(c0, c0, 3, True)
    for i, (c, depth, k) in enumerate(zip(dims, depths, kernels)):
        dw = int(c * dw_ratio)
        large = dw * k * k + 2 * dw + (dw * small * small + 2 * dw if small else 0)
        replk = 2 * c + _conv_bn(c, dw, 1) + large + _conv_bn(dw, c, 1)
        ffn = 2 * c + _conv_bn(c, 4 * c, 1) + _conv_bn(4 * c, c, 1)
        n += depth * (replk + ffn)
        if i < len(dims) - 1:
            n += _conv_bn(c, dims[i + 1], 1) + _conv_bn(dims[i + 1], dims[i + 1], 3, True)
    return n + 2 * dims[-1] + dims[-1] * classes + classes


@pytest.mark.parametrize("name,published,dims,kernels,small,dw_ratio", [
    ("replknet_31b", 79, (128, 256, 512, 1024), (31, 29, 27, 13), 5, 1.0),
    ("replknet_31l", 172, (192, 384, 768, 1536), (31, 29, 27, 13), 5, 1.0),
    ("replknet_xl", 335, (256, 512, 1024, 2048), (27, 27, 27, 13), None, 1.5),
])
def test_paper_sizes_and_parameter_counts(name, published, dims, kernels, small, dw_ratio):
    model = _meta(name)
    n = _count(model)
    assert n == _replknet_params(dims, (2, 2, 18, 2), kernels, small, dw_ratio)
    assert n // 10**6 == published  # Ding et al. 2022 (Tables 6 and 8) print whole millions, truncated
    for stage, k, c in zip(model.stages, kernels, dims):
        assert len(stage.blocks) == (36 if c == dims[2] else 4)
        large = stage.blocks[0].large_kernel
        assert isinstance(large, RepLKConv2d) and large.kernel_size == (k, k) and large.bias is None
        assert large.small_kernel == (None if small is None else (small, small))
        assert large.in_channels == large.groups == int(c * dw_ratio)


def test_large_kernel_family_and_fft_backend():
    tiny = dict(dims=(8, 8, 8, 8), depths=(1, 1, 1, 1), num_classes=3)
    fft = create_model("replknet_31b", conv="fft", **tiny)
    large = fft.stages[0].blocks[0].large_kernel
    assert type(large) is Conv2d and large.backend == "fft" and large.bias is not None
    reparam = create_model("replknet_31b", conv_kwargs={"backend": "fft"}, **tiny)
    assert {c.backend for c, _ in reparam.stages[3].blocks[0].large_kernel.branches()} == {"fft"}
    dilated = create_model("replknet_31b", conv="dilated_reparam", kernel_sizes=(13, 13, 13, 13), **tiny)
    assert type(dilated.stages[0].blocks[0].large_kernel).__name__ == "DilatedReparamConv2d"
    with pytest.raises(ValueError, match="depths, dims and kernel_sizes must have the same length"):
        create_model("replknet_31b", depths=(1, 1, 1))


def test_fft_swap_and_bake_keep_the_output():
    """Seed 003's experiment on a small RepLKNet: large kernels by FFT, merged by bake, same output."""
    model = create_model("replknet_31b", dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_classes=4).double()
    model.train()
    model(torch.randn(4, 3, 64, 64, dtype=torch.float64))  # running statistics away from their init
    model.eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        largekernel.bake(model)
        large = [m for n, m in model.named_modules() if n.endswith("large_kernel")]
        assert len(large) == 4 and all(type(m) is Conv2d for m in large)
        assert [m.kernel_size for m in large] == [(31, 31), (29, 29), (27, 27), (13, 13)]
        largekernel.convert(model, "fft", lambda name, m: name.endswith("large_kernel"))
        assert {m.backend for n, m in model.named_modules() if n.endswith("large_kernel")} == {"fft"}
        torch.testing.assert_close(model(x), expected)
