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
    "replknet": (lambda: L.RepLKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "slak": (lambda: L.SLaKConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "unireplknet": (lambda: L.DilatedReparamConv2d(4, 4, 9, groups=4), (2, 4, 12, 12)),
    "fouriermix": (lambda: L.FourierMix(), (2, 10, 8)),
}


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
    S4D's SSM kernel, FlexConv's mask) beside the opaque operators' backward (the FFT product, DCLS's scatter)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.ModuleList(FAMILIES[n][0]() for n in ("dcls", "dcls_gaussian", "flexconv"))
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


@pytest.mark.parametrize("nd,channels,groups,options", [
    (2, 16, 1, {}),  # a channel contraction (batched matrix products over the frequencies)
    (1, 8, 8, {"segments": True}),  # overlap-save segments
    (3, 4, 4, {"packed": False}),  # real transforms, per channel
])
def test_fft_paths_export_with_a_dynamic_batch(nd, channels, groups, options):
    """The FFT path's products under ``torch.export`` with a dynamic batch, against torch's convolution at other
    batch sizes."""
    from largekernel.functional import planner_options

    layer = (L.Conv1d, L.Conv2d, L.Conv3d)[nd - 1](channels, channels, 5, padding=2, groups=groups, backend="fft")
    size = {1: (64,), 2: (12, 12), 3: (6, 6, 6)}[nd]
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[nd - 1]
    with planner_options(**options):
        program = torch.export.export(layer, (torch.randn(2, channels, *size),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    for batch in (1, 3):
        x = torch.randn(batch, channels, *size)
        torch.testing.assert_close(program.module()(x), conv(x, layer.weight, layer.bias, padding=2, groups=groups),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_export_unbaked_and_baked(name, run_onnx):
    """``torch.onnx.export`` records complex-free graphs (the spectral product and S4D's kernel in real arithmetic,
    FourierMix's one-sided transform): ONNX Runtime runs every family, unbaked and baked to the FFT path, exported
    with a dynamic batch and run on two batch sizes."""
    layer, x = _layer(name)
    layer.eval()
    with torch.no_grad():
        expected = layer(x)
    candidates = {"unbaked": layer}
    if isinstance(layer, L.KernelConvNd):  # FourierMix has no kernel to bake
        candidates["baked"] = largekernel.bake(copy.deepcopy(layer), input_size=tuple(x.shape))
    other = torch.randn(3, *x.shape[1:])  # the exported batch is dynamic
    with torch.no_grad():
        expected_other = layer(other)
    for kind, module in candidates.items():
        for out, want in zip(run_onnx(module, x, other, name=kind), (expected, expected_other)):
            error = (out - want).abs().max() / want.abs().max()
            assert out.shape == want.shape and error < 1e-5, (name, kind, out.shape, error.item())
