"""The compile-time and compiled/eager-speed cells of docs/deploy.md's table.

One layer per family at a working size (2-D: batch 8, 32 channels, 32x32, kernel 31; 1-D: batch 8,
32 channels, length 1024), training steps (forward + backward): the first compiled step's seconds
(inductor, fullgraph, a cold cache folder whose one-time header build is paid first), then eager
and compiled steps interleaved (21 rounds, the order swapped every round), the median of each,
their ratio and the quartiles of the per-round ratios. Then a converted ConvNeXt-atto (DCLS) at 64x64, the same way (7 rounds).

``--sizes bench`` measures the layers at the sizes ``largekernel bench`` times them instead (2-D: batch 8,
96 channels depthwise, 56x56, the FFT convolution at kernel 31 as in ``bench conv``, DCLS with 34 elements in
17x17 as in ``bench dcls``, NIFF's small preset as in ``bench niff``, the reparameterised families at kernel 31;
1-D: ``bench flexconv``'s causal layers, batch 8, 64 channels, length 4096, FlexConv with its mask over the last
eighth of the grid).

    python benchmarks/compile_table.py                        # prints a Markdown table
    python benchmarks/compile_table.py --layers NIFF FlexConv # some rows only
    python benchmarks/compile_table.py --layers --model niff  # the converted model only, to NIFF
    python benchmarks/compile_table.py --sizes bench --model none  # the layers at the benchmarks' sizes

Each process uses a new cold cache folder (unless TORCHINDUCTOR_CACHE_DIR is set): run one process per
measurement that must start cold.
"""

from __future__ import annotations

import argparse
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
from largekernel.bench.flexconv import _covering  # noqa: E402
from largekernel.models import create_model  # noqa: E402

