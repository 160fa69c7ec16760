"""Under torch.compile the library's layers call operators of its own (``torch.library.custom_op``, named
``largekernel::<name>_<tag>``: docs/deploy.md). torch's own checker of such operators, ``torch.library.opcheck``,
checks each one here on the very arguments a compiled layer passes it: the schema (no argument mutated, no output
aliasing an input), the autograd registration, the fake implementation against the real outputs (shapes, strides,
dtypes: what a compiled graph lays its buffers out by), and the forward and backward traced by AOTAutograd against
eager mode. The arguments are recorded by a ``torch.compile`` backend that runs Dynamo's graph with
``torch.fx.Interpreter``, noting every call of a ``largekernel`` operator."""

import pytest
import torch
import torch.fx

import largekernel.nn as L


def _input(*shape, channels_last=False, dtype=torch.float32, grad=True):
    x = torch.randn(shape, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    return x.requires_grad_(grad)


# (layer, input, the operators its compiled forward calls: their names without the source tag)
CASES = {
    "Conv2d fft, depthwise": (lambda: L.Conv2d(4, 4, 9, padding=4, groups=4, backend="fft"),
                              lambda: _input(2, 4, 12, 12), {"spectral_product"}),
    "Conv2d fft, depthwise, channels_last": (lambda: L.Conv2d(4, 4, 9, padding=4, groups=4, backend="fft"),
                                             lambda: _input(2, 4, 12, 12, channels_last=True),
                                             {"spectral_product"}),
    # a network's first layer: no gradient for its input, the weight's and bias's only
    "Conv2d fft, input without gradient": (lambda: L.Conv2d(3, 4, 9, padding=4, backend="fft"),
                                           lambda: _input(2, 3, 12, 12, grad=False), {"spectral_product"}),
    "Conv2d fft, dense, bias, stride 2": (lambda: L.Conv2d(3, 5, 7, stride=2, padding=3, backend="fft"),
                                          lambda: _input(2, 3, 11, 10), {"spectral_product"}),
    "Conv1d fft, circular, float64": (lambda: L.Conv1d(3, 6, 15, padding=7, groups=3, padding_mode="circular",
                                                       backend="fft", dtype=torch.float64),
                                      lambda: _input(2, 3, 40, dtype=torch.float64), {"spectral_product"}),
    "Conv2d fft, reflect padding": (lambda: L.Conv2d(4, 4, 9, padding=4, groups=4, padding_mode="reflect",
                                                     backend="fft"), lambda: _input(2, 4, 12, 12), {"spectral_product"}),
    "Conv2d fft, bfloat16": (lambda: L.Conv2d(4, 4, 9, padding=4, groups=4, backend="fft", dtype=torch.bfloat16),
                             lambda: _input(2, 4, 12, 12, dtype=torch.bfloat16), {"spectral_product"}),
    "Conv3d fft": (lambda: L.Conv3d(2, 4, 5, padding=2, backend="fft"), lambda: _input(2, 2, 6, 7, 8),
                   {"spectral_product"}),
    "DclsConv2d bilinear": (lambda: L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4), lambda: _input(2, 4, 12, 12),
                            {"dcls_scatter_kernel"}),
    "DclsConv2d bicubic, grouped": (lambda: L.DclsConv2d(4, 6, 3, 7, padding=3, groups=2, interpolation="bicubic"),
                                    lambda: _input(2, 4, 10, 10), {"dcls_scatter_kernel"}),
    "DclsConv3d": (lambda: L.DclsConv3d(2, 2, 3, 5, padding=2, groups=2), lambda: _input(2, 2, 6, 6, 6),
                   {"dcls_scatter_kernel"}),
    "NIFFConv2d": (lambda: L.NIFFConv2d(4, 4), lambda: _input(2, 4, 12, 12), {"niff_filter", "spectral_product"}),
    "NIFFConv2d, channels_last": (lambda: L.NIFFConv2d(4, 4),
                                  lambda: _input(2, 4, 12, 12, channels_last=True),
                                  {"niff_filter", "spectral_product"}),
    "NIFFConv1d": (lambda: L.NIFFConv1d(4, 4), lambda: _input(2, 4, 30), {"niff_filter", "spectral_product"}),
    "NIFFConv3d": (lambda: L.NIFFConv3d(2, 2), lambda: _input(2, 2, 6, 7, 8), {"niff_filter", "spectral_product"}),
    # a long causal kernel: the FFT path
    "CKConv1d": (lambda: L.CKConv1d(8, 8, 1024, causal=True), lambda: _input(2, 8, 1024), {"spectral_product"}),
    # a cropping kernel net of 2**15 values or more: the whole layer as one eager operator
    "FlexConv1d, eager layer": (lambda: L.FlexConv1d(8, 8, 1024, causal=True), lambda: _input(2, 8, 1024),
                                {"eager_layer"}),
    "FlexConv2d, eager layer, channels_last": (lambda: L.FlexConv2d(8, 8, 33),
                                               lambda: _input(2, 8, 20, 20, channels_last=True),
                                               {"eager_layer"}),
    "FlexConv3d, eager layer": (lambda: L.FlexConv3d(4, 4, 17), lambda: _input(2, 4, 8, 8, 8), {"eager_layer"}),
    # a traced kernel net, its whole grid convolved through an operator that crops it first
    "FlexConv2d, cropped convolution": (lambda: L.FlexConv2d(32, 32, 31, groups=32),
                                        lambda: _input(2, 32, 32, 32), {"eager_layer"}),
}


