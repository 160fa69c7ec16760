import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import fails_midway
from torch import nn

import largekernel
from largekernel.surgery import ConvertReport, DynamicSamePad, is_depthwise_spatial, load_dense
from largekernel.surgery.cli import main
from largekernel.models import create_model
from largekernel import nn as lknn
from largekernel.nn import CKConv2d, DclsConv2d, FlexConv2d, NIFFConv2d


class Foreign(nn.Module):
    """A hand-written net of the kind convert() must handle: mixed convs, a shared module, containers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)  # dense: kept
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)  # depthwise: replaced
        self.alias = self.dw  # the same module again: must stay one module
        self.pw = nn.Conv2d(8, 8, 1, groups=8)  # depthwise but 1x1: kept
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise: kept
        self.multiplier = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # channel multiplier: kept
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(16, 16, 7, padding=3, groups=16, bias=False), nn.GELU()),  # replaced
            nn.Sequential(nn.Conv2d(16, 16, (3, 5), padding=(1, 2), groups=16), nn.GELU()),  # replaced
        ])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pw(self.alias(self.dw(self.stem(x))))
        x = self.multiplier(self.grouped(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


_DEPTHWISE = {"dw", "blocks.0.0", "blocks.1.0"}  # "alias" is "dw": replaced with it, reported once


def test_default_replaces_exactly_the_depthwise_spatial_convs():
    model = Foreign()
    before = {name: m for name, m in model.named_modules(remove_duplicate=False)}
    _, report = largekernel.convert(model, "dcls", report=True, kernel_size=9, kernel_count=6)
    assert {r.name for r in report.replaced} == _DEPTHWISE
    after = dict(model.named_modules(remove_duplicate=False))
    for name, module in before.items():
        if name in _DEPTHWISE | {"alias"}:
            assert isinstance(after[name], DclsConv2d) and after[name].dilated_kernel_size == (9, 9)
        elif name.count(".") <= 2 and name in after and isinstance(module, nn.Conv2d):
            assert after[name] is module
    assert model.alias is model.dw
    assert model.blocks[0][0].bias is None and model.dw.bias is not None
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 4)
    # Parameter counts in the report, against a direct count.
    assert report.params_after == sum(p.numel() for p in model.parameters())
    # Each DCLS element costs 3 parameters (weight, 2 positions) per channel; biases are kept as they were.
    assert report.params_before - report.params_after == (8 * 25 - 8 * 6 * 3) + (16 * 49 - 16 * 6 * 3) + (
        16 * 15 - 16 * 6 * 3)


def test_pattern_and_callable_selection():
    model = Foreign()
    _, report = largekernel.convert(model, "fft", "blocks.*", report=True)
    assert {r.name for r in report.replaced} == {"blocks.0.0", "blocks.1.0"}
    model = Foreign()
    _, report = largekernel.convert(model, "dilated", lambda name, m: m.groups == 2, report=True, kernel_size=5)
    assert [r.name for r in report.replaced] == ["grouped"]
    assert model.grouped.dilation == (2, 2) and model.grouped.kernel_size == (3, 3)
    assert is_depthwise_spatial(nn.Conv1d(4, 4, 3, groups=4)) and not is_depthwise_spatial(nn.Conv1d(4, 4, 1, groups=4))


def test_fft_copies_kernel_and_round_trip_is_exact():
    torch.manual_seed(0)
    model = Foreign().double().eval()
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    reference = model(x)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    largekernel.convert(model, "fft")
    assert model.dw.backend == "fft" and model.dw.weight.dtype == torch.float64
    torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)
    largekernel.convert(model, "conv", backend="direct")
    assert model.dw.backend == "direct"
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    torch.testing.assert_close(model(x), reference, rtol=0, atol=0)


def test_non_square_kernel_keeps_its_box_and_cli_dispatch(capsys):
    from largekernel.cli import main as cli_main

    model = Foreign()
    largekernel.convert(model, "dcls", "blocks.1.0")
    assert model.blocks[1][0].dilated_kernel_size == (3, 5) and model.blocks[1][0].kernel_count == 10
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 4)
    assert cli_main(["convert", "--model", "dwnet1d_tiny", "--to", "fft"]) == 0
    assert "converted 2 layer(s) to 'fft'" in capsys.readouterr().out


def test_dense_larger_kernel_is_fresh_same_size_layer_and_copies_bias():
    model = Foreign()
    bias = model.dw.bias.detach().clone()
    largekernel.convert(model, "conv", "dw", kernel_size=11)
    assert model.dw.kernel_size == (11, 11) and model.dw.padding == (5, 5)
    assert torch.equal(model.dw.bias, bias)


@pytest.mark.parametrize("to,kwargs", [("dcls", dict(kernel_size=17)), ("flexconv", {}), ("ckconv", {})])
def test_iso_params_within_one_percent(to, kwargs):
    model = create_model("convnext_atto", num_classes=10)
    original = sum(p.numel() for p in model.parameters())
    depthwise = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if is_depthwise_spatial(m))
    _, report = largekernel.convert(model, to, iso_params=True, report=True, **kwargs)
    converted = sum(p.numel() for p in model.parameters())
    assert report.params_before == original and report.params_after == converted
    assert len(report.replaced) == 12
    # The depthwise layers alone within 1% (a stricter test than the whole model).
    replaced = sum(r.params_after for r in report.replaced)
    assert abs(replaced - depthwise) <= 0.01 * depthwise
    assert abs(converted - original) <= 0.01 * original


def test_iso_params_dcls_kernel_count_formula():
    # One depthwise 7x7 layer of 40 channels with bias: 40 * 49 + 40 = 2000 parameters; a 2-D DCLS element
    # costs 3 (weight + 2 positions) per channel, so 16 elements give 40 * 48 + 40 = 1960 (17 would be 2080).
    net = nn.Sequential(nn.Conv2d(40, 40, 7, padding=3, groups=40))
    largekernel.convert(net, "dcls", iso_params=True, kernel_size=17)
    assert net[0].kernel_count == 16


def test_converted_model_trains_and_keeps_mode_and_device():
    model = create_model("dwnet2d_tiny", num_classes=3).train()
    largekernel.convert(model, "dcls", kernel_count=5)
    assert all(m.training for m in model.modules())
    out = model(torch.randn(4, 1, 8, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("to,kwargs", [("dcls", dict(kernel_size=9, kernel_count=6, interpolation="gaussian")),
                                       ("flexconv", {}), ("ckconv", {}), ("niff", {})])
def test_bake_is_equivalent_and_exports(to, kwargs):
    model = create_model("dwnet2d_tiny", num_classes=5).eval()
    largekernel.convert(model, to, **kwargs)
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    learnable = (DclsConv2d, FlexConv2d, CKConv2d, NIFFConv2d)
    assert any(isinstance(m, learnable) for m in model.modules())
    largekernel.bake(model, input_size=(1, 1, 8, 8))
    assert not any(isinstance(m, learnable) for m in model.modules())
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    assert spatial and all(type(m).__module__ in ("torch.nn.modules.conv", "largekernel.nn.conv") for m in spatial)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)
    other = torch.randn(3, 1, 8, 8)  # the exported batch is dynamic
    torch.testing.assert_close(program.module()(other), model(other), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("to,kwargs", [("dcls", dict(kernel_size=9, kernel_count=6)), ("flexconv", {}),
                                       ("fft", {})])
def test_converted_model_exports_with_dynamic_sizes(to, kwargs, tmp_path):
    """A converted model, unbaked through ``torch.export`` and baked through ONNX Runtime, with the batch and the
    image size dynamic (up to the example's, for which the FFT grids are planned): one program serves smaller
    images of any shape, as the model does eagerly."""
    import onnxruntime

    model = create_model("dwnet2d_tiny", num_classes=5).eval()
    largekernel.convert(model, to, **kwargs)
    x = torch.randn(2, 1, 16, 16)
    dims = ({0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=8, max=16),
             3: torch.export.Dim("width", min=8, max=16)},)
    others = [torch.randn(3, 1, 12, 16), torch.randn(1, 1, 16, 9), torch.randn(2, 1, 10, 13)]
    with torch.no_grad():
        expected = [model(v) for v in others]
    program = torch.export.export(model, (x,), dynamic_shapes=dims)
    for v, e in zip(others, expected):
        torch.testing.assert_close(program.module()(v), e, rtol=1e-4, atol=1e-5)
    largekernel.bake(model)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dims).save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for v, e in zip(others, expected):
        (out,) = session.run(None, {session.get_inputs()[0].name: v.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), e, rtol=1e-4, atol=1e-5)


def test_bake_single_layer_and_input_size_errors():
    layer = DclsConv2d(4, 4, 5, 7, padding=3, groups=4)
    baked = largekernel.bake(layer)
    x = torch.randn(1, 4, 10, 10)
    assert isinstance(baked, nn.Conv2d)
    # Against torch's own conv applied to the dense kernel the layer builds.
    torch.testing.assert_close(baked(x), F.conv2d(x, layer.construct_kernel(), layer.bias, padding=3, groups=4))
    model = create_model("dwnet2d_tiny", conv="niff")
    with pytest.raises(ValueError, match=r"needs input_size .*blocks\.0\.dwconv"):
        largekernel.bake(model)
    with pytest.raises(ValueError, match="input_size must be a sequence of positive ints"):
        largekernel.bake(model, input_size=(1, -1, 8, 8))
    # The spatial size alone (what layer.bake() takes): an error naming input_size and what it is, not conv2d's
    with pytest.raises(ValueError, match=r"input_size \(8, 8\): the model failed .* batch dimension included"):
        largekernel.bake(model, input_size=(8, 8))
    with pytest.raises(ValueError, match=r"input_size must be the shape of the layer's whole input .* 4 ints for a "
                                         r"NIFFConv2d, got \(8, 8\)"):
        largekernel.bake(NIFFConv2d(4), input_size=(8, 8))


@pytest.mark.parametrize("to", ["fft", "conv", "dilated"])
def test_native_bake_leaves_torchs_own_convolutions(to):
    """``convert(..., "fft" | "conv" | "dilated")`` puts ``largekernel.nn.Conv2d`` layers in a model; baked with
    ``native=True`` (for ONNX, TensorRT and other runtimes) they become torch's own, as the learnable layers do.
    Reference: torch's ``F.conv2d`` on each original layer's weight and arguments, per-side padding by ``F.pad``."""
    model = create_model("dwnet2d_tiny", num_classes=5).eval()
    largekernel.convert(model, to)
    ours = {name: m for name, m in model.named_modules() if type(m).__module__ == "largekernel.nn.conv"}
    assert ours
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: inputs.__setitem__(name, a[0]))
             for name, m in ours.items()]
    model(x)
    for h in hooks:
        h.remove()
    largekernel.bake(model, native=True)
    modules = dict(model.named_modules())
    assert not any(type(m).__module__ == "largekernel.nn.conv" and isinstance(m, nn.Conv2d) for m in modules.values())
    for name, old in ours.items():
        new = modules[name]
        conv = new[-1] if isinstance(new, nn.Sequential) else new
        assert type(conv) is nn.Conv2d
        padding, v = old.padding, inputs[name]
        assert old.padding_mode == "zeros"
        if padding and isinstance(padding[0], tuple):
            v, padding = F.pad(v, [p for pair in reversed(padding) for p in pair]), 0
        reference = F.conv2d(v, old.weight, old.bias, old.stride, padding, old.dilation, old.groups)
        torch.testing.assert_close(new(inputs[name]), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    layer = lknn.Conv2d(4, 4, 5, padding=2, backend="fft")
    assert type(largekernel.bake(layer, native=True)) is nn.Conv2d  # a layer on its own too


def test_bad_arguments():
    with pytest.raises(ValueError, match="to must be one of .* got 'dense'"):
        largekernel.convert(Foreign(), "dense")
    with pytest.raises(TypeError, match="which must be None, a module-name pattern"):
        largekernel.convert(Foreign(), "fft", which=3)
    with pytest.raises(ValueError, match=r"iso_params=True tunes a family's size knob; to='fft' has none"):
        largekernel.convert(Foreign(), "fft", iso_params=True)
    with pytest.raises(ValueError, match="chooses kernel_count itself"):
        largekernel.convert(Foreign(), "dcls", iso_params=True, kernel_count=3)


def test_cli_convert_and_bake(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["--model", "dwnet2d_tiny", "--model-kwargs", '{"num_classes": 4}', "--to", "dcls",
                 "--iso-params", "--layer-kwargs", '{"kernel_size": 9}', "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converted 2 layer(s) to 'dcls'" in text and "blocks.0.dwconv" in text
    model = torch.load(out, weights_only=False)
    assert isinstance(model.blocks[0].dwconv, DclsConv2d)
    exported = tmp_path / "model.pt2"
    assert main(["--model", "dwnet2d_tiny", "--to", "flexconv", "--bake", "--input-size", "1,1,8,8",
                 "--out", str(exported)]) == 0
    text = capsys.readouterr().out
    assert "baked 2 learnable-kernel layer(s)" in text and "FLOPs" in text
    program = torch.export.load(str(exported))
    assert program.module()(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert main(["--model", "dwnet2d_tiny"]) == 2
    plain = tmp_path / "plain.pt"
    assert main(["--model", "dwnet2d_tiny", "--to", "fft", "--bake", "--native", "--out", str(plain)]) == 0
    assert "(torch's own)" in capsys.readouterr().out
    spatial = [m for m in torch.load(plain, weights_only=False).modules()
               if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1]
    assert spatial and all(type(m) is nn.Conv2d for m in spatial)
    assert main(["--model", "dwnet2d_tiny", "--to", "fft", "--native"]) == 2
    assert "--native goes with --bake" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expected", [
    (["--model", "nosuch", "--to", "fft"], "--model / --model-kwargs: unknown model name 'nosuch'"),
    (["--model", "dwnet2d_tiny", "--to", "nosuch"], "argument --to: invalid choice: 'nosuch'"),
    (["--checkpoint", "{tmp}/none", "--bake"], "--checkpoint: {tmp}/none: no checkpoint found"),
    (["--model", "dwnet2d_tiny", "--model-kwargs", '{"foo": 1}', "--to", "fft"],
     "--model / --model-kwargs: DWNet.__init__() got an unexpected keyword argument 'foo'"),
    (["--model", "dwnet2d_tiny", "--to", "niff", "--bake"], "--bake needs --input-size"),
    (["--model", "dwnet2d_tiny", "--to", "niff", "--bake", "--input-size", "8,8"],
     "--input-size: DWNet with dim=2 expects a 4-D input"),
])
def test_cli_convert_bad_values_are_one_line_errors(argv, expected, tmp_path, capsys):
    """A value the work refuses (an unknown model or family, a keyword the model does not take, a missing
    checkpoint, a shape) is a one-line usage error naming the flag, exit status 2: it was a Python traceback."""
    try:
        status = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exit:  # argparse's own errors (an invalid choice) exit
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("largekernel convert: error: ")
    assert expected.replace("{tmp}", str(tmp_path)) in err[0]


def test_cli_convert_checks_out_first_and_writes_it_whole(tmp_path, capsys, monkeypatch):
    """``--out`` under a file, or naming a folder: a one-line usage error before any work (it was a traceback
    after the conversion); a write that fails leaves the file that was there as it was, and no partial file."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept")
    argv = ["--model", "dwnet1d_tiny", "--to", "dcls", "--out"]
    for out, message in ((blocker / "model.pt", "got an existing file"), (tmp_path, "expected a file name")):
        try:
            code = main([*argv, str(out)])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "" and "Traceback" not in captured.err
        assert captured.err.startswith(f"largekernel convert: error: --out {str(out)!r}") and message in captured.err

    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier model")

    monkeypatch.setattr(torch, "save", fails_midway(b"half a model"))
    with pytest.raises(OSError, match="No space left"):
        main([*argv, str(out)])
    assert out.read_bytes() == b"an earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "notes.txt"]