IMAGE, SEQUENCE = (8, 32, 32, 32), (8, 32, 1024)
LAYERS = {
    # torch's own layer at the same size: what torch.compile's per-call cost does to a layer that is one operator
    "torch.nn.Conv2d (reference)": (lambda: torch.nn.Conv2d(32, 32, 31, padding=15, groups=32), IMAGE),
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


def _last_eighth(layer: L.FlexConv1d) -> L.FlexConv1d:
    """A causal FlexConv whose mask keeps the last eighth of its grid (``bench flexconv``'s cropping case)."""
    _covering(layer, 1 / 8)
    return layer


BENCH_IMAGE, BENCH_SEQUENCE = (8, 96, 56, 56), (8, 64, 4096)
BENCH_LAYERS = {  # the layers at the sizes ``largekernel bench`` times them (--sizes bench)
    "torch.nn.Conv2d (reference)": (lambda: torch.nn.Conv2d(96, 96, 31, padding=15, groups=96), BENCH_IMAGE),
    "Conv2d, backend=fft": (lambda: L.Conv2d(96, 96, 31, padding=15, groups=96, backend="fft"), BENCH_IMAGE),
    "DCLS (bilinear)": (lambda: L.DclsConv2d(96, 96, 34, 17, padding=8, groups=96), BENCH_IMAGE),
    "DCLS (gaussian)": (lambda: L.DclsConv2d(96, 96, 34, 17, padding=8, groups=96, interpolation="gaussian"),
                        BENCH_IMAGE),
    "CKConv": (lambda: L.CKConv1d(64, 64, 4096, causal=True), BENCH_SEQUENCE),
    "FlexConv": (lambda: _last_eighth(L.FlexConv1d(64, 64, 4096, causal=True)), BENCH_SEQUENCE),
    "NIFF": (lambda: L.NIFFConv2d(96, bias=False, preset="small"), BENCH_IMAGE),
    "SGConv": (lambda: L.SGConv1d(64, kernel_size=4096), BENCH_SEQUENCE),
    "S4D": (lambda: L.S4DConv1d(64, kernel_size=4096), BENCH_SEQUENCE),
    "RepLKNet": (lambda: L.RepLKConv2d(96, 96, 31, groups=96), BENCH_IMAGE),
    "SLaK": (lambda: L.SLaKConv2d(96, 96, 31, groups=96), BENCH_IMAGE),
    "UniRepLKNet": (lambda: L.DilatedReparamConv2d(96, 96, 13, groups=96), BENCH_IMAGE),
}


def _step(module, x) -> float:
    start = time.perf_counter()
    module(x).square().mean().backward()
    return time.perf_counter() - start


def measure(module: torch.nn.Module, x: torch.Tensor, repeats: int = 21) -> tuple[float, float, tuple[float, float]]:
    """(seconds of the first compiled step, median compiled / median eager step time, the quartiles of the
    per-round ratios). Eager and compiled steps alternate, their order swapped every round: on a shared CPU
    single steps vary by tens of percent, and a slow phase then hits both."""
    torch.compiler.reset()
    compiled = torch.compile(module, fullgraph=True)
    first = _step(compiled, x)
    _step(module, x)
    eager, fast = [], []
    for i in range(repeats):
        order = ((eager, module), (fast, compiled)) if i % 2 else ((fast, compiled), (eager, module))
        for times, m in order:
            times.append(_step(m, x))
    ratios = [f / e for f, e in zip(fast, eager)]
    quartiles = statistics.quantiles(ratios, n=4)
    return first, statistics.median(fast) / statistics.median(eager), (quartiles[0], quartiles[2])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/compile_table.py",
        description="Measure docs/deploy.md's compile table: per family the first compiled training step "
                    "(inductor, cold cache) and compiled / eager step time, then a converted ConvNeXt-atto.")
    parser.add_argument("--layers", nargs="*", metavar="FAMILY", default=None,
                        help=f"the layer rows to measure (default: all; none with a bare --layers): "
                             f"{', '.join(repr(n) for n in LAYERS)}")
    parser.add_argument("--model", default="dcls", metavar="TARGET",
                        help="convert ConvNeXt-atto's 7x7 convolutions to this target of largekernel.convert "
                             "(default: dcls, at kernel 17; 'none' skips the model row; 'conv' keeps them dense)")
    parser.add_argument("--sizes", choices=("table", "bench"), default="table",
                        help="the layers' sizes: 'table' (default), the working size of docs/deploy.md's table; "
                             "'bench', the sizes largekernel bench times them at (no FourierMix row there)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per layer (default: 21; the "
                        "model takes 7)")
    args = parser.parse_args(argv)
    known = LAYERS if args.sizes == "table" else BENCH_LAYERS
    unknown = sorted(set(args.layers or ()) - set(known))
    if unknown:
        parser.error(f"argument --layers: unknown {unknown}; expected some of {list(known)} (--sizes {args.sizes})")
    if args.rounds < 4:
        parser.error(f"argument --rounds: expected at least 4 (quartiles), got {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    table = LAYERS if args.sizes == "table" else BENCH_LAYERS
    layers = list(table) if args.layers is None else args.layers
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, layers at the {args.sizes} sizes")
    # Inductor's first C++ kernel in a cache folder also builds its precompiled header: paid once, not by a layer.
    start = time.perf_counter()
    torch.compile(lambda t: (t.sin() + 1).sum())(torch.randn(8))
    print(f"inductor's one-time C++ set-up (first kernel, precompiled header): {time.perf_counter() - start:.1f} s")
    print("| family | first compiled step (s) | compiled / eager step time | per-round ratios, quartiles |")
    print("|---|---|---|---|")
    for name in layers:
        make, shape = table[name]
        first, ratio, (low, high) = measure(make(), torch.randn(shape, requires_grad=True), args.rounds)
        print(f"| {name} | {first:.1f} | {ratio:.2f} | {low:.2f}-{high:.2f} |", flush=True)
    if args.model == "none":
        return
    model = create_model("convnext_atto", num_classes=10)
    if args.model != "conv":
        largekernel.convert(model, args.model, **({"kernel_size": 17} if args.model == "dcls" else {}))
    first, ratio, (low, high) = measure(model, torch.randn(2, 3, 64, 64), repeats=7)
    print(f"| convnext_atto -> {args.model} (model) | {first:.1f} | {ratio:.2f} | {low:.2f}-{high:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
