"""The native CPU kernels (functional/_native.c): built once per machine, cached safely, switchable, and giving the
same results as torch's convolution whether on or off (the per-path tests in test_fft_conv.py and test_niff.py run
every product with and without them)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import native_expected

from largekernel.functional import fft_conv, native_kernels, planner_options
from largekernel.nn import Conv2d, NIFFConv2d

_BUILD = "import sys; from largekernel.functional import native_kernels; sys.exit(0 if native_kernels() else 3)"


def _build(env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    env.pop("LARGEKERNEL_NATIVE", None)
    return subprocess.run([sys.executable, "-W", "always", "-c", _BUILD], env=env, capture_output=True, text=True,
                          timeout=300)


def test_built_wherever_a_c_compiler_is_installed():
    previous = native_kernels()
    try:
        assert native_kernels(True) == native_expected()  # the suite's environment has a compiler (README)
        assert native_kernels(False) is False
    finally:
        native_kernels(previous)


@pytest.mark.parametrize("enabled", [True, False])
def test_results_match_torch_on_and_off(enabled):
    previous = native_kernels()
    native_kernels(enabled)
    try:
        x = torch.randn(3, 5, 12, 11, dtype=torch.float64, requires_grad=True)
        w = torch.randn(10, 1, 5, 4, dtype=torch.float64, requires_grad=True)
        y = fft_conv(x, w, padding="same", groups=5)
        expected = F.conv2d(x, w, padding="same", groups=5)
        torch.testing.assert_close(y, expected)
        grad = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, w), grad), torch.autograd.grad(expected, (x, w), grad)):
            torch.testing.assert_close(a, b)
    finally:
        native_kernels(previous)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("packed, channel_block", [(True, None), (True, 1), (False, None), (False, 1)])
@pytest.mark.parametrize("out_channels", [6, 12])  # depthwise, and two kernels per channel (a multiplier)
def test_results_do_not_depend_on_the_thread_count(threads, packed, channel_block, out_channels):
    """The native loops split their work over torch's intra-op threads (the suite's xdist workers run on one each):
    at several threads each path's values and three gradients are torch's convolution's, within rounding of the
    one-thread result, and a NaN in one sample leaves every other sample's output bit for bit as it was."""
    assert native_kernels() == native_expected()
    previous_threads, previous_native = torch.get_num_threads(), native_kernels()
    x = torch.randn(4, 6, 23, 19, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_channels, 1, 9, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out_channels, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, out_channels, 23, 19, dtype=torch.float64)
    y = F.conv2d(x, w, b, padding="same", groups=6)
    expected = (y, *torch.autograd.grad(y, (x, w, b), grad))
    poisoned = x.detach().clone()
    poisoned[0, :, 3, 4] = float("nan")
    results = {}
    try:
        native_kernels(True)
        with planner_options(packed=packed, channel_block=channel_block):
            for n in (1, threads):
                torch.set_num_threads(n)
                y = fft_conv(x, w, b, padding="same", groups=6)
                results[n] = (y, *torch.autograd.grad(y, (x, w, b), grad))
                assert torch.equal(fft_conv(poisoned, w, b, padding="same", groups=6)[1:], y[1:].detach())
    finally:
        torch.set_num_threads(previous_threads)
        native_kernels(previous_native)
    for name, got, one, want in zip(("output", "input", "weight", "bias"), results[threads], results[1], expected):
        torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got, one, rtol=1e-13, atol=1e-13, msg=lambda m: f"{name} at {threads} threads: {m}")


@pytest.mark.parametrize("groups, channels", [(1, 12), (2, 24)])
def test_contracting_products_match_torch_at_any_thread_count(groups, channels):
    """The contracting products (several input channels per group: the kernel's and the activations' spectra
    transposed frequency-major, by the native kernel where it runs) give torch's convolution's output and
    gradients with the kernels on and off, at one and three threads, and a NaN in one sample leaves every other
    sample's output bit for bit as it was."""
    previous_threads, previous_native = torch.get_num_threads(), native_kernels()
    x = torch.randn(4, channels, 15, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(channels, channels // groups, 7, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, channels, 15, 13, dtype=torch.float64)
    y = F.conv2d(x, w, padding="same", groups=groups)
    expected = (y, *torch.autograd.grad(y, (x, w), grad))
    poisoned = x.detach().clone()
    poisoned[0, :, 3, 4] = float("nan")
    try:
        for enabled, threads in ((True, 1), (True, 3), (False, 1)):
            native_kernels(enabled)
            torch.set_num_threads(threads)
            y = fft_conv(x, w, padding="same", groups=groups)
            got = (y, *torch.autograd.grad(y, (x, w), grad))
            for name, a, b in zip(("output", "input", "weight"), got, expected):
                torch.testing.assert_close(a, b, msg=lambda m: f"{name} (native {enabled}, {threads} threads): {m}")
            assert torch.equal(fft_conv(poisoned, w, padding="same", groups=groups)[1:], y[1:].detach())
    finally:
        torch.set_num_threads(previous_threads)
        native_kernels(previous_native)


def test_build_is_cached_and_written_whole(tmp_path):
    assert _build({"LARGEKERNEL_CACHE": str(tmp_path)}).returncode == 0
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("lk_native-") and built[0].suffix == ".so"  # no temporaries
    stamp = built[0].stat().st_mtime_ns
    assert _build({"LARGEKERNEL_CACHE": str(tmp_path)}).returncode == 0
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_an_unwritable_cache_builds_in_a_private_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _build({"LARGEKERNEL_CACHE": str(blocker / "cache")}).returncode == 0
    assert blocker.read_text() == "not a folder"


def test_concurrent_processes_build_one_whole_library(tmp_path):
    """torchrun's ranks start together: every process builds or loads the same file and none loads half of it."""
    env = {**os.environ, "LARGEKERNEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD], env=env) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    assert [f.name.startswith("lk_native-") and f.suffix == ".so" for f in tmp_path.iterdir()] == [True]


def test_without_a_compiler_warns_and_falls_back(tmp_path):
    result = _build({"LARGEKERNEL_CACHE": str(tmp_path), "CC": str(tmp_path / "no-such-compiler")})
    assert result.returncode == 3 and "native CPU kernels unavailable" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_exported_programs_record_torch_operations_only():
    """An export cannot see into a foreign call: exported with one input, the program must follow another."""
    layer = NIFFConv2d(4)
    x1, x2 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    program = torch.export.export(layer, (x1,))
    torch.testing.assert_close(program.module()(x2), layer(x2))
    conv = Conv2d(4, 4, 3, padding=1, groups=4, backend="fft")
    program = torch.export.export(conv, (x1,))
    torch.testing.assert_close(program.module()(x2), F.conv2d(x2, conv.weight, conv.bias, padding=1, groups=4),
                               rtol=1e-4, atol=1e-4)
