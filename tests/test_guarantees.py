"""torch's guarantees, checked on every family and path: batch independence, double backward, autocast, memory
format. References: the unperturbed run (bit for bit), torch's own convolution, float64 runs."""

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradgradcheck
from torch.nn.utils import prune

import largekernel.nn as lnn
from largekernel.functional import fft_conv, planner_options
from largekernel.models import create_model

# ----------------------------------------------------------------------------- batch independence


def _layers(backend: str) -> dict:
    """One layer per family at a size where the planner's defaults take the FFT path (large kernels), plus a small
    dense kernel (direct path under "auto")."""
    torch.manual_seed(0)
    return {
        "Conv2d-large": lnn.Conv2d(6, 6, 13, padding=6, groups=6, backend=backend),
        "Conv2d-small": lnn.Conv2d(6, 4, 3, padding=1, backend=backend),
        "Conv3d": lnn.Conv3d(4, 4, 5, padding=2, groups=2, backend=backend),
        "DclsConv2d": lnn.DclsConv2d(6, 6, kernel_count=9, dilated_kernel_size=15, padding=7, groups=6,
                                     backend=backend),
        "NIFFConv2d": lnn.NIFFConv2d(6),
        "FlexConv2d": lnn.FlexConv2d(6, 6, kernel_size=15, backend=backend),
        "SGConv1d": lnn.SGConv1d(6, kernel_size=64, backend=backend),
    }


def _input(name: str, batch: int, device: str) -> torch.Tensor:
    if name == "Conv3d":
        return torch.randn(batch, 4, 8, 8, 8, device=device)
    if name == "SGConv1d":
        return torch.randn(batch, 6, 64, device=device)
    return torch.randn(batch, 6, 18, 18, device=device)


def _run(layer, x):
    x = x.clone().requires_grad_()
    y = layer(x)
    (grad,) = torch.autograd.grad(y, x, torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y))
    return y.detach(), grad


@pytest.mark.parametrize("backend", ["auto", "direct", "fft"])
@pytest.mark.parametrize("packed", [True, False])
@settings(max_examples=6)
@given(name=st.sampled_from(list(_layers("auto"))), batch=st.integers(2, 4), victim=st.integers(0, 3),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e30]),
       where=st.floats(0, 1))
def test_a_sample_never_changes_another(backend, packed, name, batch, victim, value, where, device):
    """NaN, infinities or 1e30-scale values in one sample leave every other sample's output and input gradient
    bit-identical to the unperturbed run, on every path (within the sample the FFT spreads them)."""
    layer = _layers(backend)[name].to(device)
    x = _input(name, batch, device)
    victim %= batch
    with planner_options(packed=packed):
        clean_y, clean_g = _run(layer, x)
        perturbed = x.clone()
        flat = perturbed[victim].view(-1)
        if value == 1e30:
            perturbed[victim] *= 1e30
        else:
            flat[int(where * (flat.numel() - 1))] = value
        y, g = _run(layer, perturbed)
    others = [b for b in range(batch) if b != victim]
    assert torch.equal(y[others], clean_y[others]), f"{name}: another sample's output changed"
    assert torch.equal(g[others], clean_g[others]), f"{name}: another sample's input gradient changed"


# ----------------------------------------------------------------------------- torch.func and forward-mode AD

def _transform_layers() -> dict:
    """Every family, each on the path that its own autograd Functions take (the FFT product, DCLS's separable
    construction, S4D's Vandermonde kernel, FNet's mixing), and the reparameterised ones with torch's batch-norm
    remedy for torch.func (``replace_all_batch_norm_modules_``: their batch norms, like torch's, update running
    statistics in place while training)."""
    torch.manual_seed(0)
    layers = {
        "Conv2d-fft-depthwise": (lnn.Conv2d(4, 4, 9, padding=4, groups=4, backend="fft"), (3, 4, 12, 12)),
        "Conv2d-fft-strided": (lnn.Conv2d(4, 6, 9, stride=2, padding=3, groups=2, backend="fft"), (3, 4, 12, 12)),
        "Conv1d-fft-circular": (lnn.Conv1d(4, 4, 15, padding=7, padding_mode="circular", backend="fft"), (3, 4, 20)),
        "Conv3d-fft": (lnn.Conv3d(2, 2, 5, padding=2, backend="fft"), (3, 2, 6, 6, 6)),
        "DclsConv2d-bilinear": (lnn.DclsConv2d(4, 4, 5, 9, padding=4, groups=4, backend="fft"), (3, 4, 12, 12)),
        "DclsConv2d-gaussian": (lnn.DclsConv2d(4, 4, 5, 9, padding=4, groups=4, interpolation="gaussian"),
                                (3, 4, 12, 12)),
        "CKConv2d": (lnn.CKConv2d(4, 4, 9, groups=4, backend="fft"), (3, 4, 12, 12)),
        "FlexConv2d": (lnn.FlexConv2d(4, 4, 9, mask_init=0.3, backend="fft"), (3, 4, 12, 12)),
        "NIFFConv2d": (lnn.NIFFConv2d(4, 4), (3, 4, 12, 12)),
        "SGConv1d": (lnn.SGConv1d(4, kernel_size=40, kernel_dim=8), (3, 4, 40)),
        "S4DConv1d": (lnn.S4DConv1d(4, kernel_size=40, d_state=8), (3, 4, 40)),
        "SGConv2d": (lnn.SGConv2d(4, 4, 9, kernel_dim=4), (3, 4, 12, 12)),
        "RepLKConv2d": (lnn.RepLKConv2d(4, 4, 13, groups=4, backend="fft"), (3, 4, 14, 14)),
        "SLaKConv2d": (lnn.SLaKConv2d(4, 4, 13, groups=4, backend="fft"), (3, 4, 14, 14)),
        "DilatedReparamConv2d": (lnn.DilatedReparamConv2d(4, 4, 9, groups=4, backend="fft"), (3, 4, 12, 12)),
        "FourierMix": (lnn.FourierMix(), (3, 10, 8)),
    }
    for layer, _ in layers.values():
        torch.func.replace_all_batch_norm_modules_(layer)
    return layers


