"""Official checkpoints (RepLKNet, ConvNeXt, ConvNeXt-dcls) load into our models and give the official output.

Nothing can be downloaded, so each test writes a state_dict in the official key layout,
with key names built from the official code's module names (DingXiaoH/RepLKNet-pytorch
``replknet.py``; facebookresearch/ConvNeXt and K-H-Ismail/ConvNeXt-dcls
``models/convnext*.py``) and random values, and computes the official network's output
here with ``torch.nn.functional`` (and, for the DCLS convolutions, the official ``dcls``
package with ``version="v0"``, as ConvNeXt-dcls uses it).
"""


import pytest
import torch
import torch.nn.functional as F

from largekernel.models import create_model
from largekernel.models.official import (
    convert_convnext_state_dict,
    convert_replknet_state_dict,
    load_convnext_checkpoint,
    load_replknet_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------- RepLKNet

_DIMS, _DEPTHS, _KERNELS, _SMALL, _CLASSES = (8, 12, 16, 16), (1, 2, 1, 1), (7, 5, 5, 3), 3, 7


def _bn_entries(prefix: str, channels: int) -> dict:
    return {f"{prefix}.weight": torch.rand(channels) + 0.5, f"{prefix}.bias": torch.randn(channels),
            f"{prefix}.running_mean": 0.1 * torch.randn(channels), f"{prefix}.running_var": torch.rand(channels) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv_bn_entries(prefix: str, out_chs: int, in_per_group: int, k: int) -> dict:
    return {f"{prefix}.conv.weight": 0.3 * torch.randn(out_chs, in_per_group, k, k), **_bn_entries(f"{prefix}.bn", out_chs)}


def _official_replknet_state() -> dict:
    """RepLKNet(large_kernel_sizes, layers, channels, small_kernel, dw_ratio=1, ffn_ratio=4) in its own names."""
    c0, sd = _DIMS[0], {}
    sd |= _conv_bn_entries("stem.0", c0, 3, 3)
    sd |= _conv_bn_entries("stem.1", c0, 1, 3)
    sd |= _conv_bn_entries("stem.2", c0, c0, 1)
    sd |= _conv_bn_entries("stem.3", c0, 1, 3)
    for i, (c, depth, k) in enumerate(zip(_DIMS, _DEPTHS, _KERNELS)):
        for j in range(depth):
            lk, ffn = f"stages.{i}.blocks.{2 * j}", f"stages.{i}.blocks.{2 * j + 1}"
            sd |= _bn_entries(f"{lk}.prelkb_bn", c)
            sd |= _conv_bn_entries(f"{lk}.pw1", c, c, 1)
            sd |= _conv_bn_entries(f"{lk}.large_kernel.lkb_origin", c, 1, k)
            sd |= _conv_bn_entries(f"{lk}.large_kernel.small_conv", c, 1, _SMALL)
            sd |= _conv_bn_entries(f"{lk}.pw2", c, c, 1)
            sd |= _bn_entries(f"{ffn}.preffn_bn", c)
            sd |= _conv_bn_entries(f"{ffn}.pw1", 4 * c, c, 1)
            sd |= _conv_bn_entries(f"{ffn}.pw2", c, 4 * c, 1)
        if i < len(_DIMS) - 1:
            nxt = _DIMS[i + 1]
            sd |= _conv_bn_entries(f"transitions.{i}.0", nxt, c, 1)
            sd |= _conv_bn_entries(f"transitions.{i}.1", nxt, 1, 3)
    sd |= _bn_entries("norm", _DIMS[-1])
    sd |= {"head.weight": 0.1 * torch.randn(_CLASSES, _DIMS[-1]), "head.bias": torch.randn(_CLASSES)}
    return sd


def _bn(x, sd, p):
    shape = (1, -1, 1, 1)
    return (x - sd[f"{p}.running_mean"].view(shape)) / torch.sqrt(sd[f"{p}.running_var"].view(shape) + 1e-5) \
        * sd[f"{p}.weight"].view(shape) + sd[f"{p}.bias"].view(shape)


def _conv_bn(x, sd, p, stride=1, relu=False):
    w = sd[f"{p}.conv.weight"]
    groups = x.shape[1] // w.shape[1]
    y = _bn(F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), sd, f"{p}.bn")
    return F.relu(y) if relu else y


def _large_kernel(x, sd, p):
    if f"{p}.lkb_reparam.weight" in sd:
        w = sd[f"{p}.lkb_reparam.weight"]
        return F.conv2d(x, w, sd[f"{p}.lkb_reparam.bias"], 1, w.shape[-1] // 2, 1, x.shape[1])
    return _conv_bn(x, sd, f"{p}.lkb_origin") + _conv_bn(x, sd, f"{p}.small_conv")


def _official_replknet_forward(sd, x):
    """RepLKNet.forward (eval) of the official code, written out."""
    x = _conv_bn(x, sd, "stem.0", stride=2, relu=True)
    x = _conv_bn(x, sd, "stem.1", relu=True)
    x = _conv_bn(x, sd, "stem.2", relu=True)
    x = _conv_bn(x, sd, "stem.3", stride=2, relu=True)
    for i, depth in enumerate(_DEPTHS):
        for j in range(depth):
            lk, ffn = f"stages.{i}.blocks.{2 * j}", f"stages.{i}.blocks.{2 * j + 1}"
            y = _conv_bn(_bn(x, sd, f"{lk}.prelkb_bn"), sd, f"{lk}.pw1", relu=True)
            x = x + _conv_bn(F.relu(_large_kernel(y, sd, f"{lk}.large_kernel")), sd, f"{lk}.pw2")
            y = F.gelu(_conv_bn(_bn(x, sd, f"{ffn}.preffn_bn"), sd, f"{ffn}.pw1"))
            x = x + _conv_bn(y, sd, f"{ffn}.pw2")
        if i < len(_DEPTHS) - 1:
            x = _conv_bn(_conv_bn(x, sd, f"transitions.{i}.0", relu=True), sd, f"transitions.{i}.1", stride=2,
                         relu=True)
    x = _bn(x, sd, "norm").mean(dim=(2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def _merged(sd: dict) -> dict:
    """The official ``structural_reparam()``: fuse_bn on each branch, the small kernel added to the centre."""
    out = {}
    for key, value in sd.items():
        if ".large_kernel." not in key:
            out[key] = value
        elif key.endswith("lkb_origin.conv.weight"):
            p = key.removesuffix(".lkb_origin.conv.weight")
            kernels, biases = [], []
            for branch in ("lkb_origin", "small_conv"):
                bn = f"{p}.{branch}.bn"
                std = torch.sqrt(sd[f"{bn}.running_var"] + 1e-5)
                t = sd[f"{bn}.weight"] / std
                kernels.append(sd[f"{p}.{branch}.conv.weight"] * t.view(-1, 1, 1, 1))
                biases.append(sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * t)
            pad = (kernels[0].shape[-1] - kernels[1].shape[-1]) // 2
            out[f"{p}.lkb_reparam.weight"] = kernels[0] + F.pad(kernels[1], [pad] * 4)
            out[f"{p}.lkb_reparam.bias"] = biases[0] + biases[1]
    return out


def _tiny_replknet(**kwargs):
    return create_model("replknet_31b", num_classes=_CLASSES, dims=_DIMS, depths=_DEPTHS, kernel_sizes=_KERNELS,
                        small_kernel=_SMALL, **kwargs).eval()


def test_replknet_training_checkpoint_gives_the_official_output(tmp_path):
    sd = _official_replknet_state()
    x = torch.randn(2, 3, 40, 40)
    expected = _official_replknet_forward(sd, x)
    # As the official training script saves it: {"model": ...}, DistributedDataParallel's "module." prefix.
    path = tmp_path / "RepLKNet-31B_official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = load_replknet_checkpoint(_tiny_replknet(), path)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    assert "stages.2.downsample.1.conv.weight" in convert_replknet_state_dict(sd)


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_replknet_reparameterised_checkpoint_loads_into_the_baked_model(backend):
    sd = _merged(_official_replknet_state())
    assert not any("lkb_origin" in k for k in sd)
    x = torch.randn(2, 3, 40, 40)
    expected = _official_replknet_forward(sd, x)
    model = load_replknet_checkpoint(_tiny_replknet(conv_kwargs={"backend": backend}), sd)
    large = model.stages[0].blocks[0].large_kernel
    assert type(large).__name__ == "Conv2d" and large.backend == backend and large.kernel_size == (7, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_replknet_checkpoint_errors():
    sd = _official_replknet_state()
    del sd["head.bias"]
    with pytest.raises(RuntimeError, match="Missing key.*head.bias"):
        load_replknet_checkpoint(_tiny_replknet(), sd)
    with pytest.raises(TypeError, match="not a state_dict"):
        load_replknet_checkpoint(_tiny_replknet(), {"weights": [1, 2]})
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        load_replknet_checkpoint(_tiny_replknet(), 3)


# ------------------------------------------------------------------------------------ ConvNeXt(-dcls)

_CN_DIMS, _CN_DEPTHS, _COUNT, _BOX = (8, 12, 16, 16), (1, 2, 1, 1), 5, 17


def _official_convnext_state(dcls: bool) -> dict:
    """ConvNeXt / ConvNeXt_dcls(depths, dims, dcls_kernel_size, dcls_kernel_count) in their own names."""
    sd = {"downsample_layers.0.0.weight": 0.2 * torch.randn(_CN_DIMS[0], 3, 4, 4),
          "downsample_layers.0.0.bias": torch.randn(_CN_DIMS[0]),
          "downsample_layers.0.1.weight": torch.rand(_CN_DIMS[0]) + 0.5,
          "downsample_layers.0.1.bias": torch.randn(_CN_DIMS[0])}
    for i in range(1, 4):
        prev, c = _CN_DIMS[i - 1], _CN_DIMS[i]
        sd |= {f"downsample_layers.{i}.0.weight": torch.rand(prev) + 0.5,
               f"downsample_layers.{i}.0.bias": torch.randn(prev),
               f"downsample_layers.{i}.1.weight": 0.2 * torch.randn(c, prev, 2, 2),
               f"downsample_layers.{i}.1.bias": torch.randn(c)}
    lim = _BOX // 2
    for i, (c, depth) in enumerate(zip(_CN_DIMS, _CN_DEPTHS)):
        positions = (torch.rand(2, c, 1, _COUNT) * 2 - 1) * lim  # one P per stage, stored in every block
        for j in range(depth):
            p = f"stages.{i}.{j}"
            if dcls:
                sd |= {f"{p}.dwconv.weight": torch.randn(c, 1, _COUNT), f"{p}.dwconv.P": positions}
            else:
                sd |= {f"{p}.dwconv.weight": 0.3 * torch.randn(c, 1, 7, 7)}
            sd |= {f"{p}.dwconv.bias": torch.randn(c), f"{p}.norm.weight": torch.rand(c) + 0.5,
                   f"{p}.norm.bias": torch.randn(c), f"{p}.pwconv1.weight": 0.3 * torch.randn(4 * c, c),
                   f"{p}.pwconv1.bias": torch.randn(4 * c), f"{p}.pwconv2.weight": 0.3 * torch.randn(c, 4 * c),
                   f"{p}.pwconv2.bias": torch.randn(c), f"{p}.gamma": torch.rand(c)}
    sd |= {"norm.weight": torch.rand(_CN_DIMS[-1]) + 0.5, "norm.bias": torch.randn(_CN_DIMS[-1]),
           "head.weight": 0.1 * torch.randn(_CLASSES, _CN_DIMS[-1]), "head.bias": torch.randn(_CLASSES)}
    return sd


def _layer_norm_channels_first(x, w, b):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return (x - u) / torch.sqrt(s + 1e-6) * w[:, None, None] + b[:, None, None]


def _official_dwconv(x, sd, p, dcls: bool):
    c = x.shape[1]
    if not dcls:
        return F.conv2d(x, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=3, groups=c)
    from DCLS.construct.modules import Dcls2d

    layer = Dcls2d(c, c, kernel_count=_COUNT, dilated_kernel_size=_BOX, padding=_BOX // 2, groups=c,
                   use_implicit_gemm=True, version="v0")  # as ConvNeXt_dcls's Block builds it
    layer.load_state_dict({k: sd[f"{p}.{k}"] for k in ("weight", "bias", "P")})
    return layer(x)


def _official_convnext_forward(sd, x, dcls: bool):
    """ConvNeXt(_dcls).forward of the official code, written out."""
    for i, depth in enumerate(_CN_DEPTHS):
        d = f"downsample_layers.{i}"
        if i == 0:
            x = F.conv2d(x, sd[f"{d}.0.weight"], sd[f"{d}.0.bias"], stride=4)
            x = _layer_norm_channels_first(x, sd[f"{d}.1.weight"], sd[f"{d}.1.bias"])
        else:
            x = _layer_norm_channels_first(x, sd[f"{d}.0.weight"], sd[f"{d}.0.bias"])
            x = F.conv2d(x, sd[f"{d}.1.weight"], sd[f"{d}.1.bias"], stride=2)
        for j in range(depth):
            p = f"stages.{i}.{j}"
            y = _official_dwconv(x, sd, f"{p}.dwconv", dcls).permute(0, 2, 3, 1)
            y = F.layer_norm(y, (y.shape[-1],), sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, sd[f"{p}.pwconv1.weight"], sd[f"{p}.pwconv1.bias"])),
                         sd[f"{p}.pwconv2.weight"], sd[f"{p}.pwconv2.bias"])
            x = x + (sd[f"{p}.gamma"] * y).permute(0, 3, 1, 2)
    x = F.layer_norm(x.mean([-2, -1]), (x.shape[1],), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("dcls", [True, False], ids=["convnext_dcls", "convnext"])
def test_convnext_checkpoint_gives_the_official_output(dcls):
    sd = _official_convnext_state(dcls)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _official_convnext_forward(sd, x, dcls)
    name, kwargs = ("convnext_tiny_dcls", {"conv_kwargs": {"kernel_count": _COUNT}}) if dcls else ("convnext_tiny", {})
    model = create_model(name, num_classes=_CLASSES, dims=_CN_DIMS, depths=_CN_DEPTHS, **kwargs).eval()
    load_convnext_checkpoint(model, {"model": sd})
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    if dcls:  # positions stay shared by the blocks of a stage; v0's (row, column) rows are ours swapped
        blocks = model.stages[1].blocks
        assert blocks[0].conv_dw.P is blocks[1].conv_dw.P
        torch.testing.assert_close(blocks[1].conv_dw.P.detach(), sd["stages.1.1.dwconv.P"][[1, 0]])
    assert set(convert_convnext_state_dict(sd)) == set(model.state_dict())


def test_convnext_dcls_positions_that_differ_within_a_stage_are_refused():
    sd = _official_convnext_state(dcls=True)
    sd["stages.1.1.dwconv.P"] = sd["stages.1.1.dwconv.P"] + 1.0
    model = create_model("convnext_tiny_dcls", num_classes=_CLASSES, dims=_CN_DIMS, depths=_CN_DEPTHS,
                         conv_kwargs={"kernel_count": _COUNT})
    with pytest.raises(ValueError, match=r"stages.1.blocks.0.conv_dw.P', 'stages.1.blocks.1.conv_dw.P'\] are one "
                                         r"shared tensor"):
        load_convnext_checkpoint(model, sd)
