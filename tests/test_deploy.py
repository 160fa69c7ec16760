"""Deployment paths of every family (docs/deploy.md): torch.compile, torch.export and ONNX.

(ONNX export of baked whole models, on the direct and the FFT path: tests/test_convert.py.)
References are independent of the paths under test: the same module run eagerly (torch's
own convolutions are checked against it elsewhere), torch's convolution with the expected
crop. Layers are tiny; the one inductor compilation (every family in one module, its
forward: inductor builds a C++ kernel per fused step, ~1 s each here) is this file's cost,
~30 s cold on a 2-core CPU (inductor's cache makes later runs seconds); the backward graphs
of every family are checked as recorded (``aot_eager``), and inductor's code for the forward
and backward of the families whose gradients it generates in one training step.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import largekernel
import largekernel.nn as L

# One small layer per family and its input shape. The FFT backend appears as the depthwise (channel pairs), dense (channel contraction)
# and strided (real transforms) products.
FAMILIES = {
    "fft_depthwise": (lambda: L.Conv2d(4, 4, 9, padding=4, groups=4, backend="fft"), (2, 4, 12, 12)),
    "fft_dense": (lambda: L.Conv2d(4, 4, 9, padding=4, backend="fft"), (2, 4, 12, 12)),
    "fft_strided": (lambda: L.Conv2d(4, 4, 9, stride=2, padding=4, groups=2, backend="fft"), (2, 4, 12, 12)),
    "dcls": (lambda: L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4), (2, 4, 12, 12)),
    "dcls_gaussian": (lambda: L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4, interpolation="gaussian"),
                      (2, 4, 12, 12)),
    "ckconv": (lambda: L.CKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "flexconv": (lambda: L.FlexConv2d(4, 4, 9, groups=4, mask_init=0.3), (2, 4, 12, 12)),
    "niff": (lambda: L.NIFFConv2d(4, 4), (2, 4, 12, 12)),
    "sgconv": (lambda: L.SGConv1d(4, kernel_size=40, kernel_dim=8), (2, 4, 40)),  # 4 scales, 3 upsampled
    "s4d": (lambda: L.S4DConv1d(4, kernel_size=40), (2, 4, 40)),
    "sgconv2d": (lambda: L.SGConv2d(4, 4, 9, kernel_dim=4), (2, 4, 12, 12)),  # a fixed box: sizes stay dynamic
    "replknet": (lambda: L.RepLKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "slak": (lambda: L.SLaKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "unireplknet": (lambda: L.DilatedReparamConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "fouriermix": (lambda: L.FourierMix(), (2, 10, 8)),
}

#: Families whose kernel is sized from the input: a recorded graph fixes their spatial size.
SIZED_FROM_INPUT = ("niff", "sgconv", "s4d")
#: The others: one recorded graph serves every spatial size up to its example's.
SIZE_FREE = [name for name in FAMILIES if name not in SIZED_FROM_INPUT]


def _layer(name: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = FAMILIES[name]
    return make(), torch.randn(shape)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_has_no_graph_break(name):
    layer, x = _layer(name)
    torch.compiler.reset()
    explained = torch._dynamo.explain(layer)(x.requires_grad_())
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_layers_compiled_one_by_one_compile_past_dynamos_recompile_limit():
    """Dynamo keeps what it compiled, and counts recompilations against a limit of 8, per code object. The library's
    layer classes all ran one wrapper's code as their forward: compiling layers one by one (``torch.compile(layer)``
    or ``layer.compile()``, as regional compilation does), the ninth configuration of any class or classes failed
    ("recompile limit exceeded" under ``fullgraph=True``; uncompiled without it). Now each class has its own forward,
    and 21 layers of 18 classes compile, each giving the eager output."""
    torch.compiler.reset()
    ours = [(make(), shape) for make, shape in FAMILIES.values()] + [
        (L.Conv1d(4, 4, 5, padding=2, backend="fft"), (2, 4, 12)), (L.Conv3d(4, 4, 3, padding=1), (2, 4, 5, 5, 5)),
        (L.DclsConv1d(4, 4, 3, 7, padding=3), (2, 4, 12)), (L.CKConv1d(4, 4, 9), (2, 4, 12)),
        (L.FlexConv1d(4, 4, 9), (2, 4, 12)), (L.DclsConv3d(4, 4, 3, 3, padding=1), (2, 4, 5, 5, 5))]
    assert len(ours) == 21 and len({type(layer) for layer, _ in ours}) == 18
    for i, (layer, shape) in enumerate(ours):
        x = torch.randn(shape)
        expected = layer(x)
        if i % 2:
            layer.compile(backend="eager", fullgraph=True)
            got = layer(x)
        else:
            got = torch.compile(layer, backend="eager", fullgraph=True)(x)
        torch.testing.assert_close(got, expected)


class _EveryFamily(nn.Module):
    """Every 2-D family in a residual chain, then FNet mixing; the sequence families on a 1-D branch."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(FAMILIES[n][0]() for n in FAMILIES if len(FAMILIES[n][1]) == 4)
        self.sequence = nn.ModuleList(FAMILIES[n][0]() for n in ("sgconv", "s4d"))
        self.mix = L.FourierMix()

    def forward(self, image, sequence):
        for layer in self.layers:
            y = layer(image)
            image = y + image if y.shape == image.shape else y
        for layer in self.sequence:
            sequence = layer(sequence) + sequence
        return self.mix(image).sum() + sequence.square().sum()