def _close(got, expected, name):
    for key, e in expected.items():
        torch.testing.assert_close(got[key], e, rtol=1e-4, atol=1e-5 * max(e.abs().max().item(), 1.0),
                                   msg=lambda m: f"{name}, {key}: {m}")


def _assert_per_sample_gradients(layer: nn.Module, x: torch.Tensor, name: str, compile=None) -> None:
    """``vmap(grad(...))`` over the batch ``x`` (the per-sample gradients of DP-SGD and influence functions, with
    ``functional_call``), through ``compile`` where given: each sample's gradients in every parameter and its input
    equal a separate eager autograd backward on that sample alone."""
    weights = torch.randn_like(layer(x[:1])[0])  # a fixed linear loss, so that every gradient is non-trivial
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def loss(params, sample):
        return (torch.func.functional_call(layer, params, (sample.unsqueeze(0),))[0] * weights).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, 0))
    grads, input_grads = (per_sample if compile is None else compile(per_sample))(params, x)
    for i in range(x.shape[0]):
        sample = x[i:i + 1].clone().requires_grad_()
        expected = torch.autograd.grad((layer(sample)[0] * weights).sum(), [sample, *layer.parameters()])
        _close({"input": input_grads[i], **{n: g[i] for n, g in grads.items()}},
               {"input": expected[0][0], **dict(zip(params, expected[1:]))}, f"{name}, sample {i}")


