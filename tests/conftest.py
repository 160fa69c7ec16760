import os

import pytest
import torch
from hypothesis import settings

# Property tests run many small convolutions; wall-clock deadlines only add flakiness.
settings.register_profile("largekernel", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "largekernel"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one intra-op thread: its tensors are tiny, and a second thread only adds
    synchronisation (and waiting, on a shared CPU). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spy_functions(monkeypatch, module, names: tuple[str, ...]) -> list[str]:
    """Record (in the returned list) which of the autograd Functions ``module.<name>`` are applied."""
    calls: list[str] = []
    for name in names:
        cls = getattr(module, name)
        # The bound original, taken before patching: Function.apply is a Python classmethod up to torch 2.13
        # and a C classmethod descriptor from 2.14 on, so it is not unwrapped by attribute.
        monkeypatch.setattr(cls, "apply", lambda *a, _real=cls.apply, _name=name: calls.append(_name) or _real(*a))
    return calls


def native_path(monkeypatch, enabled: bool) -> list[bool]:
    """Run the packed paths with the native CPU kernels (functional/_native.py) on or off; returns the list of
    whether each native call ran (check that they did where a C compiler is installed)."""
    from largekernel.functional import _native

    monkeypatch.setattr(_native, "ENABLED", enabled)
    ran: list[bool] = []
    for name in ("unpack", "spectral_grad"):
        real = getattr(_native, name)
        monkeypatch.setattr(_native, name, lambda *a, _real=real, **k: ran.append(_real(*a, **k)) or ran[-1])
    return ran


def check_native_ran(path: str, ran: list[bool]) -> None:
    """After a test on ``path`` (a ``fft_path`` fixture parameter): the packed paths used the native kernels
    wherever they can be built, and the ``-torch`` variants never did."""
    if path in ("packed", "packed-blocks") and native_expected():
        assert any(ran), f"the native kernels did not run: {ran}"
    if path.endswith("-torch"):
        assert not any(ran)


def native_expected() -> bool:
    """Whether the native kernels must be available here: a C compiler is installed (CI has one)."""
    import os
    import shutil

    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))


def forced_fft_path(monkeypatch, path: str, module, packed_function: str, real_function: str):
    """The body of a ``fft_path`` fixture (yield from it): force ``path`` — ``packed*`` (batch pairs as complex
    signals) or ``real*`` FFTs for every dimension; ``-blocks``: one channel per cache-sized block; ``-torch``:
    without the native CPU kernels — then check that ``module``'s autograd Function for that path, and no
    other, ran, and that the native kernels ran or not as they should."""
    from largekernel.functional import _packed

    packed = path.startswith("packed")
    monkeypatch.setattr(_packed, "PACKED_MIN_NDIM", 1 if packed else 99)
    if path.endswith("-blocks"):
        monkeypatch.setattr(_packed, "BLOCK_BYTES", 1)
        monkeypatch.setattr(_packed, "REAL_BLOCK_BYTES", 1)
    native = native_path(monkeypatch, not path.endswith("-torch"))
    calls = spy_functions(monkeypatch, module, (packed_function, real_function))
    yield path
    expected = packed_function if packed else real_function
    assert calls and set(calls) == {expected}, f"the {path} path did not run: {calls}"
    check_native_ran(path, native)
