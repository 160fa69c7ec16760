"""``largekernel bench models``: whole-model timings and peak memory (seed 003, Table 3; DCLS, seed 001).

Two workloads, each timed against its baseline in the same run (``torch.utils.benchmark``
medians, rounds alternating the candidates; the median of each round's ratio counts):

- RepLKNet-31B inference at 224x224, batch 1 and 8, deployed (``largekernel.bake``:
  one merged kernel per large-kernel layer), its large kernels run ``direct``
  (baseline), ``fft`` and ``auto``; the outputs must agree (seed 003 swaps the
  convolutions of RepLKNet-base for FFT ones: 41.2 -> 28.7 ms on a GPU).
- A training step (forward, cross-entropy, backward, AdamW step) at 224x224, batch 4:
  ConvNeXt-T with dense 7x7 depthwise convolutions (baseline), ConvNeXt-T-dcls with
  our DCLS layers, and the same network with the official ``dcls`` package's ``Dcls2d``
  (``version="v1"``, the interpolation ours reproduces, on torch's direct convolution)
  swapped in with the same parameters; ours and the official must agree.

Peak memory: each candidate's step is rerun in one child process started with
``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks go back to the system when freed), its
resident-set high-water mark reset (``/proc/self/clear_refs``) before the step; the
peak is the mark minus the resident set before it (Linux only; the timings run in
this process with the allocator's usual settings).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from largekernel.bench._harness import format_table, machine_info, median_time, parse_suite_args, suite_parser, write_json

__all__ = ["main"]

_BACKENDS = ("direct", "fft", "auto")
# Outputs of different paths agree to float32 rounding, relative to the output's scale.
_AGREE = 1e-4


@dataclass
class _Case:
    """One candidate of a workload: ``run`` is what is timed; ``output`` the model's features (state unchanged),
    which must agree with those of the candidate ``agrees_with`` (the same network computed otherwise)."""

    workload: str
    batch: int
    candidate: str
    run: Callable[[], object]
    output: Callable[[], torch.Tensor]
    agrees_with: str | None = None

    @property
    def name(self) -> str:
        return f"{self.workload} | batch {self.batch} | {self.candidate}"


def _config(args) -> dict:
    if args.quick:  # tiny widths, kernels and images: a smoke run of every code path
        tiny = {"dims": (8, 8, 8, 8), "depths": (1, 1, 1, 1)}
        return {"replknet": {**tiny, "kernel_sizes": (7, 7, 7, 7), "small_kernel": 3}, "size": 32, "batches": [2],
                "convnext": tiny, "dcls": {"kernel_size": 7, "conv_kwargs": {"kernel_count": 6}}, "train_size": 32,
                "train_batch": 2, "threads": torch.get_num_threads()}
    return {"replknet": {}, "size": args.size, "batches": args.batches, "convnext": {}, "dcls": {},
            "train_size": args.size, "train_batch": args.train_batch, "threads": torch.get_num_threads()}


def _inference_cases(cfg: dict) -> Iterator[_Case]:
    """RepLKNet-31B inference per batch size and backend of its (baked) large kernels."""
    import largekernel
    from largekernel.models import create_model

    torch.manual_seed(0)
    model = create_model("replknet_31b", **cfg["replknet"]).eval()
    largekernel.bake(model)
    large = [m for name, m in model.named_modules() if name.endswith("large_kernel")]
    for batch in cfg["batches"]:
        x = torch.randn(batch, 3, cfg["size"], cfg["size"])
        for backend in _BACKENDS:
            def run(backend=backend, x=x, features=False):
                for m in large:
                    m.backend = backend
                with torch.inference_mode():
                    return model.forward_features(x) if features else model(x)

            yield _Case("replknet_31b inference", batch, backend, run, lambda run=run: run(features=True),
                        agrees_with=None if backend == "direct" else "direct")


def _official_dcls_copy(model):
    """``model`` (a ConvNeXt-dcls) with every DCLS layer replaced by the official ``Dcls2d`` holding the same
    Parameters (positions still shared per stage); ``None`` when the ``dcls`` package is not installed."""
    try:
        from DCLS.construct.modules import Dcls2d
    except ImportError:
        return None
    official = copy.deepcopy(model)
    logging.disable(logging.WARNING)  # the package logs about its CUDA-only kernel at construction
    try:
        for stage in official.stages:
            for block in stage.blocks:
                ours = block.conv_dw
                ref = Dcls2d(ours.in_channels, ours.out_channels, ours.kernel_count,
                             dilated_kernel_size=ours.dilated_kernel_size, padding=ours.padding, groups=ours.groups,
                             version="v1", use_implicit_gemm=False)
                ref.weight, ref.bias, ref.P = ours.weight, ours.bias, ours.P
                block.conv_dw = ref
    finally:
        logging.disable(logging.NOTSET)
    return official


def _training_cases(cfg: dict) -> Iterator[_Case]:
    """One training step of ConvNeXt-T (dense 7x7), ConvNeXt-T-dcls, and ConvNeXt-T-dcls with the official layers."""
    from largekernel.models import create_model

    torch.manual_seed(0)
    x = torch.randn(cfg["train_batch"], 3, cfg["train_size"], cfg["train_size"])
    y = torch.randint(0, 1000, (cfg["train_batch"],))
    dcls = create_model("convnext_tiny_dcls", **cfg["convnext"], **cfg["dcls"])
    ours = "convnext_tiny_dcls"
    models = {"convnext_tiny (dense 7x7)": (create_model("convnext_tiny", **cfg["convnext"]), None),
              ours: (dcls, None), f"{ours}, official dcls layers": (_official_dcls_copy(dcls), ours)}
    for name, (model, agrees_with) in models.items():
        if model is None:
            continue
        model.train()  # no dropout or drop path by default: the step is deterministic
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        def output(model=model):
            with torch.no_grad():
                return model.forward_features(x)

        yield _Case("convnext_tiny training step", cfg["train_batch"], name, step, output, agrees_with)


def _workloads(cfg: dict) -> dict[tuple[str, int], list[_Case]]:
    """The cases grouped by (workload, batch); each group's first case is its baseline."""
    groups: dict[tuple[str, int], list[_Case]] = {}
    for case in (*_inference_cases(cfg), *_training_cases(cfg)):
        groups.setdefault((case.workload, case.batch), []).append(case)
    return groups


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _time_rounds(groups: dict, rounds: int, min_run: float) -> dict[str, tuple[float, float]]:
    """Per case: (median seconds over rounds, median over rounds of its time / its baseline's in that round)."""
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for _ in range(rounds):
        for group in groups.values():
            base = None
            for case in group:
                t = median_time(case.run, min_run)
                base = base or t
                times.setdefault(case.name, []).append(t)
                ratios.setdefault(case.name, []).append(t / base)
    return {name: (statistics.median(times[name]), statistics.median(ratios[name])) for name in times}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _peak_bytes(call: Callable[[], object]) -> int:
    """Resident-set growth during one ``call`` (after a warm-up call), from the kernel's high-water mark."""
    call()  # warm-up: calibration of "auto", optimizer state, cached plans
    gc.collect()
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    call()
    return max(0, _status_kib("VmHWM") - base) * 1024


