"""Re-parameterised layers (RepLK, dilated re-param, SLaK) against their unmerged definition.

The reference is written here: every branch is a separate ``torch.nn.functional.convNd``
with the geometry the papers give, followed by the BatchNorm formula (batch statistics in
training, running statistics in eval), and the branches are summed.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import largekernel
from largekernel.models.layers import create_conv
from largekernel.nn import Conv1d, Conv2d, Conv3d
from largekernel.nn.reparam import (
    DilatedReparamConv1d,
    DilatedReparamConv2d,
    DilatedReparamConv3d,
    RepLKConv1d,
    RepLKConv2d,
    RepLKConv3d,
    SLaKConv1d,
    SLaKConv2d,
    SLaKConv3d,
)

pytestmark = pytest.mark.usefixtures("one_thread")

_F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_LAYERS = {("replk", 1): RepLKConv1d, ("replk", 2): RepLKConv2d, ("replk", 3): RepLKConv3d,
           ("dilated_reparam", 1): DilatedReparamConv1d, ("dilated_reparam", 2): DilatedReparamConv2d,
           ("dilated_reparam", 3): DilatedReparamConv3d,
           ("slak", 1): SLaKConv1d, ("slak", 2): SLaKConv2d, ("slak", 3): SLaKConv3d}
# Sizes kept small for 3-D: kernel 7 (dilated default: 5x5 + 3x3 d2 + 3x3 d3), small kernel 3.
_KERNEL = {1: 13, 2: 9, 3: 7}


def _branch_geometry(family: str, dim: int, kernel: int, small: int) -> list[tuple[str, tuple, tuple]]:
    """(prefix of the branch's conv/BN names, kernel size, dilation) of each branch, from the papers."""
    one = (1,) * dim
    if family == "replk":  # RepLKNet: large kernel + small kernel
        return [("lkb_origin.", (kernel,) * dim, one), ("small_conv.", (small,) * dim, one)]
    if family == "dilated_reparam":  # UniRepLKNet's DilatedReparamBlock defaults
        pairs = {13: [(5, 1), (7, 2), (3, 3), (3, 4), (3, 5)], 9: [(5, 1), (5, 2), (3, 3), (3, 4)],
                 7: [(5, 1), (3, 2), (3, 3)]}[kernel]
        return [("lk_origin", (kernel,) * dim, one)] + [(f"dil_conv_k{k}_{r}", (k,) * dim, (r,) * dim)
                                                         for k, r in pairs]
    # SLaK: one strip per axis, long along it and `small` wide across, plus a small kernel
    strips = [(f"LoRA{a + 1}.", tuple(kernel if i == a else small for i in range(dim)), one) for a in range(dim)]
    return strips + [("small_conv.", (small,) * dim, one)]


def _conv_and_bn(layer: nn.Module, prefix: str) -> tuple[nn.Module, nn.Module]:
    if prefix.endswith("."):  # nn.Sequential(conv, bn), as RepLKNet's and SLaK's conv_bn
        return layer.get_submodule(prefix + "conv"), layer.get_submodule(prefix + "bn")
    return layer.get_submodule(prefix), layer.get_submodule(prefix.replace("dil_conv", "dil_bn")
                                                            .replace("lk_origin", "origin_bn"))


def _reference(layer, x, geometry, *, training: bool, stride=1, padding_mode="zeros"):
    """Sum over branches of BN(F.convNd(x)); BN written out (biased batch variance while training)."""
    dim = x.dim() - 2
    out = 0
    for prefix, kernel, dilation in geometry:
        conv, bn = _conv_and_bn(layer, prefix)
        assert tuple(conv.weight.shape[2:]) == kernel and tuple(conv.dilation) == dilation
        pad = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        if padding_mode == "zeros":
            y = _F_CONV[dim](x, conv.weight, None, stride, pad, dilation, layer.groups)
        else:
            x_pad = F.pad(x, [p for p in reversed(pad) for _ in range(2)], mode=padding_mode)
            y = _F_CONV[dim](x_pad, conv.weight, None, stride, 0, dilation, layer.groups)
        out = out + _batch_norm(y, bn, training)
    return out if layer.bias is None else out + layer.bias.view((1, -1) + (1,) * dim)


def _batch_norm(y, bn, training: bool):
    """``gamma (y - mean) / sqrt(var + eps) + beta``: batch mean and biased variance while training, else the
    running ones."""
    axes = [0] + list(range(2, y.dim()))
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if training:
        mean, var = y.mean(axes), y.var(axes, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (y - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _randomise_bns(layer):
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
@pytest.mark.parametrize("groups", ["depthwise", 2])
def test_train_then_eval_matches_separate_branches(family, dim, groups):
    channels, kernel, small = 4, _KERNEL[dim], 3
    g = channels if groups == "depthwise" else groups
    opts = {} if family == "dilated_reparam" else {"small_kernel": small}
    layer = _LAYERS[family, dim](channels, 6 if g == 2 else channels, kernel, groups=g, **opts).double()
    geometry = _branch_geometry(family, dim, kernel, small)
    assert len(layer.branches()) == len(geometry)
    _randomise_bns(layer)
    with torch.no_grad():
        layer.bias.normal_()
    size = 11 if dim < 3 else 9
    for _ in range(2):  # training steps: batch statistics, running statistics updated per branch
        x = torch.randn(3, channels, *(size,) * dim, dtype=torch.float64)
        before = copy.deepcopy(layer)
        y = layer(x)
        torch.testing.assert_close(y, _reference(before, x, geometry, training=True))
    # Running mean of each branch's BN: momentum 0.1 towards the mean of that branch's own output.
    conv, bn = _conv_and_bn(layer, geometry[0][0])
    conv_before, bn_before = _conv_and_bn(before, geometry[0][0])
    pad = [k // 2 for k in geometry[0][1]]
    branch = _F_CONV[dim](x, conv_before.weight, None, 1, pad, 1, g)
    expected = 0.9 * bn_before.running_mean + 0.1 * branch.mean([0] + list(range(2, branch.dim())))
    torch.testing.assert_close(bn.running_mean, expected)

    layer.eval()
    x = torch.randn(2, channels, *(size,) * dim, dtype=torch.float64)
    ref = _reference(layer, x, geometry, training=False)
    torch.testing.assert_close(layer(x), ref)
    kernel_merged = layer.construct_kernel()
    assert tuple(kernel_merged.shape) == (layer.out_channels, channels // g) + (kernel,) * dim
    rest = ref - _F_CONV[dim](x, kernel_merged, None, 1, kernel // 2, 1, g)  # what is left: the merged bias
    flat = rest.transpose(0, 1).reshape(rest.shape[1], -1)
    torch.testing.assert_close(flat, flat[:, :1].expand_as(flat))
    baked = layer.bake()
    assert type(baked) is (Conv1d, Conv2d, Conv3d)[dim - 1] and baked.backend == layer.backend
    torch.testing.assert_close(baked(x), ref)


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_backends_strided_and_padding_modes(backend):
    geometry = _branch_geometry("replk", 2, 15, 5)
    layer = RepLKConv2d(6, 6, 15, stride=2, groups=6, bias=False, padding_mode="circular", small_kernel=5,
                        backend=backend).double()
    assert all(conv.backend == backend for conv, _ in layer.branches())
    _randomise_bns(layer)
    x = torch.randn(2, 6, 20, 17, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x, geometry, training=True, stride=2,
                                                    padding_mode="circular"))
    layer.eval()
    ref = _reference(layer, x, geometry, training=False, stride=2, padding_mode="circular")
    assert layer(x).shape == (2, 6, 10, 9)
    torch.testing.assert_close(layer(x), ref)
    baked = layer.bake()
    assert baked.backend == backend and baked.stride == (2, 2) and baked.padding_mode == "circular"
    torch.testing.assert_close(baked(x), ref)
    layer.backend = "direct"
    assert {conv.backend for conv, _ in layer.branches()} == {"direct"}


def test_explicit_dilated_branches_and_anisotropic_kernels():
    layer = DilatedReparamConv2d(3, 3, (9, 7), groups=3, dilated_branches=[(3, 3), (5, 1)]).double().eval()
    geometry = [("lk_origin", (9, 7), (1, 1)), ("dil_conv_k3_3", (3, 3), (3, 3)), ("dil_conv_k5_1", (5, 5), (1, 1))]
    _randomise_bns(layer)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x, geometry, training=False))
    slak = SLaKConv2d(3, 3, (11, 7), groups=3, small_kernel=3).double().eval()
    geometry = [("LoRA1.", (11, 3), (1, 1)), ("LoRA2.", (3, 7), (1, 1)), ("small_conv.", (3, 3), (1, 1))]
    _randomise_bns(slak)
    torch.testing.assert_close(slak.bake()(x), _reference(slak, x, geometry, training=False))
    # SLaK without a small kernel when the strips are already that wide; RepLK without one (RepLKNet-XL).
    assert [n for n, _ in SLaKConv1d(2, 2, 5, small_kernel=5).named_children()] == ["LoRA1"]
    assert [n for n, _ in RepLKConv1d(2, 2, 5, small_kernel=None).named_children()] == ["lkb_origin"]


def test_eval_gradients_flow_to_every_branch_and_double_backward():
    layer = DilatedReparamConv1d(2, 2, 7, groups=2).double().eval()
    _randomise_bns(layer)
    x = torch.randn(2, 2, 12, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    params = tuple(layer.parameters())
    # Gradients equal those of the unmerged reference.
    geometry = _branch_geometry("dilated_reparam", 1, 7, 3)
    ref_grads = torch.autograd.grad(_reference(layer, x, geometry, training=False).square().sum(), params)
    for p, g in zip(params, ref_grads):
        torch.testing.assert_close(p.grad, g)
    assert torch.autograd.gradgradcheck(lambda inp: layer(inp), (x,))


def test_factory_convert_and_bake_the_whole_model():
    for conv in ("replk", "dilated_reparam", "slak"):
        layer = create_conv(conv, 4, 4, 7, dim=2, groups=4, small_kernel=3) if conv != "dilated_reparam" else \
            create_conv(conv, 4, 4, 7, dim=2, groups=4)
        assert isinstance(layer, _LAYERS[conv, 2]) and layer.bias is not None
        assert layer(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 8, 9, padding=4, groups=8))
    x = torch.randn(2, 3, 12, 12)
    _, report = largekernel.convert(net, "replk", report=True, small_kernel=3)
    assert [r.name for r in report.replaced] == ["1", "3"]
    assert isinstance(net[1], RepLKConv2d) and net[3].kernel_size == (9, 9) and net[1].small_kernel == (3, 3)
    net.train()
    net(x)  # one step of running statistics
    net.eval()
    with torch.no_grad():
        expected = net(x)
        largekernel.bake(net)
    assert type(net[1]) is Conv2d and type(net[3]) is Conv2d and net[1].bias is not None
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_convert_inside_a_reparam_layer_keeps_the_merge_exact():
    layer = RepLKConv2d(4, 4, 9, groups=4, small_kernel=3).eval()
    _randomise_bns(layer)
    x = torch.randn(2, 4, 16, 16)
    geometry = _branch_geometry("replk", 2, 9, 3)
    ref = _reference(layer, x, geometry, training=False)
    # convert() swaps the depthwise branch convolutions themselves: the FFT copies give the same output.
    largekernel.convert(layer, "fft")
    assert {conv.backend for conv, _ in layer.branches()} == {"fft"} and layer.backend == "fft"
    torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-4)
    assert layer.bake().backend == "fft"
    # A learnable-kernel branch merges through its constructed kernel.
    largekernel.convert(layer, "dcls", "lkb_origin.conv", kernel_count=6)
    (conv, bn), (small_conv, small_bn) = layer.branches()
    large = _batch_norm(F.conv2d(x, conv.construct_kernel(), None, padding=4, groups=4), bn, training=False)
    small = _batch_norm(F.conv2d(x, small_conv.weight, None, padding=1, groups=4), small_bn, training=False)
    torch.testing.assert_close(layer(x), large + small + layer.bias.view(1, -1, 1, 1), rtol=1e-4, atol=1e-4)


def _layer_2d(family: str) -> tuple[nn.Module, list]:
    """A depthwise 2-D layer of ``family`` in float64 with random BatchNorm parameters and running statistics,
    and its branches' geometry."""
    kernel, small = _KERNEL[2], 3
    opts = {} if family == "dilated_reparam" else {"small_kernel": small}
    layer = _LAYERS[family, 2](4, 4, kernel, groups=4, **opts).double()
    _randomise_bns(layer)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return layer, _branch_geometry(family, 2, kernel, small)


@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
def test_eval_without_running_statistics_normalises_each_batch_like_torch(family):
    """BatchNorms that keep no running statistics (``track_running_stats=False``, which
    ``torch.func.replace_all_batch_norm_modules_`` sets for ``vmap``) normalise every batch by its own statistics
    in eval too, as torch's BatchNorm does: the layer runs its branches (it merged them, a TypeError on the missing
    statistics), and merging them into one kernel refuses, naming the BatchNorm."""
    layer, geometry = _layer_2d(family)
    torch.func.replace_all_batch_norm_modules_(layer)
    layer.eval()
    x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x, geometry, training=True))
    first_bn = geometry[0][0] + "bn" if geometry[0][0].endswith(".") else "origin_bn"
    for merge in (layer.bake, layer.construct_kernel):
        with pytest.raises(ValueError, match=f"BatchNorm '{first_bn}' keeps no running statistics"):
            merge()


