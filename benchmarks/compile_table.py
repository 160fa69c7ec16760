"""The compile-time and compiled/eager-speed cells of docs/deploy.md's table.

One layer per family at a working size (2-D: batch 8, 32 channels, 32x32, kernel 31; 1-D: batch 8,
32 channels, length 1024), training steps (forward + backward): the first compiled step's seconds
(inductor, fullgraph, a cold cache folder), then eager and compiled steps interleaved, the median
of each and their ratio. Then a converted ConvNeXt-atto (DCLS) at 64x64, the same way.

    python benchmarks/compile_table.py            # prints a Markdown table
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cold-"))

import torch  # noqa: E402

import largekernel  # noqa: E402
import largekernel.nn as L  # noqa: E402
from largekernel.models import create_model  # noqa: E402

IMAGE, SEQUENCE = (8, 32, 32, 32), (8, 32, 1024)
LAYERS = {
    "Conv2d, backend=fft": (lambda: L.Conv2d(32, 32, 31, padding=15, groups=32, backend="fft"), IMAGE),
    "DCLS (bilinear)": (lambda: L.DclsConv2d(32, 32, 26, 31, padding=15, groups=32), IMAGE),
    "DCLS (gaussian)": (lambda: L.DclsConv2d(32, 32, 26, 31, padding=15, groups=32, interpolation="gaussian"),
                        IMAGE),
    "CKConv": (lambda: L.CKConv2d(32, 32, 31, groups=32), IMAGE),
    "FlexConv": (lambda: L.FlexConv2d(32, 32, 31, groups=32), IMAGE),
    "NIFF": (lambda: L.NIFFConv2d(32, 32), IMAGE),
    "SGConv": (lambda: L.SGConv1d(32, kernel_size=1024), SEQUENCE),
    "S4D": (lambda: L.S4DConv1d(32, kernel_size=1024), SEQUENCE),
    "RepLKNet": (lambda: L.RepLKConv2d(32, 32, 31, groups=32), IMAGE),
    "SLaK": (lambda: L.SLaKConv2d(32, 32, 31, groups=32), IMAGE),
    "UniRepLKNet": (lambda: L.DilatedReparamConv2d(32, 32, 13, groups=32), IMAGE),
    "FourierMix": (lambda: L.FourierMix(), (8, 256, 192)),
}


def _step(module, x) -> float:
    start = time.perf_counter()
    module(x).square().mean().backward()
    return time.perf_counter() - start


def measure(module: torch.nn.Module, x: torch.Tensor, repeats: int = 7) -> tuple[float, float]:
    """(seconds of the first compiled step, median compiled / median eager step time)."""
    torch.compiler.reset()
    compiled = torch.compile(module, fullgraph=True)
    first = _step(compiled, x)
    _step(module, x)
    eager, fast = [], []
    for _ in range(repeats):
        eager.append(_step(module, x))
        fast.append(_step(compiled, x))
    return first, statistics.median(fast) / statistics.median(eager)


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| family | first compiled step (s) | compiled / eager step time |")
    print("|---|---|---|")
    for name, (make, shape) in LAYERS.items():
        first, ratio = measure(make(), torch.randn(shape, requires_grad=True))
        print(f"| {name} | {first:.1f} | {ratio:.2f} |", flush=True)
    model = create_model("convnext_atto", num_classes=10)
    largekernel.convert(model, "dcls", kernel_size=17)
    first, ratio = measure(model, torch.randn(2, 3, 64, 64), repeats=3)
    print(f"| convnext_atto -> DCLS (model) | {first:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