def test_inductor_forward_matches_eager():
    model = _EveryFamily().eval()
    image, sequence = torch.randn(2, 4, 12, 12), torch.randn(2, 4, 40)
    torch.compiler.reset()
    with torch.no_grad():
        out = torch.compile(copy.deepcopy(model), backend="inductor", fullgraph=True)(image, sequence)
        torch.testing.assert_close(out, model(image, sequence), rtol=1e-4, atol=1e-4)


def _assert_training_step_matches_eager(model: nn.Module, backend: str) -> None:
    """One compiled training step of ``model(image, sequence)`` (a scalar) against eager autograd: the loss, the
    inputs' and every parameter's gradient."""
    compiled = copy.deepcopy(model)
    image, sequence = torch.randn(2, 4, 12, 12, requires_grad=True), torch.randn(2, 4, 40, requires_grad=True)
    torch.compiler.reset()
    out = torch.compile(compiled, backend=backend, fullgraph=True)(image, sequence)
    out.backward()
    grads = (image.grad, sequence.grad)
    image.grad = sequence.grad = None
    expected = model(image, sequence)
    expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads, (image.grad, sequence.grad), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(compiled.named_parameters(), model.parameters()):
        # parameters whose gradient vanishes analytically (a bias before batch norm) compare at the others' scale
        scale = max(q.grad.abs().max().item(), 1.0)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


def test_compiled_backward_matches_eager():
    """The forward and backward graphs torch.compile records (AOTAutograd: what inductor compiles), run as
    recorded, against eager autograd: the FFT product's opaque operators and their gradients included."""
    _assert_training_step_matches_eager(_EveryFamily(), "aot_eager")


def test_inductor_training_step_matches_eager():
    """Inductor's generated code for the backward too (test_compiled_backward_matches_eager runs the recorded
    graphs): the families whose backward inductor generates (DCLS's separable construction, SGConv's upsampling,
    S4D's SSM kernel) beside the opaque operators' backward (the FFT product, DCLS's scatter). (The kernel nets'
    and FlexConv's mask: tests/test_compile_regions.py, under inductor too.)"""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.ModuleList(FAMILIES[n][0]() for n in ("dcls", "dcls_gaussian"))
            self.sequence = nn.ModuleList(FAMILIES[n][0]() for n in ("sgconv", "s4d"))

        def forward(self, image, sequence):
            for layer in self.image:
                image = layer(image).relu() + image
            for layer in self.sequence:
                sequence = layer(sequence).tanh() + sequence
            return image.square().mean() + sequence.square().mean()

    _assert_training_step_matches_eager(Net(), "inductor")


