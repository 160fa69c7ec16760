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


FFT_PATHS = ["packed", "packed-blocks", "packed-torch", "real", "real-blocks", "real-torch"]


@pytest.fixture(params=FFT_PATHS)
def fft_path(request):
    """Run a test on every FFT product the planner can choose, for every dimension: channel pairs packed as
    complex signals (the CPU default for elementwise 2-D and 3-D products) or real FFTs (1-D, channel
    contractions, CUDA); ``-blocks``: one group (or channel pair) per block, as in large activations;
    ``-torch``: without the native CPU kernels. Forced through the public ``planner_options`` and
    ``native_kernels`` switches."""
    from largekernel.functional import native_kernels, planner_options

    path = request.param
    previous = native_kernels()
    native_kernels(not path.endswith("-torch"))
    try:
        with planner_options(packed=path.startswith("packed"), channel_block=1 if path.endswith("-blocks") else None):
            yield path
    finally:
        native_kernels(previous)


def native_expected() -> bool:
    """Whether the native kernels must be available here: a C compiler is installed (CI has one)."""
    import shutil

    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
