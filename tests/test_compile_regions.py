"""torch.compile of the layers whose kernel comes from a network: the network's part before its output layer is
one nested compile region, compiled once for every layer that shares a grid and the network's shape, whatever the
layers' channels (docs/deploy.md; a cropping FlexConv with a large kernel net output runs eagerly as one operator
instead, and NIFF's two frequency nets run as one operator outside torch.autocast); on torch 2.13 only under
inductor and aot_eager. Compiled training steps must
equal eager ones under every backend, hooks on a kernel net must still run, and the region must be reused across
widths. CI runs this file on torch 2.13 (the main suite) and on torch 2.14 (the interop venv)."""

import logging

import pytest
import torch
from torch import nn

import largekernel.nn as L


class _ChannelsFirstMLP(nn.Module):
    """A kernel net of the user's own: coordinates ``(*grid, 2)`` to a kernel ``(C, *grid)``."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, channels))

    def forward(self, coords):
        return self.body(coords).movedim(-1, 0)


def _continuous():
    torch.manual_seed(0)
    hooked = L.FlexConv2d(12, 12, 9, groups=12)
    hooked.kernel_net.register_forward_hook(lambda module, args, out: 2.0 * out)
    return nn.Sequential(
        L.FlexConv2d(4, 8, 9, groups=4),
        L.FlexConv2d(8, 8, 9, groups=8, mask_init=0.2),  # another crop of the same grid
        L.FlexConv2d(8, 12, 9, groups=4),
        L.CKConv2d(12, 12, 9, groups=12, kernel_net="magnet"),  # no mask
        L.FlexConv2d(12, 12, 9, groups=12, kernel_net_kwargs={"bias": False}),
        hooked,
        L.CKConv2d(12, 4, 7, kernel_net=_ChannelsFirstMLP(4 * 12)),
    )


def _shared_regions():
    """The first four layers of :func:`_continuous`: three crops and widths of one kernel net, which share its
    region, and a second net's (MAGNet) region: what inductor lowers of reused regions. The others (a hook, a net
    without biases, the user's net) decide whether a region is called; the recorded graphs (``aot_eager``) check
    that, and inductor's ~1 s per generated kernel here is this file's cost."""
    return nn.Sequential(*list(_continuous())[:4])


def _niff():
    torch.manual_seed(0)
    return nn.Sequential(L.NIFFConv2d(4, 8), nn.GELU(), L.NIFFConv2d(8, 8, padding=2), L.NIFFConv2d(8, 12),
                         L.NIFFConv2d(12, 4, hidden_channels=(8,)))


def _training_step(model, x):
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("backend", "make"), [
    *((backend, make) for backend in ("eager", "aot_eager") for make in (_continuous, _niff)),
    ("inductor", _shared_regions), ("inductor", _niff)],
    ids=["eager-flexconv-ckconv", "eager-niff", "aot_eager-flexconv-ckconv", "aot_eager-niff",
         "inductor-flexconv-ckconv", "inductor-niff"])
def test_compiled_training_step_matches_eager(backend, make):
    model = make()
    x = torch.randn(2, 4, 12, 12)
    expected = _training_step(model, x)
    torch.compiler.reset()
    got = _training_step(torch.compile(model, backend=backend, fullgraph=True), x)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


@pytest.mark.parametrize("make", [_continuous, _niff], ids=["flexconv-ckconv", "niff"])
def test_dynamic_shapes_match_eager(make):
    # dynamic=True makes the layers' float settings symbolic inputs, which a reused region cannot take
    # (torch 2.14): FlexConv then traces its kernel nets as written.
    model = make()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    torch.compiler.reset()
    for shape in [(2, 4, 12, 12), (3, 4, 16, 14)]:
        x = torch.randn(shape)
        expected = _training_step(model, x)
        for g, e in zip(_training_step(compiled, x), expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


def test_a_hook_on_the_kernel_net_still_runs_when_compiled():
    layer = L.FlexConv2d(3, 3, 9, groups=3)
    x = torch.randn(1, 3, 10, 10)
    plain = layer(x)
    layer.kernel_net.register_forward_hook(lambda module, args, out: -out)
    torch.compiler.reset()
    # The hook negates the kernel, so the output (no bias yet: zero-initialised) changes sign.
    torch.testing.assert_close(torch.compile(layer, backend="aot_eager", fullgraph=True)(x), -plain)


# (Uncropped: a cropping FlexConv whose kernel net gives 2**15 values or more runs eagerly as one operator, without
# a region. NIFF under torch.autocast: outside it, its nets run as one operator, test_niff_filter_nets_...)
@pytest.mark.parametrize("layer", [lambda n, w: L.FlexConv2d(n, w, 9, groups=4, dynamic_cropping=False),
                                   lambda n, w: L.NIFFConv2d(n, w)], ids=["flexconv-uncropped", "niff-autocast"])
def test_layers_of_every_width_reuse_one_compiled_region(layer, request):
    torch.manual_seed(0)
    widths = [4, 8, 16, 32]
    model = nn.Sequential(*[layer(n, w) for n, w in zip([4, *widths], widths)])
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    torch._logging.set_logs(hierarchical_compile=True)  # (re)configures torch's loggers: add the handler after
    torch_logger = logging.getLogger("torch._dynamo")  # where torch stops propagating dynamo's records
    torch_logger.addHandler(handler)
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)  # a process-wide logging.disable (earlier code's) would drop the records
    try:
        torch.compiler.reset()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="autocast" in request.node.callspec.id):
            out = torch.compile(model, backend="aot_eager", fullgraph=True)(torch.randn(1, 4, 9, 9))
        out.float().sum().backward()
    finally:
        logging.disable(disabled)
        torch._logging.set_logs()
        torch_logger.removeHandler(handler)
    hits = [m for m in messages if "subgraph_reuse: cache hit" in m]
    assert len(hits) == len(widths) - 1, messages


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch-operations"])
@pytest.mark.parametrize(("make", "shape"), [
    (lambda: L.NIFFConv1d(3, 6), (2, 3, 17)),
    (lambda: L.NIFFConv2d(4, 4, hidden_channels=()), (2, 4, 7, 6)),
    (lambda: L.NIFFConv2d(4, 8, preset="big", padding=1, padding_mode="reflect"), (2, 4, 9, 8)),
    (lambda: L.NIFFConv2d(4, 4, output="spectrum"), (2, 4, 8, 8)),
    (lambda: L.NIFFConv3d(2, 2, hidden_channels=(5,), dtype=torch.float64), (1, 2, 4, 5, 3)),
], ids=["1d", "no-hidden-layer", "big-reflect", "spectrum", "3d-float64"])
def test_niff_filter_nets_compile_as_one_operator_matching_eager(make, shape, native):
    """Under torch.compile NIFF's two frequency nets run as one operator instead of being traced (on the CPU the
    library's native kernels, forward and backward, or torch operations where they do not run), so that inductor
    generates no code for them on each grid (docs/deploy.md): the compiled training step's output and every
    parameter's gradient equal eager's, with the native kernels and without; the graphs handed to the compiler
    (subgraphs included) hold no SiLU, the nets' activation."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from largekernel.functional import native_kernels

    traced = []

    def record(graph_module, example_inputs):
        for module in graph_module.modules():
            if isinstance(module, torch.fx.GraphModule):
                traced.extend(str(node.target) for node in module.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph_module.forward)

    torch.manual_seed(0)
    layer = make()
    dtype = next(layer.parameters()).dtype
    x = torch.randn(shape, dtype=dtype)

    def step(module):
        layer.zero_grad()
        out = module(x)
        out = out.data if isinstance(out, L.Spectrum) else out
        torch.view_as_real(out).square().mean().backward() if out.is_complex() else out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in layer.parameters()]

    expected = step(layer)
    was = native_kernels()
    try:
        native_kernels(native)
        torch.compiler.reset()
        got = step(torch.compile(layer, backend=aot_autograd(fw_compiler=record), fullgraph=True))
    finally:
        native_kernels(was)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * e.abs().max().item())
    assert traced and not [t for t in traced if "silu" in t], traced