def _recorded_calls(layer: torch.nn.Module, x: torch.Tensor) -> list:
    """(operator, args, kwargs) of every ``largekernel`` operator the compiled layer's forward calls."""
    calls = []

    class Recorder(torch.fx.Interpreter):
        def call_function(self, target, args, kwargs):
            op = getattr(target, "default", target)  # Dynamo's graph calls an operator's packet
            if getattr(op, "namespace", None) == "largekernel":
                calls.append((op, args, kwargs))
            return super().call_function(target, args, kwargs)

    def backend(graph_module, example_inputs):
        return lambda *args: Recorder(graph_module).run(*args)

    torch.compiler.reset()
    torch.compile(layer, backend=backend, fullgraph=True)(x).sum().backward()
    return calls


@pytest.mark.parametrize("case", CASES)
def test_operators_pass_torchs_opcheck(case):
    make, make_input, expected = CASES[case]
    torch.manual_seed(0)
    layer = make()  # alive while its operators are called (the eager layer's operator finds it by a key)
    calls = _recorded_calls(layer, make_input())
    assert {op.name().split("::")[1].rsplit("_", 1)[0] for op, _, _ in calls} == expected
    for op, args, kwargs in calls:
        # The eager layer's operator returns, beside the output, a ticket: a handle on the autograd graph it
        # recorded, new at every call by design, which opcheck's AOTAutograd check (every output of an eager call
        # equal to a traced call's) cannot allow; its output is checked below, its gradients against eager mode
        # by test_flexconv's compiled tests.
        utils = ("test_schema", "test_autograd_registration", "test_faketensor") if "eager_layer" in op.name() \
            else ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
        result = torch.library.opcheck(op, args, kwargs, test_utils=utils)
        assert result == dict.fromkeys(utils, "SUCCESS"), (op, result)


def test_eager_layer_operator_output_depends_on_its_inputs_only():
    """What opcheck's AOTAutograd comparison skips for the eager layer's operator: called twice on the same
    arguments, its output is the same (only the ticket differs) and equals the layer's eager forward."""
    torch.manual_seed(0)
    layer = L.FlexConv1d(8, 8, 1024, causal=True)
    x = torch.randn(2, 8, 1024, requires_grad=True)
    (op, args, kwargs), = _recorded_calls(layer, x)
    first, second = op(*args, **kwargs), op(*args, **kwargs)
    assert torch.equal(first[0], second[0])
    torch.testing.assert_close(first[0], layer(x), rtol=0, atol=0)


def test_eager_layer_operator_without_gradients_computes_with_the_tensors_it_is_given():
    """Called with no gradient asked for (a compiled layer under torch.no_grad), the eager layer's operator gives
    the layer's eager forward on the tensors it is passed: the layer's own (whatever their requires_grad), or other
    tensors in their place, as torch.func.functional_call would put them."""
    torch.manual_seed(0)
    layer = L.FlexConv1d(8, 8, 1024, causal=True)
    x = torch.randn(2, 8, 1024)
    (op, (_, tensors, *rest), kwargs), = _recorded_calls(layer, x.requires_grad_())
    key, method, needs, shape = rest
    names = [name for name, _ in (*layer.named_parameters(), *layer.named_buffers())]
    others = [t.detach() + 0.1 * torch.randn_like(t) if t.is_floating_point() else t for t in tensors]
    with torch.no_grad():
        own = op(x, tensors, key, method, [False] * len(needs), shape, **kwargs)[0]
        moved = op(x, others, key, method, [False] * len(needs), shape, **kwargs)[0]
        torch.testing.assert_close(own, layer(x), rtol=0, atol=0)
        expected = torch.func.functional_call(layer, dict(zip(names, others)), (x,))
    assert not torch.equal(expected, own)  # the other tensors change the output
    torch.testing.assert_close(moved, expected, rtol=0, atol=0)
