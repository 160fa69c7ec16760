"""The native CPU kernels of the packed paths (functional/_native.c) against the formulas they fuse."""

import os

import pytest
import torch

from conftest import native_expected

from largekernel.functional import _native
from largekernel.nn import Conv2d, NIFFConv2d

DTYPES = [torch.complex64, torch.complex128]


@pytest.fixture(autouse=True)
def _enabled(monkeypatch):
    monkeypatch.setattr(_native, "ENABLED", True)


# The kernel tests need the build: the test suite's environment has a C compiler (README, "Set up").

def test_built_wherever_a_c_compiler_is_installed():
    assert (_native.library() is not None) == native_expected()


def test_native_kernels_switch(monkeypatch):
    from largekernel.functional import native_kernels

    assert native_kernels() == native_expected()
    assert native_kernels(False) is False and _native.ENABLED is False
    q = torch.randn(2, 3, 20, dtype=torch.complex64)
    before = q.clone()
    assert not _native.spectral_grad(q, q, torch.randn(3, 20, dtype=torch.complex64), None)
    torch.testing.assert_close(q, before, rtol=0, atol=0)  # left to torch: nothing written
    assert native_kernels(True) == native_expected()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 4, 5])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("grid, start, size", [((9,), (2,), (5,)), ((6, 7), (0, 0), (6, 7)),
                                               ((6, 7), (1, 2), (4, 3)), ((3, 4, 5), (1, 0, 2), (2, 4, 3))])
def test_unpack_splits_every_pair_into_its_two_samples(dtype, batch, swap, grid, start, size):
    half, channels = (batch + 1) // 2, 3
    z = torch.randn(half, channels, *grid, dtype=dtype)
    bias = torch.randn(channels, dtype=z.real.dtype)
    region = (..., *(slice(s, s + n) for s, n in zip(start, size)))
    first, second = (z.imag, z.real) if swap else (z.real, z.imag)
    expected = torch.cat([first, second[: batch - half]])[region] + bias.view(-1, *[1] * len(grid))
    # Into a channel slice of a larger output (strided across samples), as the channel blocks write.
    out = torch.full((batch, channels + 2, *size), float("nan"), dtype=z.real.dtype)
    assert _native.unpack(z, batch, start, size, bias, swap, out[:, 1:-1])
    torch.testing.assert_close(out[:, 1:-1], expected, rtol=0, atol=0)
    assert out[:, [0, -1]].isnan().all()  # nothing outside the slice written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_w, with_acc", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("rotate, conj_q, conj_w", [(False, False, False), (True, False, False),
                                                    (False, True, True), (True, True, False)])
def test_spectral_grad_is_the_batch_sum_and_the_product(dtype, with_w, with_acc, rotate, conj_q, conj_w):
    spec, q, w = (torch.randn(*shape, dtype=dtype) for shape in [(3, 4, 600), (3, 4, 600), (4, 600)])  # 600 > chunk
    acc = torch.empty(4, 600, dtype=dtype) if with_acc else None
    q_native = q.clone()
    assert _native.spectral_grad(spec, q_native, w if with_w else None, acc, 0.25, rotate, conj_q, conj_w)
    if with_acc:
        total = 0.25 * (spec * (q.conj() if conj_q else q)).sum(0)
        torch.testing.assert_close(acc, 1j * total.conj() if rotate else total)
    torch.testing.assert_close(q_native, q * (w.conj() if conj_w else w) if with_w else q)


def test_inconsistent_geometry_is_an_error_not_a_stray_read():
    z = torch.randn(2, 3, 4, 5, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"region \(1, 2\) \+ \(4, 3\) of the grid \(4, 5\)"):
        _native.unpack(z, 4, (1, 2), (4, 3), None, False, torch.empty(4, 3, 4, 3))
    with pytest.raises(ValueError, match="5 samples from 2 pairs"):
        _native.unpack(z, 5, (0, 0), (4, 5), None, False, torch.empty(5, 3, 4, 5))


def test_declines_what_it_cannot_take():
    z = torch.randn(2, 3, 4, 5, dtype=torch.complex64)
    out = torch.empty(4, 3, 4, 5)
    assert not _native.unpack(z.transpose(-1, -2).contiguous().transpose(-1, -2), 4, (0, 0), (4, 5), None, False,
                              out)  # a non-contiguous packed signal
    assert not _native.unpack(z, 4, (0, 0), (4, 5), None, False, out.transpose(-1, -2).contiguous().transpose(-1, -2))
    assert not _native.unpack(z.to(torch.complex128), 4, (0, 0), (4, 5), None, False, out)  # dtype mismatch
    q = torch.randn(2, 3, 20, dtype=torch.complex64)
    assert not _native.spectral_grad(q, q.clone(), torch.randn(3, 20, dtype=torch.complex128), None)
    assert not _native.spectral_grad(q, q.clone(), torch.randn(3, 21, dtype=torch.complex64), None)
    assert not _native.spectral_grad(None, q.clone(), None, torch.empty(3, 20, dtype=torch.complex64))  # no spec


def test_exported_programs_record_torch_operations_only():
    """An export cannot see into a foreign call: exported with one input, the program must follow another."""
    layer = NIFFConv2d(4)
    x1, x2 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    program = torch.export.export(layer, (x1,))
    torch.testing.assert_close(program.module()(x2), layer(x2))
    conv = Conv2d(4, 4, 3, padding=1, groups=4, backend="fft")
    program = torch.export.export(conv, (x1,))
    torch.testing.assert_close(program.module()(x2), torch.nn.functional.conv2d(x2, conv.weight, conv.bias, padding=1,
                                                                                 groups=4), rtol=1e-4, atol=1e-4)


def test_build_is_cached_and_written_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEKERNEL_CACHE", str(tmp_path))
    lib = _native.library.__wrapped__()
    assert lib is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("lk_native-") and built[0].suffix == ".so"  # no temporaries
    stamp = built[0].stat().st_mtime_ns
    assert _native.library.__wrapped__() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_an_unwritable_cache_builds_in_a_private_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LARGEKERNEL_CACHE", str(blocker / "cache"))
    assert _native.library.__wrapped__() is not None
    assert blocker.read_text() == "not a folder"


def test_concurrent_processes_build_one_whole_library(tmp_path):
    """torchrun's ranks start together: every process builds or loads the same file and none loads half of it."""
    import subprocess
    import sys

    code = "from largekernel.functional import _native; assert _native.library() is not None"
    env = {**os.environ, "LARGEKERNEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert [f.name.startswith("lk_native-") and f.suffix == ".so" for f in tmp_path.iterdir()] == [True]


def test_without_a_compiler_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEKERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", os.path.join(tmp_path, "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        assert _native.library.__wrapped__() is None
    assert list(tmp_path.iterdir()) == []
