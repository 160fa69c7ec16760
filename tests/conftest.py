import logging
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Every test that exercises a layer, the engine or a model runs on each of these devices with the same assertions:
# the CPU always, CUDA where torch sees a GPU. Take the module-scoped ``device`` fixture (not function-scoped, so that
# hypothesis tests can use it too) or parametrize with ``DEVICES``; ``pytest -k cuda`` selects the CUDA instances.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Autocast (device, dtype) pairs: bf16 on the CPU; bf16 and fp16 on CUDA.
AUTOCAST = [("cpu", torch.bfloat16)] + ([("cuda", torch.bfloat16), ("cuda", torch.float16)]
                                        if torch.cuda.is_available() else [])

if torch.cuda.is_available():
    # The references are float32 convolutions and matrix products: TF32 (10-bit mantissa) would make torch's own
    # results the inexact side of every comparison. Deterministic kernels: the batch-independence tests compare
    # two runs bit for bit, which cuDNN's and scatter-add's atomics would not repeat (cuBLAS needs this workspace
    # setting before its first use for that).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)

# Under pytest-xdist (the README's `-n auto`: one worker per core) the workers share the cores: each takes its share
# of torch's intra-op threads, and so do the processes its tests start (OpenMP threads beyond the cores wait on each
# other: the suite took 810 s in two workers of two threads each, 467 s in two of one, 741 s in one process, on 2
# cores). Tests of thread-count behaviour set the count themselves (test_native.py, test_engine.py).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = max(1, torch.get_num_threads() // _WORKERS)
    torch.set_num_threads(_SHARE)
    os.environ["OMP_NUM_THREADS"] = str(_SHARE)

# The official dcls package (a reference of the DCLS tests) logs warnings on the root logger about its CUDA-only
# kernel whenever a layer is built: drop those records only (logging.disable would silence the logs tests read).
logging.root.addFilter(lambda record: "DCLS" not in Path(record.pathname).parts)

# Property tests run many small convolutions; wall-clock deadlines only add flakiness.
settings.register_profile("largekernel", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "largekernel"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module", params=DEVICES)
def device(request) -> str:
    """The device a test's tensors and modules live on (``DEVICES``)."""
    return request.param


@pytest.fixture(params=AUTOCAST, ids=[f"{d}-{str(t).removeprefix('torch.')}" for d, t in AUTOCAST])
def autocast_case(request) -> tuple[str, torch.dtype]:
    """``(device, dtype)`` of a mixed-precision test (``AUTOCAST``)."""
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one intra-op thread: its tensors are tiny, and a second thread only adds
    synchronisation (and waiting, on a shared CPU). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_onnx(tmp_path):
    """``run(module, *inputs, name="model", spatial=False)``: ``module`` exported by ``torch.onnx.export(...,
    dynamo=True)`` to ``name``.onnx on the first input, with its batch dimension dynamic (as a served model is)
    and, with ``spatial``, its spatial dimensions too (up to the first input's sizes), and run by ONNX Runtime
    (CPU) on each input (their batches and sizes may differ); the output as a tensor, one per input."""
    import onnxruntime

    def run(module: torch.nn.Module, *inputs: torch.Tensor, name: str = "model", spatial: bool = False):
        path = tmp_path / f"{name}.onnx"
        dims = {0: torch.export.Dim("batch")}
        if spatial:
            dims.update({i: torch.export.Dim(f"size{i}", max=n) for i, n in enumerate(inputs[0].shape) if i >= 2})
        torch.onnx.export(module, inputs[:1], dynamo=True, dynamic_shapes=(dims,)).save(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = [torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]) for x in inputs]
        return outs[0] if len(outs) == 1 else outs

    return run


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


def fails_midway(written: bytes):
    """A stand-in for a save function that takes the object, then the path (``torch.save``, ``Figure.savefig``):
    it writes ``written``, part of a file, then fails as a full disk does."""

    def save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(written)
        raise OSError(28, "No space left on device")

    return save