@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
def test_hooks_inside_the_layer_run_in_eval_as_in_training(family):
    """A forward hook that doubles the large branch's convolution, and one on the first branch's container (its
    BatchNorm where it has none) that records its output: in eval, where the layer merges its branches without
    calling them, they run too (they ran in training only; the container's never): the output is the reference's
    with the large branch's weight doubled, in eval and in training."""
    layer, geometry = _layer_2d(family)
    reference = copy.deepcopy(layer)
    _conv_and_bn(layer, geometry[0][0])[0].register_forward_hook(lambda module, args, out: 2.0 * out)
    with torch.no_grad():
        _conv_and_bn(reference, geometry[0][0])[0].weight.mul_(2.0)
    first = geometry[0][0]
    recorded = []
    watched = layer.get_submodule(first[:-1]) if first.endswith(".") else _conv_and_bn(layer, first)[1]
    watched.register_forward_hook(lambda module, args, out: recorded.append(out))
    for training in (False, True):  # eval first: training updates the layer's running statistics
        layer.train(training)
        x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
        torch.testing.assert_close(layer(x), _reference(reference, x, geometry, training=training))
    assert len(recorded) == 2


class _Doubled(nn.Conv2d):
    """A user's convolution whose forward is not its weight's: twice it."""

    def forward(self, input):
        return 2.0 * super().forward(input)


