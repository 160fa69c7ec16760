"""``largekernel bench models``: whole-model timings and peak memory (seed 003, Table 3; DCLS, seed 001).

Workloads (``--workloads``; the first two by default), each timed against its baseline
in the same run (``torch.utils.benchmark`` medians, rounds alternating the candidates;
the median of each round's ratio counts):

- ``replknet-inference``: RepLKNet-31B inference at 224x224, batch 1 and 8, deployed
  (``largekernel.bake``: one merged kernel per large-kernel layer), its large kernels
  run ``direct`` (baseline), ``fft`` and ``auto``; the outputs must agree (seed 003
  swaps the convolutions of RepLKNet-base for FFT ones: 41.2 -> 28.7 ms on a GPU).
- ``convnext-train``: a training step (forward, cross-entropy, backward, AdamW step) at
  224x224, batch 4: ConvNeXt-T with dense 7x7 depthwise convolutions (baseline),
  ConvNeXt-T-dcls with our DCLS layers, and the same network with the official ``dcls``
  package's ``Dcls2d`` (``version="v1"``, the interpolation ours reproduces, on torch's
  direct convolution) swapped in with the same parameters; ours and the official must agree.
- ``replknet-train``: the same training step of RepLKNet-31B (not deployed: each
  RepLK layer's 31x31 and 5x5 branches), its RepLK layers run ``direct`` (baseline),
  ``fft`` and ``auto``; the outputs must agree.

``--dtype bfloat16`` / ``float16`` runs the timed forwards under autocast (mixed
precision); the agreement is checked in float32 (TF32 off), before any timing.

Peak memory on the CPU: each candidate's step is rerun in one child process started with
``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks go back to the system when freed), its
resident-set high-water mark reset (``/proc/self/clear_refs``) before the step; the
peak is the mark minus the resident set before it (Linux only; the timings run in
this process with the allocator's usual settings). On CUDA: torch's allocator
high-water mark during the step, above what was allocated before it
(``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import copy
import gc
import json
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

from largekernel.bench._harness import (DTYPES, autocast, cuda_peak_bytes, float32_exact, format_table, machine_info,
                                        median_time, parse_suite_args, quiet_dcls_package, suite_parser, write_json)

__all__ = ["main"]

_BACKENDS = ("direct", "fft", "auto")
# Outputs of different paths agree to float32 rounding, relative to the output's scale.
_AGREE = 1e-4
WORKLOADS = ("replknet-inference", "convnext-train", "replknet-train")


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
    common = {"threads": torch.get_num_threads(), "device": args.device,
              "dtype": str(args.dtype).removeprefix("torch."), "workloads": list(args.workloads)}
    if args.quick:  # tiny widths, kernels and images: a smoke run of every code path
        tiny = {"dims": (8, 8, 8, 8), "depths": (1, 1, 1, 1)}
        return {"replknet": {**tiny, "kernel_sizes": (7, 7, 7, 7), "small_kernel": 3}, "size": 32, "batches": [2],
                "convnext": tiny, "dcls": {"kernel_size": 7, "conv_kwargs": {"kernel_count": 6}}, "train_size": 32,
                "train_batch": 2, **common}
    return {"replknet": {}, "size": args.size, "batches": args.batches, "convnext": {}, "dcls": {},
            "train_size": args.size, "train_batch": args.train_batch, **common}


def _set_backend(layers: list, backend: str) -> None:
    for m in layers:
        m.backend = backend


def _inference_cases(cfg: dict) -> Iterator[_Case]:
    """RepLKNet-31B inference per batch size and backend of its (baked) large kernels."""
    import largekernel
    from largekernel.models import create_model

    device, dtype = cfg["device"], DTYPES[cfg["dtype"]]
    torch.manual_seed(0)
    model = create_model("replknet_31b", **cfg["replknet"]).eval()
    largekernel.bake(model)
    model.to(device)
    large = [m for name, m in model.named_modules() if name.endswith("large_kernel")]
    for batch in cfg["batches"]:
        x = torch.randn(batch, 3, cfg["size"], cfg["size"], device=device)
        for backend in _BACKENDS:
            def run(backend=backend, x=x):
                _set_backend(large, backend)
                with torch.inference_mode(), autocast(device, dtype):
                    return model(x)

            def output(backend=backend, x=x):
                _set_backend(large, backend)
                with torch.inference_mode():
                    return model.forward_features(x)

            yield _Case("replknet_31b inference", batch, backend, run, output,
                        agrees_with=None if backend == "direct" else "direct")


def _official_dcls_copy(model):
    """``model`` (a ConvNeXt-dcls) with every DCLS layer replaced by the official ``Dcls2d`` holding the same
    Parameters (positions still shared per stage); ``None`` when the ``dcls`` package is not installed."""
    try:
        from DCLS.construct.modules import Dcls2d
    except ImportError:
        return None
    official = copy.deepcopy(model)
    with quiet_dcls_package():
        for stage in official.stages:
            for block in stage.blocks:
                ours = block.conv_dw
                ref = Dcls2d(ours.in_channels, ours.out_channels, ours.kernel_count,
                             dilated_kernel_size=ours.dilated_kernel_size, padding=ours.padding, groups=ours.groups,
                             version="v1", use_implicit_gemm=False)
                ref.weight, ref.bias, ref.P = ours.weight, ours.bias, ours.P
                block.conv_dw = ref
    return official


def _training_step(model, x, y, device: str, dtype: torch.dtype, before=None):
    """A training step of ``model`` (``before`` runs first: a backend switch), and its features without autograd."""
    model.train()  # no dropout or drop path by default: the step is deterministic
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if before is not None:
            before()
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    def output():
        if before is not None:
            before()
        with torch.no_grad():
            return model.forward_features(x)

    return step, output


def _batch(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(cfg["train_batch"], 3, cfg["train_size"], cfg["train_size"], device=cfg["device"])
    return x, torch.randint(0, 1000, (cfg["train_batch"],), device=cfg["device"])


def _training_cases(cfg: dict) -> Iterator[_Case]:
    """One training step of ConvNeXt-T (dense 7x7), ConvNeXt-T-dcls, and ConvNeXt-T-dcls with the official layers."""
    from largekernel.models import create_model

    device, dtype = cfg["device"], DTYPES[cfg["dtype"]]
    x, y = _batch(cfg)
    dcls = create_model("convnext_tiny_dcls", **cfg["convnext"], **cfg["dcls"])
    ours = "convnext_tiny_dcls"
    models = {"convnext_tiny (dense 7x7)": (create_model("convnext_tiny", **cfg["convnext"]), None),
              ours: (dcls, None), f"{ours}, official dcls layers": (_official_dcls_copy(dcls), ours)}
    for name, (model, agrees_with) in models.items():
        if model is None:
            continue
        step, output = _training_step(model.to(device), x, y, device, dtype)
        yield _Case("convnext_tiny training step", cfg["train_batch"], name, step, output, agrees_with)


def _replknet_training_cases(cfg: dict) -> Iterator[_Case]:
    """One training step of RepLKNet-31B (re-parameterisable branches) per backend of its RepLK layers."""
    from largekernel.models import create_model

    device, dtype = cfg["device"], DTYPES[cfg["dtype"]]
    x, y = _batch(cfg)
    model = create_model("replknet_31b", **cfg["replknet"]).to(device)
    large = [m for name, m in model.named_modules() if name.endswith("large_kernel")]
    for backend in _BACKENDS:
        step, output = _training_step(model, x, y, device, dtype, before=lambda b=backend: _set_backend(large, b))
        yield _Case("replknet_31b training step", cfg["train_batch"], backend, step, output,
                    agrees_with=None if backend == "direct" else "direct")


_CASES = {"replknet-inference": _inference_cases, "convnext-train": _training_cases,
          "replknet-train": _replknet_training_cases}


def _workloads(cfg: dict) -> dict[tuple[str, int], list[_Case]]:
    """The cases grouped by (workload, batch); each group's first case is its baseline."""
    groups: dict[tuple[str, int], list[_Case]] = {}
    for workload in cfg["workloads"]:
        for case in _CASES[workload](cfg):
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