@pytest.mark.parametrize("name", ["fft_depthwise", "niff", "s4d", "flexconv"])
def test_compiled_layer_follows_input_size_changes(name):
    """A new batch or spatial size recompiles (torch.compile then marks the sizes dynamic): plans, kernels sized
    from the input and the product's operators are made for each size, and the outputs stay eager's."""
    make, shape = FAMILIES[name]
    layer = make()
    torch.compiler.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for batch, grow in ((2, 0), (3, 4)):
        x = torch.randn(batch, *shape[1:-1], shape[-1] + grow)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_compiled_layer_keeps_the_batch_dynamic(name):
    """``torch.compile(dynamic=True)``: one graph serves every batch size (a last, smaller batch does not recompile
    the layer), its outputs eager's. torch gives the backend one graph per compilation: counted here."""
    make, shape = FAMILIES[name]
    layer = make()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compiler.reset()
    compiled = torch.compile(layer, backend=counting, dynamic=True, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, *shape[1:])
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)
    assert len(graphs) == 1


def _smaller_inputs(x: torch.Tensor, batches=(3, 2, 4)) -> list[torch.Tensor]:
    """Inputs like ``x`` with other batch sizes and every spatial size at most ``x``'s, each dim cut in turn."""
    cuts = [(2, 0, 1), (0, 3, 0), (3, 1, 2)]
    return [torch.randn(b, x.shape[1], *(n - c for n, c in zip(x.shape[2:], cut))) for b, cut in zip(batches, cuts)]


@pytest.mark.parametrize("name", SIZE_FREE)
def test_compiled_layer_keeps_spatial_sizes_dynamic(name):
    """``torch.compile(dynamic=True)``: one graph serves every input up to the first one's spatial size (the FFT
    grid is planned for it), and a larger input is served too (the FFT paths compile once more, for it). The
    example's sizes are all different: torch gives equal sizes one symbol."""
    make, shape = FAMILIES[name]
    layer = make().eval()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(2, shape[1], *(n - d for d, n in enumerate(shape[2:])))  # e.g. 12 x 11
    torch.compiler.reset()
    compiled = torch.compile(layer, backend=counting, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for v in (x, *_smaller_inputs(x)):
            torch.testing.assert_close(compiled(v), layer(v), rtol=1e-4, atol=1e-5)
        assert len(graphs) == 1
        larger = torch.randn(2, shape[1], *(n + 5 for n in shape[2:]))
        torch.testing.assert_close(compiled(larger), layer(larger), rtol=1e-4, atol=1e-5)


def test_flexconv_crop_is_kept_when_compiled():
    """While a graph is recorded FlexConv applies its whole grid with the samples outside the crop zeroed: the same
    kernel as the eager crop (a narrow mask: eager keeps the centre only), so the same output and gradients."""
    layer = L.FlexConv2d(2, 2, 15, groups=2, mask_init=0.05)
    x = torch.randn(1, 2, 16, 16)
    kernel = layer.construct_kernel()
    assert kernel.shape[-1] < 15  # the eager path crops
    compiled = copy.deepcopy(layer)
    out = torch.compile(compiled, backend="aot_eager", fullgraph=True)(x)
    out.square().sum().backward()
    expected = layer(x)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled.parameters(), layer.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    # the kernel the exported program applies: the eager crop, zero-padded to the whole grid
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)
    pad = (15 - kernel.shape[-1]) // 2
    whole = torch.nn.functional.pad(kernel, (pad,) * 4)
    torch.testing.assert_close(expected, torch.nn.functional.conv2d(x, whole, layer.bias, padding=7, groups=2),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_unbaked_and_baked(name):
    """``torch.export`` with the batch dimension dynamic (a served model's): one program for every batch size, as
    the layer runs eagerly (the planner costs its paths on the example's batch without fixing the graph to it)."""
    layer, x = _layer(name)
    layer.eval()
    inputs = (x, torch.randn(1, *x.shape[1:]), torch.randn(5, *x.shape[1:]))
    with torch.no_grad():
        expected = [layer(v) for v in inputs]
    batch = ({0: torch.export.Dim("batch")},)
    candidates = [torch.export.export(layer, (x,), dynamic_shapes=batch)]
    if isinstance(layer, L.KernelConvNd):  # FourierMix has no kernel to bake
        for native in (False, True):
            baked = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape), native=native)
            candidates.append(torch.export.export(baked, (x,), dynamic_shapes=batch))
    for program in candidates:
        for v, e in zip(inputs, expected):
            torch.testing.assert_close(program.module()(v), e, rtol=1e-4, atol=1e-5)


