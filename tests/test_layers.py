import pytest
import torch
import torch.nn.functional as F
from torch import nn

from largekernel.models.layers import (
    CONV_TYPES,
    DropPath,
    LayerNormChannelsFirst,
    create_conv,
    create_norm,
    layer_class,
    same_padding,
)

_F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _input(dim, channels=4, size=11, batch=2):
    return torch.randn(batch, channels, *(size,) * dim, dtype=torch.float64)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [1, 4, 7])
@pytest.mark.parametrize("conv", ["conv", "fft"])
def test_dense_same_size_matches_torch(conv, kernel_size, dim):
    layer = create_conv(conv, 4, 4, kernel_size, dim=dim, groups=4).double()
    x = _input(dim)
    y = layer(x)
    assert y.shape == x.shape
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    assert layer.backend == ("fft" if conv == "fft" else "auto")
    # torch's own "same" padding is the reference, for odd and even kernels alike.
    ref = _F_CONV[dim](x, layer.weight, layer.bias, padding="same", groups=4)
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("stride", [2, 3])
@pytest.mark.parametrize("kernel_size", [3, 4, 7])
def test_dense_strided_output_size(kernel_size, stride):
    layer = create_conv("conv", 3, 6, kernel_size, dim=2, stride=stride)
    x = torch.randn(1, 3, 17, 16)
    y = layer(x)
    pad = ((stride - 1) + (kernel_size - 1)) // 2  # timm's get_padding, written out
    expected = [(n + 2 * pad - kernel_size) // stride + 1 for n in (17, 16)]
    assert list(y.shape[2:]) == expected
    torch.testing.assert_close(y, F.conv2d(x, layer.weight, layer.bias, stride=stride, padding=pad))


@pytest.mark.parametrize("kernel_size,small,expected", [(7, 3, (3, 3)), (31, 3, (3, 15)), (9, 5, (5, 2)),
                                                         (3, 3, (3, 1)), (2, 3, (2, 1))])
def test_dilated_geometry_and_output(kernel_size, small, expected):
    layer = create_conv("dilated", 4, 4, kernel_size, dim=2, groups=4, small_kernel_size=small)
    k, d = expected
    assert layer.kernel_size == (k, k) and layer.dilation == (d, d)
    x = torch.randn(2, 4, 20, 20)
    ref = F.conv2d(x, layer.weight, layer.bias, padding="same", dilation=d, groups=4)
    torch.testing.assert_close(layer(x), ref)


def test_dense_options_pass_through():
    layer = create_conv("conv", 2, 2, 5, dim=1, bias=False, padding_mode="circular", dtype=torch.float64)
    assert layer.bias is None and layer.padding_mode == "circular" and layer.weight.dtype == torch.float64
    x = torch.randn(1, 2, 9, dtype=torch.float64)
    ref = F.conv1d(F.pad(x, (2, 2), mode="circular"), layer.weight)
    torch.testing.assert_close(layer(x), ref)


def test_same_padding_values():
    assert same_padding(7, dim=2) == (3, 3)
    assert same_padding(4, dim=1) == "same"
    assert same_padding(3, dim=1, dilation=2) == (2,)
    assert same_padding((3, 5), dim=2, stride=2) == (1, 2)


@pytest.mark.parametrize("bad,match", [
    (dict(conv="nope"), "conv must be one of"),
    (dict(groups=3), "groups must be a positive int dividing"),
    (dict(in_channels=0), "in_channels must be a positive int"),
    (dict(kernel_size=0), "kernel_size must be positive"),
    (dict(dim=4), "dim must be 1, 2 or 3"),
])
def test_bad_arguments_raise_value_error(bad, match):
    args = dict(conv="conv", in_channels=4, out_channels=4, kernel_size=3, dim=2)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        create_conv(args.pop("conv"), args.pop("in_channels"), args.pop("out_channels"), args.pop("kernel_size"),
                    **args)


def test_bad_kernel_size_type_raises_type_error():
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 2 ints, got .x."):
        create_conv("conv", 2, 2, "x", dim=2)


def test_fft_rejects_other_backend():
    with pytest.raises(ValueError, match="conv='fft' implies backend='fft'"):
        create_conv("fft", 2, 2, 3, dim=2, backend="direct")


@pytest.mark.parametrize("conv", CONV_TYPES)
def test_every_family_builds_a_same_size_1d_depthwise_layer(conv):
    assert issubclass(layer_class(conv, 1), nn.Module)
    layer = create_conv(conv, 3, 3, 9, dim=1, groups=3)
    x = torch.randn(2, 3, 24)
    assert layer(x).shape == x.shape


def test_missing_family_raises_import_error_naming_it(monkeypatch):
    from largekernel.models import layers

    monkeypatch.setitem(layers._LEARNABLE_TYPES, "dcls", ("largekernel.nn.not_installed", "DclsConv{dim}d"))
    with pytest.raises(ImportError, match=r"conv='dcls' needs the 'dcls' layer family \(largekernel.nn.not_installed\)"):
        create_conv("dcls", 4, 4, 7, dim=2, groups=4)


def test_family_without_that_dimension():
    with pytest.raises(ValueError, match=r"conv='s4d' has no 3-D layer \(S4DConv3d\)"):
        layer_class("s4d", 3)


@pytest.mark.parametrize("box,stride", [(9, 1), (8, 1), (9, 2)])
def test_dcls_same_size_against_torch_conv_of_its_kernel(box, stride):
    from largekernel.nn import DclsConv2d

    layer = create_conv("dcls", 6, 6, box, dim=2, groups=6, stride=stride, kernel_count=5,
                        interpolation="gaussian").double()
    assert isinstance(layer, DclsConv2d) and layer.kernel_count == 5 and layer.interpolation == "gaussian"
    x = _input(2, channels=6, size=13)
    y = layer(x)
    if stride == 1:
        assert y.shape == x.shape
        ref = F.conv2d(x, layer.construct_kernel(), layer.bias, padding="same", groups=6)
    else:
        pad = ((stride - 1) + (box - 1)) // 2
        ref = F.conv2d(x, layer.construct_kernel(), layer.bias, stride=stride, padding=pad, groups=6)
    torch.testing.assert_close(y, ref)


def test_dcls_default_kernel_count():
    assert create_conv("dcls", 4, 4, 17, dim=2, groups=4).kernel_count == 34  # the DCLS paper's ConvNeXt-T
    assert create_conv("dcls", 4, 4, 3, dim=2, groups=4).kernel_count == 6
    assert create_conv("dcls", 4, 4, 2, dim=2, groups=4).kernel_count == 4  # capped at the box's cells
    assert create_conv("dcls", 4, 4, 11, dim=1, groups=4).kernel_count == 11


@pytest.mark.parametrize("conv", ["flexconv", "ckconv"])
def test_continuous_kernels_same_size_against_torch_conv(conv):
    layer = create_conv(conv, 4, 4, 7, dim=2, groups=4, kernel_net_kwargs={"hidden_channels": 8})
    assert type(layer).__name__ == {"flexconv": "FlexConv2d", "ckconv": "CKConv2d"}[conv]
    x = torch.randn(2, 4, 12, 12)
    y = layer(x)
    assert y.shape == x.shape
    ref = F.conv2d(x, layer.construct_kernel(), layer.bias, padding="same", groups=4)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_niff_is_input_sized_and_depthwise():
    from largekernel.nn import NIFFConv2d

    layer = create_conv("niff", 4, 4, 7, dim=2, groups=4)
    assert isinstance(layer, NIFFConv2d)
    x = torch.randn(2, 4, 10, 10)
    assert layer(x).shape == x.shape
    # Circular convolution with a kernel as large as the input: torch's conv on the circularly padded input.
    k = layer.construct_kernel((10, 10))
    ref = F.conv2d(F.pad(x, (4, 5, 4, 5), mode="circular"), k, layer.bias, groups=4)
    torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", ["sgconv", "s4d"])
def test_sequence_kernels_are_bidirectional_and_same_size(conv):
    layer = create_conv(conv, 3, 3, 16, dim=1, groups=3)
    assert layer.bidirectional
    x = torch.randn(2, 3, 30)
    y = layer(x)
    assert y.shape == x.shape
    # An impulse at t0 must reach outputs on both sides of t0.
    impulse = torch.zeros(1, 3, 30)
    impulse[..., 15] = 1.0
    response = layer(impulse) - (layer.bias.view(1, 3, 1) if layer.bias is not None else 0)
    assert response[..., :15].abs().sum() > 0 and response[..., 16:].abs().sum() > 0
    causal = create_conv(conv, 3, 3, 16, dim=1, groups=3, bidirectional=False)
    assert not causal.bidirectional
    with pytest.raises(ValueError, match=f"conv='{conv}' is a depthwise stride-1 layer"):
        create_conv(conv, 3, 6, 16, dim=1, groups=3)


def test_drop_path_is_identity_in_eval_and_unbiased_in_train():
    layer = DropPath(0.25)
    x = torch.ones(20000, 3)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    kept = (y[:, 0] != 0).float()
    assert torch.all((y == 0) | (y == 1 / 0.75))
    assert torch.all(y == y[:, :1])  # whole sample dropped or kept
    assert abs(kept.mean().item() - 0.75) < 0.02
    with pytest.raises(ValueError, match="drop_prob must be in"):
        DropPath(1.0)


def test_layer_norm_channels_first_matches_functional():
    norm = LayerNormChannelsFirst(5, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, 3, 4)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref)
    assert isinstance(create_norm("batch", 5, 2), nn.BatchNorm2d)
    with pytest.raises(ValueError, match="norm must be 'batch' or 'layer', got 'group'"):
        create_norm("group", 5, 2)