def _peaks(cfg: dict, groups: dict) -> dict[str, int] | None:
    """Peak bytes per case: CUDA's allocator in this process, or the CPU's resident set in a child process."""
    if cfg["device"] == "cuda":
        return {case.name: cuda_peak_bytes(case.run) for group in groups.values() for case in group}
    return _measure_memory(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = suite_parser("models", __doc__, "tiny widths and images, short timings (a smoke run)", "models.json",
                          dtype_help="float32 (default), or the autocast dtype of the timed steps")
    parser.add_argument("--size", type=int, default=224, help="image side (px)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="RepLKNet inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=4, help="ConvNeXt training-step batch size")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, 1 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS[:2]),
                        help=f"what to time (default: {' '.join(WORKLOADS[:2])})")
    args = parse_suite_args(parser, argv)
    cfg = _config(args)
    rounds = args.rounds or (1 if args.quick else 3)
    min_run = args.min_run_time or (0.05 if args.quick else 1.0)

    groups = _workloads(cfg)
    diffs = {}
    with float32_exact():
        for group in groups.values():  # before timing: the training steps then change the weights
            outputs = {case.candidate: case.output() for case in group}
            diffs |= {case.name: _max_rel_diff(outputs[case.candidate], outputs[case.agrees_with])
                      for case in group if case.agrees_with}
    timed = _time_rounds(groups, rounds, min_run)
    peaks = None if args.no_memory else _peaks(cfg, groups)
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
    write_json(path, {"suite": "models", "machine": machine_info(args.device, args.dtype), "quick": args.quick,
                      "config": cfg,
                      "rounds": rounds, "rows": rows, "outputs_agree": agree})
    print(f"wrote {path}")
    return 0 if agree else 1