def _nodes(graph_module: torch.fx.GraphModule) -> list[tuple[str, object]]:
    return [(node.op, node.target) for node in graph_module.graph.nodes]


@pytest.mark.parametrize("name", FAMILIES)
def test_fx_symbolic_trace_records_each_layer_as_one_call(name):
    """``torch.fx.symbolic_trace`` (which torchvision's ``create_feature_extractor``, timm's FX feature extraction
    and FX quantization build on) records a layer as one call, the graph torch's own layers give (it failed: the
    layers read sizes from the ``Proxy`` input); the traced graph's output and gradients are eager's."""
    layer, x = _layer(name)
    net = nn.Sequential(nn.Identity(), layer, nn.Tanh())
    traced = torch.fx.symbolic_trace(copy.deepcopy(net))
    as_torch = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), nn.Identity(), nn.Tanh()))
    assert _nodes(traced) == _nodes(as_torch)
    outputs = []
    for module in (traced, net):
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.square().sum().backward()
        outputs.append([out, xi.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*outputs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_fx_symbolic_trace_of_a_layer_as_the_root_module(name):
    """A layer traced as the root module cannot be recorded as a call of itself (it failed with "'Conv2d' object
    has no attribute ''"): torch.fx's own error for a module it cannot trace, ``TraceError``, naming the way,
    a module that holds the layer, whose traced graph then runs the layer's forward."""
    layer, x = _layer(name)
    with pytest.raises(torch.fx.proxy.TraceError, match=r"root module.*symbolic_trace\(nn.Sequential\(layer\)\)"):
        torch.fx.symbolic_trace(layer)
    traced = torch.fx.symbolic_trace(nn.Sequential(layer))
    assert _nodes(traced) == _nodes(torch.fx.symbolic_trace(nn.Sequential(nn.Identity())))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_jit_script_refuses_naming_the_layer_and_the_ways_that_work(name):
    """``torch.jit.script`` of a layer, or of a model holding one, raises a ``RuntimeError`` (as TorchScript's own
    errors are) naming the layer and what works (it stopped inside the library at the first construct TorchScript
    lacks); the way it names, ``bake(..., native=True)`` then script, gives eager's output where the baked model is
    torch's own convolution, and the same refusal (naming the size check) where the kernel depends on the input size.
    """
    layer, x = _layer(name)
    for target in (layer, nn.Sequential(nn.Identity(), layer)):
        with pytest.raises(RuntimeError, match=rf"torch.jit.script cannot compile {type(layer).__name__}: .*"
                                               r"torch.jit.trace.*bake\(model, native=True\)"):
            torch.jit.script(target)
    if name == "fouriermix":  # nothing to bake
        return
    model = nn.Sequential(layer).eval()
    baked = largekernel.bake(copy.deepcopy(model), input_size=x.shape, native=True)
    if not getattr(layer, "input_dependent", False):  # (torch.nn.Conv2d-based layers: no such attribute)
        scripted = torch.jit.script(baked)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(RuntimeError, match="torch.jit.script cannot compile InputSizeCheck"):
            torch.jit.script(baked)


class _CallsFunctions(nn.Module):
    """A user's module that calls the library's functions, or ``torch.nn.functional.conv2d`` in their place."""

    def __init__(self, torch_only: bool = False):
        super().__init__()
        self.torch_only = torch_only
        self.weight = nn.Parameter(torch.randn(4, 1, 9, 9))
        self.spectrum = nn.Parameter(torch.randn(4, 12, 12, 2))  # real and imaginary parts

    def forward(self, x):
        if self.torch_only:
            return F.conv2d(F.conv2d(x, self.weight, padding=4, groups=4), self.weight, padding=4, groups=4)
        y = largekernel.functional.fft_conv(x, self.weight, padding=4, groups=4)
        y = largekernel.functional.convolve(y, self.weight, None, 1, 4, 1, 4)
        y = largekernel.functional.spectral_filter(y, self.spectrum)
        return largekernel.functional.fourier_mix(y.flatten(2))


def test_fx_symbolic_trace_records_each_function_as_one_call():
    """A user's module that calls ``fft_conv``, ``convolve``, ``spectral_filter`` and ``fourier_mix`` traces them as
    one ``call_function`` node each, as ``torch.nn.functional.conv2d`` is traced (they failed on the ``Proxy``);
    the graph computes eager's output and gradients."""
    module = _CallsFunctions()
    traced = torch.fx.symbolic_trace(module)
    called = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert called == [largekernel.functional.fft_conv, largekernel.functional.convolve,
                      largekernel.functional.spectral_filter, largekernel.functional.fourier_mix]
    as_torch = torch.fx.symbolic_trace(_CallsFunctions(torch_only=True))
    assert [op for op, _ in _nodes(as_torch)][:4] == [op for op, _ in _nodes(traced)][:4]  # x, weight, conv, conv
    x = torch.randn(2, 4, 12, 12)
    results = []
    for m in (traced, module):
        m.zero_grad()
        out = m(x)
        out.square().sum().backward()
        results.append([out, module.weight.grad.clone(), module.spectrum.grad.clone()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fx_symbolic_trace_of_a_layer_with_hooks():
    """Hooks on a layer would be traced into the graph and run again by the layer: refused with the way out, a
    tracer that takes the class as a leaf module, which then runs them once, as for torch's ``Conv2d``."""
    def doubled(module, args, out):
        return 2 * out

    class LeafTracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, L.DclsConv2d) or super().is_leaf_module(m, qualname)

    x = torch.randn(2, 4, 12, 12)
    for conv in (L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4), nn.Conv2d(4, 4, 9, padding=4, groups=4)):
        net = nn.Sequential(conv, nn.Tanh())
        conv.register_forward_hook(doubled)
        if isinstance(conv, L.DclsConv2d):
            with pytest.raises(RuntimeError, match="forward hooks: they would run twice.*leaf_modules"):
                torch.fx.symbolic_trace(net)
        traced = torch.fx.GraphModule(net, LeafTracer().trace(net))
        assert _nodes(traced)[1] == ("call_module", "0")
        with torch.no_grad():
            torch.testing.assert_close(traced(x), net(x), rtol=0, atol=0)  # eager runs the hook once


@pytest.mark.parametrize("name", FAMILIES)
def test_jit_trace_trains_and_infers_as_eager(name):
    """``torch.jit.trace`` (older deployment code, TorchScript runtimes): the traced layer passes the tracer's own
    check (it traces twice and compares), then on another batch gives eager's output, and in training eager's
    gradients (the trace and an untraced copy share nothing). 13 of 17 families failed to trace (sizes read
    under the tracer are tensors; the autograd Functions cannot be recorded; NIFF's kept grid entered one trace
    and not the other)."""
    torch.manual_seed(0)
    layer, x = _layer(name)
    twin = copy.deepcopy(layer)
    traced = torch.jit.trace(layer, (x,))
    other = torch.randn(3, *x.shape[1:])
    a, b = other.clone().requires_grad_(), other.clone().requires_grad_()
    y, expected = traced(a), twin(b)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    y.square().sum().backward()
    expected.square().sum().backward()
    pairs = [("input", a, b), *((n, p, q) for (n, p), q in zip(layer.named_parameters(), twin.parameters()))]
    scale = max(t.grad.abs().max().item() for _, _, t in pairs if t.grad is not None)
    for n, p, q in pairs:
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{n}: {m}")
    layer.eval(), twin.eval()
    twin.load_state_dict(layer.state_dict())  # batch norms' statistics, updated by the tracer's runs too
    with torch.no_grad():
        traced = torch.jit.trace(layer, (x,))
        torch.testing.assert_close(traced(other), twin(other), rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _dynamic_sizes(x: torch.Tensor, bounded: bool = True) -> tuple[dict, ...]:
    """``dynamic_shapes`` for ``x``: the batch and every spatial dim dynamic, the spatial ones from about half
    ``x``'s (outputs of a size 1 would be fixed, as with torch's own convolutions) up to (``bounded``) ``x``'s."""
    spatial = {i: torch.export.Dim(f"size{i}", min=n // 2 + 1, max=n if bounded else None)
               for i, n in enumerate(x.shape) if i >= 2}
    return ({0: torch.export.Dim("batch"), **spatial},)


@pytest.mark.parametrize("name", SIZE_FREE)
def test_export_serves_every_spatial_size_up_to_the_example(name):
    """``torch.export`` with the batch and the spatial sizes dynamic, each spatial size up to the example's (the
    FFT grid is planned for it): one program for all those inputs, unbaked and baked, outputs eager's."""
    layer, x = _layer(name)
    layer.eval()
    inputs = _smaller_inputs(x)
    with torch.no_grad():
        expected = [layer(v) for v in inputs]
    candidates = [torch.export.export(layer, (x,), dynamic_shapes=_dynamic_sizes(x))]
    if isinstance(layer, L.KernelConvNd):
        for native in (False, True):
            baked = largekernel.bake(copy.deepcopy(layer), native=native)
            candidates.append(torch.export.export(baked, (x,), dynamic_shapes=_dynamic_sizes(x)))
    for program in candidates:
        for v, e in zip(inputs, expected):
            torch.testing.assert_close(program.module()(v), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SIZED_FROM_INPUT)
def test_native_bake_refuses_other_sizes_as_the_layer_baked_for_the_engine(name):
    """A kernel sized from the input serves the size it was baked for. Baked for the engine, the convolution
    refuses other sizes; baked ``native=True``, torch's convolution ran on any (a NIFF filter baked for one size
    applied to another, silently): now a size check stands in front of it. Outputs: the layer's."""
    layer, x = _layer(name)
    layer.eval()
    larger = torch.randn(*x.shape[:-1], x.shape[-1] + 1)  # refused whether a baked layer serves exactly or up to
    engine = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape))
    native = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape), native=True)
    again = largekernel.bake(copy.deepcopy(engine), native=True)  # the engine's baked convolution, made torch's
    for baked in (engine, native, again):
        if baked is not engine:
            assert not any(isinstance(m, L.Conv1d | L.Conv2d) for m in baked.modules())
        torch.testing.assert_close(baked(x), layer(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="baked from a layer whose kernel depends on the input size"):
            baked(larger)


@pytest.mark.parametrize("name", SIZED_FROM_INPUT)
def test_export_refuses_dynamic_sizes_for_kernels_sized_from_the_input(name):
    """A kernel sized from the input fixes the spatial size: ``torch.export`` says so for a dynamic one (the batch
    stays dynamic, above)."""
    layer, x = _layer(name)
    with pytest.raises(Exception, match="specialized"):
        torch.export.export(layer.eval(), (x,), dynamic_shapes=_dynamic_sizes(x))


def test_fft_path_export_names_the_largest_size_its_grid_serves():
    """The FFT path's grid is planned for the example: an unbounded spatial dimension is refused with the bound to
    give (torch.export's suggestion), the direct path takes it as torch's convolution does."""
    x = torch.randn(2, 4, 32, 32)
    fft = L.Conv2d(4, 4, 7, padding=3, groups=4, backend="fft").eval()
    with pytest.raises(Exception, match=r"max=\d+"):
        torch.export.export(fft, (x,), dynamic_shapes=_dynamic_sizes(x, bounded=False))
    direct = L.Conv2d(4, 4, 7, padding=3, groups=4, backend="direct").eval()
    program = torch.export.export(direct, (x,), dynamic_shapes=_dynamic_sizes(x, bounded=False))
    v = torch.randn(3, 4, 40, 21)
    torch.testing.assert_close(program.module()(v), torch.nn.functional.conv2d(v, direct.weight, direct.bias,
                                                                               padding=3, groups=4))


# pads: the same padding as F.pad's list (last dim first), for the reference
@pytest.mark.parametrize("nd,channels,groups,kwargs,pads,options", [
    (2, 16, 1, dict(padding=2), [2] * 4, {}),  # a channel contraction (batched matrix products over the frequencies)
    (1, 8, 8, dict(padding=2), [2] * 2, {"segments": True}),  # overlap-save segments where the length is fixed
    (3, 4, 4, dict(padding=2), [2] * 6, {"packed": False}),  # real transforms, per channel
    (2, 8, 8, dict(padding=2), [2] * 4, {"channel_block": 1}),  # packed channel pairs, one pair per block
    (2, 8, 4, dict(stride=2, padding=1), [1] * 4, {}),  # decimation in the frequency domain
    (2, 4, 4, dict(dilation=3, padding=(6, 5)), [5, 5, 6, 6], {}),
    (2, 4, 4, dict(padding="valid"), [0] * 4, {}),
    (2, 4, 4, dict(padding=2, padding_mode="reflect"), [2] * 4, {}),  # padding materialised first
    (1, 4, 2, dict(padding=((4, 0),)), [4, 0], {}),  # causal
])
def test_fft_paths_export_with_dynamic_sizes(nd, channels, groups, kwargs, pads, options):
    """The FFT path's products under ``torch.export`` with a dynamic batch and spatial sizes up to the example's,
    against torch's convolution (after ``F.pad``) at other batch and spatial sizes."""
    from largekernel.functional import planner_options

    layer = (L.Conv1d, L.Conv2d, L.Conv3d)[nd - 1](channels, channels, 5, groups=groups, backend="fft", **kwargs)
    size = {1: (64,), 2: (13, 12), 3: (8, 7, 9)}[nd]
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[nd - 1]
    mode = {"zeros": "constant"}.get(kwargs.get("padding_mode", "zeros"), kwargs.get("padding_mode"))
    x = torch.randn(2, channels, *size)
    with planner_options(**options):
        program = torch.export.export(layer, (x,), dynamic_shapes=_dynamic_sizes(x))
    for v in (*_smaller_inputs(x), torch.randn(1, *x.shape[1:])):
        expected = conv(torch.nn.functional.pad(v, pads, mode=mode), layer.weight, layer.bias, kwargs.get("stride", 1),
                        0, kwargs.get("dilation", 1), groups)
        torch.testing.assert_close(program.module()(v), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_export_unbaked_and_baked(name, run_onnx):
    """``torch.onnx.export`` records complex-free graphs (the spectral product and S4D's kernel in real arithmetic,
    FourierMix's two-sided transform): ONNX Runtime runs every family, unbaked and baked to the FFT path, exported
    with a dynamic batch and run on two batch sizes; where the kernel is not sized from the input, with dynamic
    spatial sizes too, run on smaller inputs."""
    layer, x = _layer(name)
    layer.eval()
    spatial = name in SIZE_FREE
    inputs = [x, torch.randn(3, *x.shape[1:]), *(_smaller_inputs(x)[::2] if spatial else [])]
    with torch.no_grad():
        expected = [layer(v) for v in inputs]
    candidates = {"unbaked": layer}
    if isinstance(layer, L.KernelConvNd):  # FourierMix has no kernel to bake
        candidates["baked"] = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape))
    for kind, module in candidates.items():
        for out, want in zip(run_onnx(module, *inputs, name=kind, spatial=spatial), expected):
            error = (out - want).abs().max() / want.abs().max()
            assert out.shape == want.shape and error < 1e-5, (name, kind, out.shape, error.item())