@pytest.mark.parametrize("name", list(_transform_layers()))
def test_per_sample_gradients_by_vmap_and_grad(name):
    """Per-sample gradients by ``vmap(grad(...))`` (:func:`_assert_per_sample_gradients`), every operation batched
    by a rule of torch's; ``vmap`` of the forward equals the calls on each sample."""
    layer, shape = _transform_layers()[name]
    x = torch.randn(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_per_sample_gradients(layer, x, name)
    # every operation batched by a rule, none run sample by sample (torch warns of "a performance drop" then)
    assert not [w for w in caught if "batching rule" in str(w.message)], [str(w.message) for w in caught]
    batched = torch.func.vmap(lambda sample: layer(sample.unsqueeze(0))[0])(x)
    _close({"output": batched}, {"output": torch.cat([layer(x[i:i + 1]) for i in range(shape[0])]).detach()}, name)


@pytest.mark.parametrize("name", list(_transform_layers()))
def test_compiled_per_sample_gradients(name):
    """``torch.compile(vmap(grad(...)))`` in one graph (``fullgraph=True``: Dynamo traces the transforms and the
    layer, AOTAutograd records the graphs that inductor would compile) gives eager autograd's per-sample
    gradients. (The library's opaque operators, which define no batching rule, give way to the transforms'
    routes there.)"""
    layer, shape = _transform_layers()[name]
    torch.compiler.reset()
    _assert_per_sample_gradients(layer, torch.randn(shape), name,
                                 lambda f: torch.compile(f, backend="aot_eager", fullgraph=True))


def test_inductor_compiled_per_sample_gradients():
    """Inductor's code for ``vmap(grad(...))``: a strided, grouped FFT convolution (its decimated spectrum) and
    NIFF (its symmetrised filter), whose index selections take advanced indexing there: inductor compiles
    ``index_select``'s backward on a gradient batched by ``vmap`` wrongly on torch 2.13 (each sample got the sum
    of all samples' gradients)."""
    torch.manual_seed(0)
    model = nn.Sequential(lnn.Conv1d(4, 6, 9, stride=2, padding=3, groups=2, backend="fft"), nn.GELU(),
                          lnn.NIFFConv1d(6, 4))
    torch.compiler.reset()
    _assert_per_sample_gradients(model, torch.randn(3, 4, 24), "Conv1d-fft-strided, NIFFConv1d",
                                 lambda f: torch.compile(f, backend="inductor", fullgraph=True))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name", list(_transform_layers()))
def test_activation_checkpointing_gives_eager_gradients(name, reentrant):
    """``torch.utils.checkpoint`` (its forward without saved activations, then the forward again in the backward;
    the reentrant form runs the first one without autograd, where the layers keep their kernel for the next call):
    over two steps, the output and every gradient are a plain training step's."""
    layer, shape = _transform_layers()[name]
    x = torch.randn(shape)
    checkpointed = copy.deepcopy(layer)
    results = []
    for module, wrap in ((layer, lambda f, v: f(v)),
                         (checkpointed, lambda f, v: torch.utils.checkpoint.checkpoint(f, v, use_reentrant=reentrant))):
        for _ in range(2):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            out = wrap(module, xi)
            out.square().mean().backward()
        results.append({"output": out.detach(), "input": xi.grad,
                        **{n: p.grad for n, p in module.named_parameters()}})
    _close(results[1], results[0], name)


@pytest.mark.parametrize("name", list(_transform_layers()))
def test_forward_mode_derivatives(name):
    """Jacobian-vector products in the input and every parameter at once, by ``torch.func.jvp`` and by
    ``torch.autograd.forward_ad``'s dual tensors, equal ``torch.autograd.functional.jvp`` (reverse mode twice:
    no forward-mode formula involved)."""
    layer, shape = _transform_layers()[name]
    names = [n for n, _ in layer.named_parameters()]
    primals = (torch.randn(shape), *(p.detach() for p in layer.parameters()))
    tangents = tuple(torch.randn_like(t) for t in primals)

    def call(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    _, expected = torch.autograd.functional.jvp(call, primals, tangents)
    _, by_func = torch.func.jvp(call, primals, tangents)
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(p, t) for p, t in zip(primals, tangents)]
        by_duals = torch.autograd.forward_ad.unpack_dual(call(*duals)).tangent
    _close({"torch.func.jvp": by_func, "dual tensors": by_duals},
           {"torch.func.jvp": expected, "dual tensors": expected}, name)


@pytest.mark.parametrize("name", list(_transform_layers()))
def test_gradcheck_with_batched_and_forward_mode_checks(name):
    """torch's own gradcheck in float64, in the input and every parameter, with its batched-gradient check
    (``is_grads_batched``: what ``jacobian(vectorize=True)`` runs), its forward-mode check and its batched
    forward-mode check (``vmap`` over tangents), against finite differences."""
    layer, shape = _transform_layers()[name]
    layer = layer.double()
    names = [n for n, _ in layer.named_parameters()]
    inputs = (torch.randn(1, *shape[1:], dtype=torch.float64, requires_grad=True),
              *(p.detach().clone().requires_grad_() for p in layer.parameters()))

    def call(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(call, inputs, fast_mode=True, check_batched_grad=True, check_forward_ad=True,
                                    check_batched_forward_grad=True)


@pytest.mark.parametrize("name", [n for n, (layer, _) in _transform_layers().items() if list(layer.parameters())])
def test_an_ensemble_by_vmap_over_stacked_parameters(name):
    """Three independently initialised layers stacked (``torch.func.stack_module_state``) and run by one ``vmap``
    equal each layer's own call; FlexConv's members crop their kernels to masks of three sizes."""
    make = lambda seed: (torch.manual_seed(seed), _transform_layers()[name][0])[1]  # noqa: E731
    members = [make(seed) for seed in range(3)]
    x = torch.randn(_transform_layers()[name][1])
    if name == "FlexConv2d":
        with torch.no_grad():
            for member, width in zip(members, (0.15, 0.3, 1.0)):
                member.mask_width.fill_(width)
        assert len({m.effective_kernel_size() for m in members}) == 3
    params, buffers = torch.func.stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta")
    with torch.no_grad():
        stacked = torch.func.vmap(lambda p, b: torch.func.functional_call(template, (p, b), (x,)),
                                  randomness="same")(params, buffers)
        _close({i: stacked[i] for i in range(3)}, {i: m(x) for i, m in enumerate(members)}, name)


# ----------------------------------------------------------------------------- hooks on sub-layers


def _prunable(layer: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (module, parameter name) of ``layer`` with more than one entry. Not a ``ParameterList``'s: a container,
    never called, whose hooks never run (in torch's modules as in these)."""
    return [(m, n) for m in layer.modules() if not isinstance(m, nn.ParameterList)
            for n, p in m.named_parameters(recurse=False) if p.numel() > 1]


# Compiled too where the library's own compile path differs (the kernel nets' compile regions stand aside).
_PRUNED = [pytest.param(n, c, id=f"{n}-{'compiled' if c else 'eager'}")
           for n, (layer, _) in _transform_layers().items() if _prunable(layer)
           for c in ((False, True) if n in ("CKConv2d", "FlexConv2d", "NIFFConv2d") else (False,))]


@pytest.mark.parametrize("name, compiled", _PRUNED)
def test_pruned_sub_layers_train_like_zeroed_weights(name, compiled):
    """``torch.nn.utils.prune`` on every parameter of every sub-layer (its forward pre-hook recomputes each pruned
    tensor as ``orig * mask`` whenever the sub-layer is called; the kernel nets' sub-layers used to be read, not
    called: the second step failed in its backward, and a step's update never reached the kernel): three SGD steps
    give the outputs of a copy whose pruned entries are zeroed by hand, and whose update is masked the same way."""
    layer, shape = _transform_layers()[name]
    pairs = _prunable(layer)
    reference = copy.deepcopy(layer)
    masks = []
    torch.manual_seed(1)
    for module, param in pairs:
        prune.random_unstructured(module, param, amount=0.3)
        masks.append(getattr(module, param + "_mask"))
    zeroed = [(getattr(m, n), mask) for (m, n), mask in zip(_prunable(reference), masks)]
    with torch.no_grad():
        for p, mask in zeroed:
            p.mul_(mask)
    torch.compiler.reset()
    run = torch.compile(layer, backend="aot_eager", fullgraph=True) if compiled else layer
    originals = [getattr(m, n + "_orig") for m, n in pairs]
    x = torch.randn(shape)
    for step in range(3):
        out, expected = run(x), reference(x)
        _close({f"output, step {step}": out}, {f"output, step {step}": expected}, name)
        out.square().mean().backward()
        expected.square().mean().backward()
        with torch.no_grad():
            for orig, (p, mask) in zip(originals, zeroed):
                orig -= 0.5 * orig.grad
                p -= 0.5 * mask * p.grad
                orig.grad = p.grad = None


_KERNEL_NET_LAYERS = {"CKConv2d": lambda: lnn.CKConv2d(4, 4, 9, groups=4, kernel_net="mlp"),
                      "CKConv2d-siren": lambda: lnn.CKConv2d(4, 4, 9, groups=4, kernel_net="siren"),
                      "FlexConv2d": lambda: lnn.FlexConv2d(4, 4, 9, mask_init=0.3),
                      "FlexConv2d-gabor": lambda: lnn.FlexConv2d(4, 4, 9, kernel_net="gabor"),
                      "NIFFConv2d": lambda: lnn.NIFFConv2d(4, 4)}


def _output_layers(layer: nn.Module) -> list[nn.Linear]:
    return [layer.mlp_real[-1], layer.mlp_imag[-1]] if hasattr(layer, "mlp_real") else [layer.kernel_net.output]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # (the grid's coordinates need no gradient)
@pytest.mark.parametrize("name", list(_KERNEL_NET_LAYERS))
def test_hooks_on_a_kernel_nets_layers_run(name):
    """A forward hook on a kernel net's output layer(s) that doubles their output doubles the kernel: the layer
    then computes what it computes with those layers' weights and biases doubled (the kernel is affine in them;
    FlexConv's mask multiplies the output). A full backward hook on a hidden layer runs at every backward."""
    torch.manual_seed(0)
    layer = _KERNEL_NET_LAYERS[name]()
    with torch.no_grad():
        for p in layer.parameters():  # no zero bias: the doubled output must differ from the plain one
            p.add_(0.1)
    reference = copy.deepcopy(layer)
    for out_layer, ref_layer in zip(_output_layers(layer), _output_layers(reference)):
        out_layer.register_forward_hook(lambda module, args, out: 2.0 * out)
        with torch.no_grad():
            ref_layer.weight.mul_(2.0)
            ref_layer.bias.mul_(2.0)
    hidden = next(m for m in layer.modules() if isinstance(m, nn.Linear) and m not in _output_layers(layer))
    calls = []
    hidden.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(grad_out[0].shape))
    x = torch.randn(2, 4, 12, 12)
    out, expected = layer(x), reference(x)
    assert not torch.allclose(out, layer.__class__.forward(reference, x) / 2.0), "the doubling must show"
    _close({"output": out}, {"output": expected}, name)
    out.square().mean().backward()
    assert len(calls) == 1, calls


class _LowRankLinear(nn.Linear):
    """A linear layer with a trainable low-rank update (LoRA's form), put in place of a kernel net's layer: a
    layer whose forward is not ``torch.nn.Linear``'s."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__(base.in_features, base.out_features, dtype=base.weight.dtype)
        self.load_state_dict(base.state_dict())
        self.down = nn.Parameter(0.3 * torch.randn(rank, base.in_features))
        self.up = nn.Parameter(0.3 * torch.randn(base.out_features, rank))

    def forward(self, x):
        return F.linear(x, self.weight + self.up @ self.down, self.bias)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", list(_KERNEL_NET_LAYERS))
def test_a_kernel_nets_layer_replaced_by_the_users_runs_its_own_forward(name, compiled):
    """A low-rank-updated linear layer (LoRA's form) in place of a kernel net's output layer(s): the layer computes
    what it computes with the update added to those layers' weights, and the update trains (the net read the
    replacement's ``weight`` without calling it: the update was ignored)."""
    torch.manual_seed(0)
    layer = _KERNEL_NET_LAYERS[name]()
    reference = copy.deepcopy(layer)
    replaced = []
    for out_layer, ref_layer in zip(_output_layers(layer), _output_layers(reference)):
        low_rank = _LowRankLinear(out_layer)
        parent = layer.kernel_net if hasattr(layer, "kernel_net") else \
            next(net for net in (layer.mlp_real, layer.mlp_imag) if net[-1] is out_layer)
        setattr(parent, "output" if hasattr(layer, "kernel_net") else str(len(parent) - 1), low_rank)
        with torch.no_grad():
            ref_layer.weight += low_rank.up @ low_rank.down
        replaced.append(low_rank)
    torch.compiler.reset()
    run = torch.compile(layer, backend="aot_eager", fullgraph=True) if compiled else layer
    x = torch.randn(2, 4, 12, 12)
    out = run(x)
    _close({"output": out}, {"output": reference(x)}, name)
    out.square().mean().backward()
    assert all(m.down.grad is not None and m.down.grad.abs().sum() > 0 for m in replaced)


@pytest.mark.parametrize("name", list(_KERNEL_NET_LAYERS))
def test_hooks_on_a_kernel_nets_layers_run_at_every_inference_call(name):
    """Without autograd a layer reuses its kernel while its parameters are unchanged, but not past a hook inside
    it: the hook runs at every call, as in torch's modules (it used to run at the first call only)."""
    layer = _KERNEL_NET_LAYERS[name]().eval()
    calls = []
    next(m for m in layer.modules() if isinstance(m, nn.Linear)).register_forward_hook(
        lambda module, args, out: calls.append(out.shape))
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert len(calls) == 2, calls


# ----------------------------------------------------------------------------- double backward


@pytest.mark.parametrize("nd, cin, cout, kernel, kw", [
    (1, 4, 4, 5, {"padding": "same", "groups": 4}),
    (1, 4, 6, 3, {"stride": 2, "padding": ((2, 1),), "dilation": 2, "groups": 2}),
    (2, 3, 3, 4, {"padding": 2, "groups": 3}),
    (2, 4, 4, 3, {"stride": (2, 1), "dilation": (1, 2), "padding": 1, "groups": 2}),
    (2, 2, 4, 3, {"padding": 1, "padding_mode": "circular"}),
    (3, 2, 2, 2, {"padding": 1, "groups": 2, "dilation": 2}),
])
@pytest.mark.parametrize("packed", [True, False])
def test_fft_path_is_twice_differentiable(nd, cin, cout, kernel, kw, packed, device):
    groups = kw.get("groups", 1)
    x = torch.randn(2, cin, *([7, 6, 5][:nd]), dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(cout, cin // groups, *([kernel] * nd), dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, device=device, requires_grad=True)
    with planner_options(packed=packed):
        assert gradgradcheck(lambda x, w, b: fft_conv(x, w, b, **kw), (x, w, b), fast_mode=True)


def _family_layers() -> dict:
    """Every family at a size gradgradcheck handles in float64 (each layer's own kernel construction included)."""
    torch.manual_seed(0)
    dcls = {f"DclsConv2d-{i}": (lnn.DclsConv2d(2, 2, kernel_count=3, dilated_kernel_size=5, padding=2,
                                               interpolation=i), (1, 2, 6, 6))
            for i in ("bilinear", "gaussian", "triangle", "bicubic")}
    return {**dcls,
            "FlexConv2d": (lnn.FlexConv2d(2, 2, kernel_size=5), (1, 2, 6, 6)),
            "NIFFConv2d": (lnn.NIFFConv2d(2), (1, 2, 6, 6)),
            "SGConv1d": (lnn.SGConv1d(2, kernel_size=16), (1, 2, 16)),
            "S4DConv1d": (lnn.S4DConv1d(2, d_state=4), (1, 2, 16)),
            "SGConv2d": (lnn.SGConv2d(2, kernel_size=7), (1, 2, 7, 7)),
            "SGConv2d-pointwise": (lnn.SGConv2d(2, 3, kernel_size=5, kernel_dim=2), (1, 2, 5, 5)),
            "SpectralPointwise": (lnn.SpectralPointwise(2, 3), (1, 2, 5, 4))}


@pytest.mark.parametrize("name", list(_family_layers()))
def test_every_family_is_twice_differentiable(name):
    """Second derivatives through each family's kernel construction and convolution, in the input and every
    parameter, against gradgradcheck's finite differences."""
    layer, shape = _family_layers()[name]
    layer = layer.double()
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def call(x, *params):
        return torch.func.functional_call(layer, {n: p for (n, _), p in zip(named, params)}, (x,))

    assert gradgradcheck(call, (x, *(p for _, p in named)), fast_mode=True)


@pytest.mark.parametrize("name", list(_family_layers()))
def test_gradients_taken_with_create_graph_are_the_gradients(name):
    """First derivatives taken with ``create_graph=True`` (the step before a gradient penalty or a MAML update),
    in the input and every parameter, against central finite differences of the loss along a random direction.
    (A backward that recomputes its forward to build the graph must not count twice a path from one of its
    inputs through another: S4D's coefficients are computed from its poles.)"""
    layer, shape = _family_layers()[name]
    layer = layer.double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    tensors = [x, *(p for p in layer.parameters() if p.requires_grad)]
    weights = torch.randn_like(layer(x)).detach()
    grads = torch.autograd.grad((layer(x) * weights).sum(), tensors, create_graph=True)
    eps = 1e-6
    for i, (t, g) in enumerate(zip(tensors, grads)):
        direction = torch.randn_like(t)
        with torch.no_grad():
            losses = []
            for sign in (1, -1):
                t.add_(sign * eps * direction)
                losses.append((layer(x) * weights).sum())
                t.sub_(sign * eps * direction)
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert abs((g * direction).sum().item() - numeric.item()) <= 1e-6 * max(1.0, abs(numeric.item())), \
            f"{name}: tensor {i}"


def test_a_kernel_made_from_the_input_differentiates_twice_like_torch():
    """A kernel computed from the input itself (an input-conditioned filter) on the FFT path: the input gradient
    taken with ``create_graph=True`` and a gradient penalty's second derivatives equal torch's convolution's."""
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    base = torch.randn(3, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    results = []
    for conv in (lambda x, w: fft_conv(x, w, padding=2), lambda x, w: F.conv2d(x, w, padding=2)):
        xi = x.clone().requires_grad_()
        out = conv(xi, base * xi.mean(dim=(0, 2, 3)).view(1, 3, 1, 1))
        (gx,) = torch.autograd.grad(out.square().sum(), xi, create_graph=True)
        results.append((gx.detach(), *torch.autograd.grad(gx.square().sum(), [xi, base])))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_gradient_penalty_matches_the_direct_path(device):
    """A WGAN-GP style penalty ||d out / d x||^2, differentiated to the weights: FFT and direct paths agree."""
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64, device=device, requires_grad=True)
    grads = []
    for backend in ("fft", "direct"):
        torch.manual_seed(0)
        conv = lnn.Conv2d(4, 4, 9, padding=4, groups=4, backend=backend, dtype=torch.float64, device=device)
        (gx,) = torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), [conv.weight, conv.bias, x]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- autocast


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("kernel", [7, 31])
def test_autocast_error_within_twice_torchs(kernel, autocast_case):
    """Under bf16 (and, on CUDA, fp16) autocast, ours takes low-precision operands and returns their dtype like
    torch's conv, with an error against float64 at most twice torch's own."""
    device, dtype = autocast_case
    x = torch.randn(2, 8, 40, 40, device=device)
    w = torch.randn(8, 1, kernel, kernel, device=device) / kernel
    exact = F.conv2d(x.double(), w.double(), padding="same", groups=8)
    with torch.autocast(device, dtype=dtype):
        theirs = F.conv2d(x, w, padding="same", groups=8)
        ours = fft_conv(x, w, padding="same", groups=8)
    assert ours.dtype == theirs.dtype == dtype
    assert _relative(ours, exact) <= 2 * _relative(theirs, exact)


def _families() -> dict:
    return {
        "Conv2d": lambda: lnn.Conv2d(4, 4, 9, padding=4, groups=4),
        "DclsConv2d": lambda: lnn.DclsConv2d(4, 4, kernel_count=6, dilated_kernel_size=9, padding=4, groups=4),
        "DclsConv2d-gaussian": lambda: lnn.DclsConv2d(4, 4, kernel_count=6, dilated_kernel_size=9, padding=4, groups=4,
                                                      interpolation="gaussian"),
        "CKConv2d": lambda: lnn.CKConv2d(4, 4, kernel_size=9),
        "FlexConv2d": lambda: lnn.FlexConv2d(4, 4, kernel_size=9),
        "NIFFConv2d": lambda: lnn.NIFFConv2d(4),
        "SGConv1d": lambda: lnn.SGConv1d(4, kernel_size=32),
        "S4DConv1d": lambda: lnn.S4DConv1d(4),
        "SGConv2d": lambda: lnn.SGConv2d(4, kernel_size=9),
        "FourierMix": lambda: lnn.FourierMix(),
        "RepLKConv2d": lambda: lnn.RepLKConv2d(4, 4, 9, groups=4, small_kernel=3),
        "SLaKConv2d": lambda: lnn.SLaKConv2d(4, 4, 9, groups=4, small_kernel=3),
        "DilatedReparamConv2d": lambda: lnn.DilatedReparamConv2d(4, 4, 7, groups=4),
        "DilatedReparamConv2d-eval": lambda: lnn.DilatedReparamConv2d(4, 4, 7, groups=4).eval(),
    }


@pytest.mark.parametrize("name", list(_families()))
def test_every_family_runs_under_autocast(name, autocast_case):
    """Forward and backward under bf16 (CUDA: also fp16) autocast (fp32 parameters and input, as in mixed-precision
    training) give the float64 layer's output and gradients within bf16 accuracy, in the dtype torch's own
    operation returns there: a convolution's the autocast dtype (NIFF returned float32, the re-parameterised
    layers in training too, their bias after the branches' sum promoting it), FourierMix's that of torch's FFT."""
    device, dtype = autocast_case
    torch.manual_seed(0)
    layer = _families()[name]().to(device)
    x = torch.randn(2, 4, 32) if name.endswith("1d") else torch.randn(2, 4, 16, 16)
    x = x.to(device)
    params = list(layer.parameters())
    exact = layer.double()(x.double())
    # Weighted: a plain sum of squares has a zero gradient for a bias after batch norms (their outputs sum to zero).
    weights = torch.rand_like(exact)
    exact_grads = torch.autograd.grad((exact.square() * weights).sum(), params) if params else ()
    layer = layer.float()
    with torch.autocast(device, dtype=dtype):
        y = layer(x)
        loss = (y.float().square() * weights.float()).sum()
        torchs = torch.fft.fft2(x).real if name == "FourierMix" else F.conv1d(x, torch.ones(4, 1, 3), groups=4) \
            if x.dim() == 3 else F.conv2d(x, torch.ones(4, 1, 3, 3), torch.ones(4), groups=4)
    assert y.dtype == torchs.dtype
    grads = torch.autograd.grad(loss, params, allow_unused=True) if params else ()
    assert _relative(y, exact) < 5e-2
    for g, e in zip(grads, exact_grads):
        if e.abs().max() > 0:
            assert g is not None and _relative(g, e) < 0.1


@pytest.mark.parametrize("model, shape, kwargs", [
    ("dwnet2d_tiny", (2, 1, 8, 8), {"conv": "fft", "kernel_size": 7, "in_chans": 1}),
    ("dwnet2d_tiny", (2, 1, 8, 8), {"conv": "flexconv", "kernel_size": 7, "in_chans": 1}),
    ("convnext_atto", (2, 3, 16, 16), {"conv": "dcls", "kernel_size": 7, "patch_size": 2}),
])
def test_models_train_under_autocast(model, shape, kwargs, autocast_case):
    device, dtype = autocast_case
    torch.manual_seed(0)
    net = create_model(model, num_classes=10, **kwargs).to(device)
    x = torch.randn(shape).to(device)
    exact = net.double()(x.double())
    net = net.float()
    with torch.autocast(device, dtype=dtype):
        out = net(x)
        loss = F.cross_entropy(out.float(), torch.arange(2, device=device))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    assert _relative(out, exact) < 5e-2


# ----------------------------------------------------------------------------- memory format


@pytest.mark.parametrize("backend", ["direct", "fft"])
@pytest.mark.parametrize("packed", [True, False])
def test_channels_last_in_channels_last_out(backend, packed, device):
    x = torch.randn(2, 6, 14, 12, device=device).to(memory_format=torch.channels_last).requires_grad_()
    conv = lnn.Conv2d(6, 6, 7, padding=3, groups=6, backend=backend, device=device)
    with planner_options(packed=packed):
        y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, padding=3, groups=6), rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(2, 4, 6, 6, 6, device=device).to(memory_format=torch.channels_last_3d)
    assert lnn.Conv3d(4, 4, 5, padding=2, groups=4, backend=backend, device=device)(x3).is_contiguous(
        memory_format=torch.channels_last_3d)


#: A 2-D layer of every family (4-D inputs: torch keeps channels_last there).
_LAYERS_2D = {
    "Conv2d-direct": lambda: lnn.Conv2d(6, 8, 5, padding=2, backend="direct"),
    "DclsConv2d": lambda: lnn.DclsConv2d(6, 6, 5, 9, padding=4, groups=2),
    "CKConv2d": lambda: lnn.CKConv2d(6, 8, 9),
    "FlexConv2d": lambda: lnn.FlexConv2d(6, 6, 9, groups=6, mask_init=0.3),
    "NIFFConv2d": lambda: lnn.NIFFConv2d(6, 8),
    "SpectralPointwise": lambda: lnn.SpectralPointwise(6, 8),
    "SGConv2d": lambda: lnn.SGConv2d(6, 8, 9, kernel_dim=4),
    "RepLKConv2d": lambda: lnn.RepLKConv2d(6, 6, 9, groups=6, small_kernel=3),
    "SLaKConv2d": lambda: lnn.SLaKConv2d(6, 6, 9, groups=6, small_kernel=3),
    "DilatedReparamConv2d": lambda: lnn.DilatedReparamConv2d(6, 6, 9, groups=6),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(_LAYERS_2D))
def test_every_layer_keeps_channels_last(name, training):
    """As torch's convolutions: a channels_last input gives a channels_last output, with the values and input
    gradient a contiguous input gives."""
    layer = _LAYERS_2D[name]().train(training)
    x = torch.randn(2, 6, 12, 10, requires_grad=True)
    x_last = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
    y, y_last = layer(x), layer(x_last)
    grad = torch.randn_like(y)
    (gx,), (gx_last,) = torch.autograd.grad(y, x, grad), torch.autograd.grad(y_last, x_last, grad)
    assert y_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_last, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_last, gx, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- deferred initialisation

#: Every layer with state, at a width where each tensor holds enough values to compare distributions.
_DEFERRED = {
    "Conv2d-fft": lambda: lnn.Conv2d(8, 8, 9, padding=4, backend="fft"),
    "DclsConv2d-bilinear": lambda: lnn.DclsConv2d(8, 8, 5, 9, padding=4, groups=2),
    "DclsConv2d-gaussian": lambda: lnn.DclsConv2d(8, 8, 5, 9, padding=4, groups=2, interpolation="gaussian"),
    "CKConv2d-siren": lambda: lnn.CKConv2d(8, 8, 9),
    "CKConv2d-siren-learned-omega": lambda: lnn.CKConv2d(8, 8, 9, kernel_net_kwargs={"learn_omega_0": True}),
    "CKConv1d-mlp": lambda: lnn.CKConv1d(8, 8, 15, kernel_net="mlp"),
    "FlexConv2d-magnet": lambda: lnn.FlexConv2d(8, 8, 9, mask_init=0.3),
    "FlexConv1d-gabor-causal": lambda: lnn.FlexConv1d(8, 8, 15, kernel_net="gabor", causal=True),
    "FlexConv2d-fourier": lambda: lnn.FlexConv2d(8, 8, 9, kernel_net="fourier"),
    "NIFFConv2d": lambda: lnn.NIFFConv2d(8, 16),
    "SpectralPointwise": lambda: lnn.SpectralPointwise(8, 16),
    "SGConv1d": lambda: lnn.SGConv1d(8, kernel_size=64, kernel_dim=8),
    "SGConv2d": lambda: lnn.SGConv2d(8, 16, 9, kernel_dim=4),
    "S4DConv1d": lambda: lnn.S4DConv1d(8, kernel_size=64, d_state=16),
    "RepLKConv2d": lambda: lnn.RepLKConv2d(8, 8, 13, groups=8),
    "SLaKConv2d": lambda: lnn.SLaKConv2d(8, 8, 13, groups=8),
    "DilatedReparamConv2d": lambda: lnn.DilatedReparamConv2d(8, 8, 9, groups=8),
}


def _state(layer: nn.Module) -> dict:
    return {n: t.detach().clone() for n, t in [*layer.named_parameters(), *layer.named_buffers()]}


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic ``max |F_a - F_b|`` and its critical value at the level
    ``alpha = 1e-6``, ``sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`` (the test below makes ~10^3 such
    comparisons; the defects it is for, a default initialisation in place of a scaled one, give ``D`` near 1)."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    points = torch.cat([a, b])
    cdf = [torch.searchsorted(s, points, right=True) / s.numel() for s in (a, b)]
    n, m = a.numel(), b.numel()
    return (cdf[0] - cdf[1]).abs().max().item(), (-math.log(1e-6 / 2) / 2) ** 0.5 * ((n + m) / (n * m)) ** 0.5


@pytest.mark.parametrize("order", ["layer", "children first"])
@pytest.mark.parametrize("name", list(_DEFERRED))
def test_built_on_the_meta_device_then_initialised_like_construction(name, order):
    """Deferred initialisation, as torch's layers allow it: built under ``torch.device("meta")`` (no memory),
    materialised by ``to_empty`` (uninitialised memory: filled with NaN here) and initialised by the layer's
    ``reset_parameters()``, or by every module's, children first (``model.apply``), every parameter and buffer is
    set as construction sets it: the constant ones equal, the random ones from the same distribution (pooled
    over seeds, a two-sample Kolmogorov-Smirnov test)."""
    make = _DEFERRED[name]
    built, deferred = [], []
    for seed in range(6):
        torch.manual_seed(seed)
        built.append(_state(make()))
        with torch.device("meta"):
            layer = make()
        layer.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*layer.parameters(), *layer.buffers()]:
                t.fill_(float("nan") if t.is_floating_point() else -1)
        torch.manual_seed(100 + seed)
        if order == "layer":
            layer.reset_parameters()
        else:
            layer.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
        deferred.append(_state(layer))
    for key in built[0]:
        values = [s[key] for s in deferred]
        assert all(v.is_floating_point() and not v.isnan().any() or not v.is_floating_point() and (v >= 0).all()
                   for v in values), f"{key} left uninitialised"
        if all(torch.equal(s[key], built[0][key]) for s in built[1:]):  # a constant of construction
            for v in values:
                torch.testing.assert_close(v, built[0][key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
        else:
            d, critical = _ks_statistic(torch.cat([s[key].flatten() for s in built]), torch.cat(values))
            assert d < critical, f"{key}: KS statistic {d:.3f} >= {critical:.3f}"


@pytest.mark.parametrize("name", list(_DEFERRED))
def test_built_on_the_meta_device_then_loaded_runs_like_the_original(name):
    """The loading route of deferred initialisation (``load_state_dict(..., assign=True)`` into a layer built
    under ``torch.device("meta")``, as Hugging Face's ``init_empty_weights`` does): the same outputs, bit for bit;
    and the meta layer's forward gives the output's shape without computing it."""
    torch.manual_seed(0)
    original = _DEFERRED[name]()
    with torch.device("meta"):
        layer = _DEFERRED[name]()
        shape = (2, 8, 40) if "1d" in name else (2, 8, 12, 12)
        meta_out = layer(torch.empty(shape))
    layer.load_state_dict(copy.deepcopy(original.state_dict()), assign=True)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert meta_out.shape == expected.shape and meta_out.device.type == "meta"


# ----------------------------------------------------------------------------- inference reuse

#: The layers that keep the kernel (or filter) they computed without autograd, to reuse while nothing changes.
_REUSING = {
    "CKConv2d": lambda: lnn.CKConv2d(4, 4, 9, groups=4),
    "FlexConv2d": lambda: lnn.FlexConv2d(4, 4, 9, groups=4, mask_init=0.3),
    "NIFFConv2d": lambda: lnn.NIFFConv2d(4, 4),
}


def _give_new_values(layer: nn.Module, state: dict, how: str) -> None:
    params = dict(layer.named_parameters())
    if how == "copy_":
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])
    elif how == ".data =":
        for n, p in params.items():
            p.data = state[n].clone()
    elif how == ".data.copy_":  # through an alias with a version counter of its own (EMA, clipping code)
        for n, p in params.items():
            p.data.copy_(state[n])
    elif how == ".data = twice":  # back at the same storage, written meanwhile through an alias
        for n, p in params.items():
            old = p.data
            p.data = torch.zeros_like(p)
            old.copy_(state[n])
            p.data = old
    elif how == "swap_tensors":
        for n, p in params.items():
            torch.utils.swap_tensors(p, nn.Parameter(state[n].clone()))
    elif how == "load_state_dict(assign=True)":
        layer.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    else:  # load_state_dict swapping the tensors (torch.__future__)
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            layer.load_state_dict(state)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(False)


@pytest.mark.parametrize("how", ["copy_", ".data.copy_", ".data =", ".data = twice", "swap_tensors",
                                 "load_state_dict(assign=True)", "load_state_dict(swap)"])
@pytest.mark.parametrize("name", list(_REUSING))
def test_inference_never_reuses_a_kernel_of_old_values(name, how):
    """Without autograd a layer reuses its kernel while its tensors stay as they were: however they are given new
    values (in place, through ``.data``, ``.data =``, ``torch.utils.swap_tensors``, ``load_state_dict``), the next
    call computes what a layer built with those values computes."""
    make = _REUSING[name]
    torch.manual_seed(0)
    layer = make().eval()
    torch.manual_seed(1)
    state = make().state_dict()
    x = torch.randn(2, 4, 12, 12)
    fresh = make().eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        before = layer(x)
        _give_new_values(layer, state, how)
        after = layer(x)
        expected = fresh(x)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(_REUSING))
def test_built_and_run_under_inference_mode(name):
    """A layer built, loaded and run under ``torch.inference_mode()`` (its tensors then have no version counter),
    also after an in-place change there: what a layer built with those values computes under ``torch.no_grad()``."""
    make = _REUSING[name]
    torch.manual_seed(0)
    reference = make().eval()
    x = torch.randn(2, 4, 12, 12)
    with torch.inference_mode():
        layer = make().eval()
        layer.load_state_dict(reference.state_dict())
        first, again = layer(x), layer(x)
        for p in layer.parameters():
            p.mul_(0.5)
        halved = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(first, reference(x), rtol=0, atol=0)
        torch.testing.assert_close(again, reference(x), rtol=0, atol=0)
        for p in reference.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(halved, reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(_DEFERRED))
def test_trains_after_a_call_under_inference_mode(name):
    """A call under ``torch.inference_mode()`` (a check, an evaluation) leaves nothing that training cannot use: the
    training step after it gives a fresh layer's gradients (NIFF kept coordinates made there, which autograd cannot
    save for backward, until 2026-12-06)."""
    torch.manual_seed(0)
    layer = _DEFERRED[name]()
    fresh = copy.deepcopy(layer)
    x = torch.randn((2, 8, 40) if "1d" in name else (2, 8, 12, 12))
    with torch.inference_mode():
        layer.eval()(x)
    layer.train()
    got = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
    expected = torch.autograd.grad(fresh(x).square().sum(), list(fresh.parameters()))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("first", ["autocast", "float32"])
@pytest.mark.parametrize("name", list(_REUSING))
def test_inference_reuse_follows_autocast(name, first):
    """A call under ``torch.autocast`` and one without compute their kernels differently; whichever came first, each
    call gives what it gives on a layer that has made no call yet (until 2026-12-06 the kernel of the first was
    reused: a float32 call after a bfloat16 one failed on FlexConv and CKConv, and NIFF's differed by 6e-3)."""
    make = _REUSING[name]
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, 4, 12, 12)

    def call(module, under_autocast):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=under_autocast):
            return module(x)

    first_autocast = first == "autocast"
    call(layer, first_autocast)
    fresh = make().eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(call(layer, not first_autocast), call(fresh, not first_autocast), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(_REUSING))