def test_report_str_lists_layers():
    _, report = largekernel.convert(Foreign(), "fft", report=True)
    assert isinstance(report, ConvertReport)
    assert str(report).startswith("converted 3 layer(s) to 'fft': parameters")
    assert copy.deepcopy(report).params_before == report.params_after


def test_docs_examples_run():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "models.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    for block in blocks:
        exec(compile(block, "docs/models.md", "exec"), {})


@pytest.mark.parametrize("backend", ["direct", "fft"])
def test_baked_model_exports_to_onnx(tmp_path, backend):
    """A baked model exports to ONNX on either path: torch's convolutions, or (FFT) DFT nodes with the spectral
    product in real arithmetic. ONNX Runtime and ONNX's own reference interpreter are the independent checks."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx.reference import ReferenceEvaluator

    model = create_model("dwnet2d_tiny", num_classes=4).eval()
    largekernel.convert(model, "dcls", "blocks.0.dwconv", kernel_size=17, kernel_count=8)
    largekernel.convert(model, "niff", "blocks.1.dwconv")
    x = torch.randn(2, 1, 8, 8)
    expected = model(x).detach().numpy()
    other = torch.randn(5, 1, 8, 8)  # the exported batch is dynamic, as a served model's
    expected_other = model(other).detach().numpy()
    largekernel.bake(model, input_size=(2, 1, 8, 8))
    largekernel.convert(model, "conv", "*", backend=backend)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)).save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    spatial = [n for n in proto.graph.node if n.op_type == "Conv" and weights[n.input[1]][2:] != (1, 1)]
    ops = {node.op_type for node in proto.graph.node}
    if backend == "direct":
        assert len(spatial) == 3 and "DFT" not in ops
    else:  # every spatial convolution is a DFT product; only the pointwise (1x1) Conv nodes remain
        assert not spatial and "DFT" in ops
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    (out,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    np.testing.assert_allclose(out, expected_other, rtol=1e-4, atol=1e-5)
    (out,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


class _Standardized(nn.Conv2d):
    """A conv subclass whose forward does more than convolve (weight standardisation, as timm's StdConv2d)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Fusable(nn.Module):
    """A re-parameterisable block (timm's convention: a fuse() method that returns the fused module)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))

    def fuse(self):
        scale = self.bn.weight / (self.bn.running_var + self.bn.eps).sqrt()
        fused = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        with torch.no_grad():
            fused.weight.copy_(self.conv.weight * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(self.bn.bias - self.bn.running_mean * scale)
        return fused


def test_skipped_layers_are_reported_with_their_reason():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 5, padding=0, groups=8),  # "valid": a same-padded layer would change the output size
        _Standardized(8, 8, 3, padding=1, groups=8),  # forward is not a plain convolution
        _Fusable(),  # fused by timm's reparameterize_model: its conv must stay a torch conv
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # replaced
    )
    x = torch.randn(1, 8, 12, 12)
    expected_shape = model(x).shape
    with pytest.warns(UserWarning, match="skipped 3 selected layer"):
        _, report = largekernel.convert(model, "dcls", report=True, kernel_count=4)
    reasons = {s.name: s.reason for s in report.skipped}
    assert [r.name for r in report.replaced] == ["3"]
    assert "padding=(0, 0) is not 'same'" in reasons["0"]
    assert "_Standardized overrides forward" in reasons["1"]
    assert "reparameterize_model" in reasons["2.conv"] and "_Fusable '2'" in reasons["2.conv"]
    assert "skipped 3 selected layer(s)" in str(report)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is _Standardized and type(model[2].conv) is nn.Conv2d
    assert model(x).shape == expected_shape
    model[2] = model[2].fuse()  # the fused block still fuses after conversion


def test_converting_nothing_says_why():
    model = create_model("resnet18", num_classes=3)  # no depthwise convolution
    with pytest.warns(UserWarning, match=r"replaced nothing: .*depthwise.*which='\*'"):
        _, report = largekernel.convert(model, "dcls", report=True)
    assert not report.replaced and report.not_selected == 17  # stem + 16 block convs
    assert "no convolution was selected" in str(report)
    # A pattern or callable that selects nothing is named as given, not as the default
    with pytest.warns(UserWarning, match=r"which='head\.\*' selected none of the model's 17 spatial") as caught:
        largekernel.convert(model, "dcls", "head.*")
    assert "which=None" not in str(caught[0].message)

    def nothing(name, module):
        return False

    with pytest.warns(UserWarning, match=r"which=nothing selected none of the model's 17 spatial"):
        largekernel.convert(model, "dcls", nothing)
    # A model without torch convolutions (CKConv layers only): nothing any which could select
    with pytest.warns(UserWarning, match="the model has no spatial convolution that convert\\(\\) replaces") as caught:
        _, none = largekernel.convert(create_model("ckcnn_tiny"), "fft", "*", report=True)
    assert "which=None" not in str(caught[0].message) and "no spatial convolution" in str(none)
    _, report = largekernel.convert(model, "dcls", "stages.*", report=True, kernel_count=4)
    assert len(report.replaced) == 16 and not report.skipped


def test_dilation_is_kept_or_spanned():
    # The dilated depthwise conv of a network run at output stride 16 (timm's convnext_tiny(output_stride=16)).
    torch.manual_seed(0)
    old = nn.Conv2d(4, 4, 7, padding=6, dilation=2, groups=4)
    x = torch.randn(1, 4, 20, 20)
    for to, kwargs in [("dcls", dict(kernel_count=6)), ("fft", dict(kernel_size=9)), ("flexconv", {}),
                       ("ckconv", {})]:
        model = nn.Sequential(copy.deepcopy(old))
        largekernel.convert(model, to, **kwargs)
        new = model[0]
        assert model(x).shape == x.shape, to
        if to == "dcls":
            assert new.dilation == (2, 2) and new.dilated_kernel_size == (7, 7)
            # The DCLS layer is the dense kernel it builds applied with that dilation, by torch's conv.
            torch.testing.assert_close(model(x), F.conv2d(x, new.construct_kernel(), new.bias, padding=6,
                                                          dilation=2, groups=4))
        elif to == "fft":
            assert new.dilation == (2, 2) and new.padding == (8, 8)
        else:
            assert new.kernel_size == (13, 13)  # continuous kernels sample the dilated extent 2 * (7 - 1) + 1


def test_dynamic_same_pad_is_tensorflow_same():
    # TF "SAME": out = ceil(n / s), total pad = max((out - 1) s + e - n, 0), the odd zero at the end.
    pad = DynamicSamePad(extent=(3, 5), stride=(2, 2))
    x = torch.randn(1, 1, 8, 9)
    # height 8, extent 3: (4 - 1) 2 + 3 - 8 = 1 -> (0, 1); width 9, extent 5: (5 - 1) 2 + 5 - 9 = 4 -> (2, 2)
    torch.testing.assert_close(pad(x), F.pad(x, (2, 2, 0, 1)))
    assert pad(torch.randn(1, 1, 7, 7)).shape[-2:] == (9, 11)  # 7 + (4 - 1) 2 + 3 - 7; 7 + (4 - 1) 2 + 5 - 7


@pytest.mark.parametrize("to", ["conv", "dcls", "flexconv", "ckconv", "niff", "sgconv"])
def test_every_family_state_dict_is_tensors_and_round_trips_through_safetensors(to, tmp_path):
    from safetensors.torch import load_model, save_model

    torch.manual_seed(0)
    kwargs = {"kernel_size": 9} if to == "conv" else {}
    model = create_model("dwnet2d_tiny", num_classes=3).eval()
    largekernel.convert(model, to, **kwargs)
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    save_model(model, str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    fresh = largekernel.convert(create_model("dwnet2d_tiny", num_classes=3), to, **kwargs).eval()
    load_model(fresh, str(tmp_path / "m.safetensors"))
    torch.testing.assert_close(fresh(x), expected)


def _dense_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                         nn.Conv2d(8, 16, 3, padding=1, groups=8))


@pytest.mark.parametrize("to,kwargs", [("dcls", dict(kernel_count=25)), ("dcls", dict(kernel_size=9, kernel_count=25)),
                                       ("dcls", dict(kernel_count=25, interpolation="gaussian")),
                                       ("conv", dict(kernel_size=9)), ("flexconv", {}), ("ckconv", {})])
def test_load_dense_is_exact_when_the_family_can_hold_the_kernel(to, kwargs):
    # 25 DCLS elements cover every tap of a 5x5 kernel; a 32-wide kernel net output layer spans 25 grid samples.
    torch.manual_seed(0)
    dense = _dense_net().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    converted = largekernel.convert(copy.deepcopy(dense), to, "*", **kwargs)
    report = load_dense(converted, dense.state_dict())
    assert set(report.fitted) == {"0", "1", "2"} and max(report.fitted.values()) < 1e-6
    assert not report.missing_keys and not report.unexpected_keys
    torch.testing.assert_close(converted(x), dense(x), rtol=1e-6, atol=1e-6)


def test_load_dense_keeps_the_largest_taps_in_a_sparse_dcls_kernel():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4))
    converted = largekernel.convert(copy.deepcopy(dense), "dcls", kernel_count=6)
    report = load_dense(converted, dense.state_dict())
    w = dense[0].weight.detach()  # (4, 1, 5, 5)
    flat = w.flatten(1)
    keep = torch.zeros_like(flat).scatter_(1, flat.abs().topk(6, dim=1).indices, 1.0)
    expected = (flat * keep).view_as(w)  # the best 6-sparse approximation of each kernel
    torch.testing.assert_close(converted[0].construct_kernel(), expected, rtol=1e-5, atol=1e-6)
    error = ((expected - w).norm() / w.norm()).item()
    assert report.fitted["0"] == pytest.approx(error, rel=1e-4)


def test_load_dense_refusals():
    dense = _dense_net()
    niff = largekernel.convert(copy.deepcopy(dense), "niff")
    with pytest.raises(ValueError, match=r"NIFFConv2d cannot take a dense kernel"):
        load_dense(niff, dense.state_dict())
    converted = largekernel.convert(copy.deepcopy(dense), "dcls", kernel_count=4)
    partial = {k: v for k, v in dense.state_dict().items() if k != "0.bias"}
    with pytest.raises(ValueError, match="missing keys: 0.bias"):
        load_dense(converted, partial)
    assert load_dense(converted, partial, strict=False).missing_keys == ["0.bias"]