class _Scaled(nn.Module):
    """A user's wrapper (as a LoRA or a quantization wrapper is): its own parameter, no ``weight``."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, input):
        return self.scale * self.conv(input)


def _as_doubled(conv: nn.Module) -> nn.Module:
    doubled = _Doubled(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                       dilation=conv.dilation, groups=conv.groups, bias=False, dtype=torch.float64)
    doubled.load_state_dict(conv.state_dict())
    return doubled


@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
@pytest.mark.parametrize("replace", [_as_doubled, _Scaled], ids=["subclass", "wrapper"])
def test_a_branch_replaced_by_the_users_module_runs_as_called(family, replace):
    """The large branch's convolution replaced by a user's module that doubles it: the layer's output in eval is the
    reference's with that branch's weight doubled (the merge read the replacement's weight, or failed on a wrapper
    without one), as in training; merging into one kernel refuses, naming the branch and its type."""
    layer, geometry = _layer_2d(family)
    reference = copy.deepcopy(layer)
    name = geometry[0][0] + "conv" if geometry[0][0].endswith(".") else geometry[0][0]
    layer.set_submodule(name, replace(layer.get_submodule(name)))
    with torch.no_grad():
        _conv_and_bn(reference, geometry[0][0])[0].weight.mul_(2.0)
    for training in (False, True):
        layer.train(training)
        x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
        torch.testing.assert_close(layer(x), _reference(reference, x, geometry, training=training))
    layer.eval()
    for merge in (layer.bake, layer.construct_kernel):
        with pytest.raises(ValueError, match=f"{name!r} is a {type(layer.get_submodule(name)).__name__}, whose "
                                             f"forward the merge does not reproduce"):
            merge()


@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
def test_parametrized_branches_and_sync_batch_norms_still_merge(family):
    """What the merge does reproduce still bakes to the eval output: a branch under torch's weight norm
    parametrization (its weight computed on read), and the SyncBatchNorms ``convert_sync_batchnorm`` puts in place
    of the BatchNorms."""
    layer, geometry = _layer_2d(family)
    conv = _conv_and_bn(layer, geometry[-1][0])[0]
    nn.utils.parametrizations.weight_norm(conv)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(1.5)  # the norms: the weight is not the one before
    layer = nn.SyncBatchNorm.convert_sync_batchnorm(layer).eval()
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in layer.modules()) == len(geometry)
    x = torch.randn(3, 4, 11, 11, dtype=torch.float64)
    expected = _reference(layer, x, geometry, training=False)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.bake()(x), expected)


@pytest.mark.parametrize("make,match", [
    (lambda: RepLKConv2d(4, 4, 8, groups=4), r"kernel_size must be odd .* got \(8, 8\)"),
    (lambda: RepLKConv2d(4, 4, 5, groups=4, small_kernel=7), r"branch small_conv spans \(7, 7\)"),
    (lambda: RepLKConv2d(4, 4, 5, dilation=2), "dilation must be 1"),
    (lambda: RepLKConv2d(4, 4, 5, padding=1), r"padding must be None .* kernel_size // 2 = \(2, 2\)"),
    (lambda: RepLKConv2d(4, 4, 5, stride=2, padding="same"), "padding must be None"),
    (lambda: RepLKConv2d(4, 4, 5, groups=3), "groups must divide"),
    (lambda: RepLKConv2d(4, 4, 5, backend="gpu"), "backend must be one of"),
    (lambda: DilatedReparamConv2d(4, 4, 21), r"default branches exist for kernel_size in \[5, 7, 9"),
    (lambda: DilatedReparamConv2d(4, 4, 9, dilated_branches=[(3, 2), (3, 2)]), "must not repeat"),
    (lambda: DilatedReparamConv2d(4, 4, 9, dilated_branches=[(2, 3)]), r"spans \(4, 4\): needs an odd extent"),
    (lambda: DilatedReparamConv2d(4, 4, 9, dilated_branches=[3]), r"\(kernel, dilation\) pairs"),
    (lambda: SLaKConv2d(4, 4, (9, 3), small_kernel=5), "small_kernel must be at most every kernel_size"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("family", ["replk", "dilated_reparam", "slak"])
def test_unbatched_input_is_a_batch_of_one_as_in_torchs_convolutions(family):
    """``(C, *spatial)`` input, as torch's convolutions take it (it was refused): the written-out reference on a
    batch of one, squeezed, in training (the BatchNorms on that sample's statistics, their running statistics
    updated from it) and in eval; the gradient reaches the input in its shape."""
    dim, channels, kernel, small = 2, 4, _KERNEL[2], 3
    opts = {} if family == "dilated_reparam" else {"small_kernel": small}
    layer = _LAYERS[family, dim](channels, channels, kernel, groups=channels, **opts).double()
    geometry = _branch_geometry(family, dim, kernel, small)
    _randomise_bns(layer)
    x = torch.randn(channels, 11, 10, dtype=torch.float64, requires_grad=True)
    before = copy.deepcopy(layer)
    y = layer(x)
    assert y.shape == (channels, 11, 10)
    torch.testing.assert_close(y, _reference(before, x[None], geometry, training=True)[0])
    prefix, size, _ = geometry[0]
    conv_before, bn_before = _conv_and_bn(before, prefix)
    branch = F.conv2d(x[None].detach(), conv_before.weight, None, 1, [k // 2 for k in size], 1, channels)
    torch.testing.assert_close(_conv_and_bn(layer, prefix)[1].running_mean,
                               0.9 * bn_before.running_mean + 0.1 * branch.mean((0, 2, 3)))
    y.square().sum().backward()
    assert x.grad.shape == x.shape
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x[None], geometry, training=False)[0])


def test_input_must_have_the_right_dimensions_and_channels():
    layer = RepLKConv2d(4, 4, 5, groups=4)
    assert RepLKConv2d(4, 4, 5, padding=2)(torch.randn(1, 4, 6, 6)).shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"\(batch, channels, \*spatial\) or \(channels, \*spatial\) with 2 spatial "
                                         r"dims for RepLKConv2d, got shape \(6, 6\)"):
        layer(torch.randn(6, 6))
    with pytest.raises(ValueError, match=r"expects 4 input channels, got input of shape \(1, 3, 6, 6\)"):
        layer(torch.randn(1, 3, 6, 6))