def test_copies_and_pickles_carry_no_kept_kernel(name):
    """``torch.save(module)`` and ``copy.deepcopy`` after calls without autograd: the pickle is the size of the
    module's pickle before any call (it carried the kept kernel and a copy of every parameter: 2-11x larger), and
    the loaded or copied module computes what the original does, and then, given new values, what a layer built
    with them does."""
    make = _REUSING[name]
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, 4, 24, 24)
    before = io.BytesIO()
    torch.save(layer, before)
    with torch.no_grad():
        for size in (12, 16, 24):  # NIFF keeps per-size state too
            expected = layer(x[..., :size, :size])
    after = io.BytesIO()
    torch.save(layer, after)
    assert len(after.getvalue()) <= len(before.getvalue()) + 256
    after.seek(0)
    torch.manual_seed(1)
    state = make().state_dict()
    fresh = make().eval()
    fresh.load_state_dict(state)
    for other in (torch.load(after, weights_only=False), copy.deepcopy(layer)):
        with torch.no_grad():
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
            for n, p in other.named_parameters():
                p.copy_(state[n])
            torch.testing.assert_close(other(x), fresh(x), rtol=0, atol=0)


def test_niff_runs_on_many_input_sizes_like_a_fresh_layer():
    """A NIFF layer fed more input sizes than it keeps grids for, in turn and again, computes for each what a fresh
    layer computes (its kept grids are bounded: it kept one per size it ever saw)."""
    torch.manual_seed(0)
    layer = lnn.NIFFConv2d(3).eval()
    sizes = [(h, w) for h in (5, 8, 11, 14) for w in (6, 9, 13)]
    inputs = {s: torch.randn(2, 3, *s) for s in sizes}
    with torch.no_grad():
        for _ in range(2):
            for s in sizes:
                fresh = copy.deepcopy(layer)
                torch.testing.assert_close(layer(inputs[s]), fresh(inputs[s]), rtol=0, atol=0)