@pytest.mark.parametrize("name", ["fft_depthwise", "fft_dense", "fft_strided", "niff", "s4d", "fouriermix"])
def test_onnx_torchscript_exporter_refuses_ffts_naming_what_exports(name, tmp_path):
    """ONNX's TorchScript-based exporter (``dynamo=False``) has no operator for torch's FFTs: the FFT paths failed
    at their first transform with torch's "Exporting the operator 'aten::fft_rfftn' to ONNX opset version 20 is not
    supported", naming neither the layer's path nor the exporter that takes it. The error is of the same class (code
    catching the exporter's errors catches it) and names ``dynamo=True``; where there is a kernel, the model baked
    with ``native=True`` exports with that exporter too, and ONNX Runtime gives the layer's output."""
    import onnxruntime

    layer, x = _layer(name)
    layer.eval()
    if name == "s4d":  # the FFT path, as a long sequence takes it
        layer, x = L.S4DConv1d(4, kernel_size=512).eval(), torch.randn(2, 4, 512)
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError, match=r"dynamo=True"):
        torch.onnx.export(layer, (x,), str(tmp_path / "unbaked.onnx"), dynamo=False)
    if isinstance(layer, L.KernelConvNd):
        baked = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape), native=True)
        torch.onnx.export(baked, (x,), str(tmp_path / "baked.onnx"), dynamo=False)
        session = onnxruntime.InferenceSession(str(tmp_path / "baked.onnx"), providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(out, layer(x), rtol=1e-4, atol=1e-5)
