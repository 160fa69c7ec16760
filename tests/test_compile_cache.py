"""torch.compile's caches (AOTAutograd's and inductor's, on disk across runs) key a compiled graph on the names of
the operators in it, not on the Python behind them. The library's operators (the FFT path's spectral product,
DCLS's kernel construction, a cropping FlexConv's eager call) are named after the library's source
(docs/deploy.md): a run of the same library must find the same operators (so that a warm cache is used), a run of a
changed library other ones (so that a cache written by another version never hands it a graph built for other
code: a backward that fails, or computes that version's gradients). Checked in fresh processes, on copies of the
installed package, by the operator calls the profiler records in a compiled training step."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import largekernel

# A compiled training step through each of the library's operators, then the names of the largekernel operators
# the profiler saw run, and the file the package was imported from.
_SCRIPT = r"""
import json, sys
import torch
import largekernel
import largekernel.nn as L

torch.manual_seed(0)
model = torch.nn.Sequential(
    L.Conv2d(8, 8, 9, padding=4, backend="fft"),  # the spectral product
    L.DclsConv2d(8, 8, 8, 9, padding=4, groups=8),  # the kernel's construction
    L.FlexConv2d(8, 16, 17),  # a cropping kernel net of 2**15 values or more: the eager layer operator
)
compiled = torch.compile(model, backend="eager")  # the same operators under every backend; eager compiles quickest
x = torch.randn(2, 8, 16, 16, requires_grad=True)
compiled(x).sum().backward()
with torch.profiler.profile() as prof:
    compiled(x).sum().backward()
names = sorted({e.name for e in prof.events() if e.name.startswith("largekernel::")})
json.dump({"names": names, "file": largekernel.__file__}, sys.stdout)
"""


def _package_copy(root: Path, change: str | None = None) -> Path:
    """The installed package copied under ``root`` (to go first on PYTHONPATH), with ``change`` appended to its
    ``__init__.py`` if given."""
    source = Path(largekernel.__file__).parent
    shutil.copytree(source, root / "largekernel", ignore=shutil.ignore_patterns("__pycache__"))
    if change is not None:
        with open(root / "largekernel" / "__init__.py", "a") as f:
            f.write(change)
    return root


def _operators(path: Path, cache: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(path), "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(path.resolve()), result["file"]  # the copy ran
    return result["names"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")  # one cache for all the runs, as a user's would be
    same = _package_copy(tmp_path_factory.mktemp("same"))
    changed = _package_copy(tmp_path_factory.mktemp("changed"), "\n# another version of the library\n")
    return _operators(same, cache), _operators(same, cache), _operators(changed, cache)


def test_every_operator_runs_in_the_compiled_step(runs):
    first, _, _ = runs
    bases = {name.split("::")[1].rsplit("_", 1)[0] for name in first}
    assert bases == {"spectral_product", "spectral_product_backward", "dcls_scatter_kernel",
                     "dcls_scatter_kernel_backward", "eager_layer", "eager_layer_backward"}, first


def test_the_same_library_names_its_operators_alike_in_every_process(runs):
    first, again, _ = runs
    assert first == again


def test_a_changed_library_names_every_operator_anew(runs):
    first, _, changed = runs
    assert len(changed) == len(first)
    assert not set(changed) & set(first), (first, changed)