def _memory_child(cfg_json: str) -> None:
    """Child-process entry: print ``{case name: peak bytes}`` as JSON for every case of ``cfg``."""
    cfg = json.loads(cfg_json)
    torch.set_num_threads(cfg["threads"])
    peaks = {case.name: _peak_bytes(case.run) for group in _workloads(cfg).values() for case in group}
    print(json.dumps(peaks))


def _measure_memory(cfg: dict) -> dict[str, int] | None:
    """Peak bytes per case name, measured in a child process; ``None`` where /proc cannot reset the peak."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = "import sys; from largekernel.bench.models import _memory_child; _memory_child(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = suite_parser("models", __doc__, "tiny widths and images, short timings (a smoke run)", "models.json")
    parser.add_argument("--size", type=int, default=224, help="image side (px)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="RepLKNet inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=4, help="ConvNeXt training-step batch size")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, 1 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    args = parse_suite_args(parser, argv)
    cfg = _config(args)
    rounds = args.rounds or (1 if args.quick else 3)
    min_run = args.min_run_time or (0.05 if args.quick else 1.0)

    groups = _workloads(cfg)
    diffs = {}
    for group in groups.values():  # before timing: the training steps then change the weights
        outputs = {case.candidate: case.output() for case in group}
        diffs |= {case.name: _max_rel_diff(outputs[case.candidate], outputs[case.agrees_with])
                  for case in group if case.agrees_with}
    timed = _time_rounds(groups, rounds, min_run)
    peaks = None if args.no_memory else _measure_memory(cfg)
    rows = []
    for group in groups.values():
        for case in group:
            row = {"workload": case.workload, "batch": case.batch, "candidate": case.candidate,
                   "ms": 1e3 * timed[case.name][0], "time/baseline": timed[case.name][1]}
            if case.agrees_with:
                row |= {"agrees_with": case.agrees_with, "max_rel_diff": diffs[case.name]}
            if peaks is not None:
                row["peak_mib"] = peaks[case.name] / 2**20
                row["peak/baseline"] = peaks[case.name] / max(peaks[group[0].name], 1)
            rows.append(row)
    agree = all(d <= _AGREE for d in diffs.values())
    columns = ["workload", "batch", "candidate", "ms", "time/baseline", "agrees_with", "max_rel_diff"]
    columns += ["peak_mib", "peak/baseline"] if peaks is not None else []
    print(format_table(rows, columns))
    print(f"\nbaseline: the first candidate of each workload and batch; outputs agree with the same network "
          f"computed otherwise (max relative difference <= {_AGREE}): {agree}")
    if peaks is None and not args.no_memory:
        print("peak memory not measured: it needs Linux's /proc/self/clear_refs")
    path = Path(args.out) / "models.json"
    write_json(path, {"suite": "models", "machine": machine_info(), "quick": args.quick, "config": cfg,
                      "rounds": rounds, "rows": rows, "outputs_agree": agree})
    print(f"wrote {path}")
    return 0 if agree else 1
