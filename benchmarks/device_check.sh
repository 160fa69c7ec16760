#!/usr/bin/env bash
# The CUDA device check of issue 19, in one run on a bare GPU machine (PyTorch with CUDA, no package registry):
#
#   benchmarks/device_check.sh OUTDIR                 # on the GPU machine, from anywhere
#   benchmarks/device_check.sh OUTDIR --cpu-dry-run   # the same steps on the CPU at tiny sizes (a couple of minutes)
#
# Steps, each under `timeout` and an overall deadline (DEADLINE_S, default 450 s, so a hang cannot eat the budget and
# the whole run ends well inside 8 minutes); a step that fails, times out or finds no time left is recorded and the
# script goes on:
#   1. env      nvidia-smi and what torch sees (GPU, CUDA, cuDNN, Python)
#   2. wheels   installs, from benchmarks/wheels (no index), the project's dependencies the machine lacks
#   3. install  pip install --no-deps -e . (build backend from the same wheels); else PYTHONPATH=src
#   4. tests    the CUDA-parametrised tests (pytest -k cuda over the device-parametrised files)
#   5. bench    every `largekernel bench` suite on CUDA in float32 and bfloat16, most important first
# Outputs in OUTDIR: device_check.json and device_check.md (every step, the tests' counts, every target met or not,
# every bench row), logs/*.log, bench/SUITE-DTYPE/*.json. Exit status 0 when every step succeeded, 1 otherwise.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--cpu-dry-run]" >&2; exit 2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
OUT=$1
DRY=0
if [ $# -eq 2 ]; then
    if [ "$2" = "--cpu-dry-run" ]; then DRY=1; else usage; fi
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/logs" "$OUT/bench" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-$(command -v python3 || command -v python)}
DEADLINE_S=${DEADLINE_S:-450}
RESERVE_S=15   # kept for the summary
START=$(date +%s)
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\trc\tseconds\tlog\n' > "$STEPS"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OUT DRY PY REPO

# run_step NAME TIMEOUT_S CMD...: run CMD (a program, or a function of this script) with its output in
# logs/NAME.log, within the time that is left.
run_step() {
    local name=$1 limit=$2; shift 2
    local log="$OUT/logs/$name.log" left status rc t0 t1
    left=$(( DEADLINE_S - ($(date +%s) - START) - RESERVE_S - 10 ))
    if [ "$left" -lt 10 ]; then
        printf '%s\tskipped: no time left\t\t0\t\n' "$name" >> "$STEPS"
        echo "== $name: skipped (no time left)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s.%N)
    if [ "$(type -t "$1")" = function ]; then
        timeout --kill-after=10 "$limit" bash -c "$*" > "$log" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    fi
    rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after ${limit}s" ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")" "logs/$name.log" >> "$STEPS"
    echo "   $status (rc $rc); last lines:"
    tail -n 3 "$log" | sed 's/^/   | /'
    return 0
}

# ----------------------------------------------------------------------------- 1. env
env_info() {
    if [ "$DRY" = 0 ]; then nvidia-smi; else echo "nvidia-smi: not run (--cpu-dry-run)"; fi
    "$PY" - "$OUT/env.json" "$DRY" <<'EOF'
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "dry_run": sys.argv[2] == "1"}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "gpu_memory_gib": round(props.total_memory / 2**30, 1),
             "multiprocessors": props.multi_processor_count}
print(json.dumps(info, indent=2))
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
if sys.argv[2] == "0" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
EOF
}
export -f env_info
run_step env 60 env_info

# ----------------------------------------------------------------------------- 2. wheels
# (import name, distribution): the project's runtime and test dependencies beyond torch and numpy. Those the machine
# lacks are installed from benchmarks/wheels without an index; missing ones without a wheel there are reported.
install_wheels() {
    local missing
    missing=$("$PY" - <<'EOF'
import importlib.util
needed = {"DCLS": "dcls", "jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser",
          "typeshed_client": "typeshed-client", "mnist1d": "mnist1d", "fft_conv_pytorch": "fft-conv-pytorch",
          "tqdm": "tqdm", "yaml": "pyyaml", "safetensors": "safetensors", "hypothesis": "hypothesis",
          "sortedcontainers": "sortedcontainers", "matplotlib": "matplotlib", "PIL": "pillow",
          "sklearn": "scikit-learn", "scipy": "scipy", "pytest": "pytest"}
print(" ".join(dist for module, dist in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
    echo "missing: ${missing:-none}"
    [ -z "$missing" ] && return 0
    if [ "$DRY" = 1 ]; then echo "--cpu-dry-run: not installing"; return 1; fi
    local have=() lacking=()
    for dist in $missing; do
        if ls benchmarks/wheels/"$(echo "$dist" | tr - _)"-*.whl >/dev/null 2>&1; then have+=("$dist"); else lacking+=("$dist"); fi
    done
    [ ${#have[@]} -gt 0 ] && "$PY" -m pip install -q --no-index --no-deps --find-links benchmarks/wheels "${have[@]}"
    local rc=$?
    [ ${#lacking[@]} -gt 0 ] && { echo "no wheel in benchmarks/wheels for: ${lacking[*]}"; return 1; }
    return $rc
}
export -f install_wheels
run_step wheels 90 install_wheels

# ----------------------------------------------------------------------------- 3. install
install_project() {
    if [ "$DRY" = 1 ]; then echo "--cpu-dry-run: not installing; PYTHONPATH=$REPO/src"; return 0; fi
    "$PY" -m pip install -q --no-deps --no-index --find-links benchmarks/wheels -e . && return 0
    echo "isolated build failed; trying the machine's setuptools"
    "$PY" -m pip install -q --no-deps --no-build-isolation -e .
}
export -f install_project
run_step install 120 install_project
# Whatever the install did, this tree's sources are the ones that run.
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

# ----------------------------------------------------------------------------- 4. tests
TEST_FILES=(tests/test_engine.py tests/test_fft_conv.py tests/test_guarantees.py tests/test_niff.py tests/test_dcls.py
            tests/test_flexconv.py tests/test_sequence.py tests/test_models.py tests/test_learning.py
            tests/test_bench_suites.py)
# About 700 CUDA instances; with pytest-xdist (in the GPU image) four processes share the GPU.
PARALLEL=()
if "$PY" -c "import xdist" 2>/dev/null; then PARALLEL=(-n 4); fi
if [ "$DRY" = 1 ]; then
    run_step tests 150 "$PY" -m pytest -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} --durations=10 -k cpu \
        --junitxml="$OUT/tests.xml" tests/test_engine.py tests/test_bench_suites.py
else
    run_step tests 170 "$PY" -m pytest -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} --durations=20 -k cuda \
        --junitxml="$OUT/tests.xml" "${TEST_FILES[@]}"
fi

# ----------------------------------------------------------------------------- 5. bench
DEV=cuda
[ "$DRY" = 1 ] && DEV=cpu
# suite -> options (the issue's CUDA workloads; tiny ones for the dry run); "flexconv-long" is the flexconv suite at
# length 65536 with fewer channels (its direct path multiplies L^2 per channel pair).
declare -A OPTS
if [ "$DRY" = 0 ]; then
    OPTS[conv]="conv --channels 96 384 --batch 64 --size 56 --kernels 7 13 31 51 --rounds 1 --min-run-time 0.05 --max-warmup 0.5"
    OPTS[dcls]="dcls --batch 64 --min-run-time 0.1"
    OPTS[models]="models --workloads replknet-inference convnext-train replknet-train --batches 1 8 --train-batch 32 --rounds 1 --min-run-time 0.1"
    OPTS[flexconv]="flexconv --lengths 4096 --batch 8 --channels 64 --min-run-time 0.1 --max-warmup 1"
    OPTS[flexconv-long]="flexconv --lengths 65536 --batch 2 --channels 16 --min-run-time 0.1 --max-warmup 1"
    OPTS[niff]="niff --batch 64 --rounds 1 --min-run-time 0.1"
    OPTS[fit]="fit --batch 8 --rounds 1 --min-run-time 0.1"
    LIMIT=(conv 75 dcls 30 models 75 flexconv 40 flexconv-long 50 niff 25 fit 35)
else
    OPTS[conv]="conv --channels 2 3 --batch 2 --size 12 --kernels 3 5 --rounds 1 --min-run-time 0.001"
    OPTS[dcls]="dcls --quick --batch 1 --channels 4 --size 20 --min-run-time 0.001"
    OPTS[models]="models --quick --workloads replknet-inference convnext-train replknet-train --rounds 1 --min-run-time 0.001"
    OPTS[flexconv]="flexconv --lengths 64 --batch 2 --channels 2 --min-run-time 0.001"
    OPTS[flexconv-long]="flexconv --lengths 256 --batch 1 --channels 2 --min-run-time 0.001"
    OPTS[niff]="niff --quick --batch 2 --channels 3 --size 10 --min-run-time 0.001"
    OPTS[fit]="fit --quick --sizes 16 32 --min-run-time 0.001"
    LIMIT=(conv 60 dcls 30 models 60 flexconv 30 flexconv-long 30 niff 30 fit 30)
fi
declare -A LIMITS
for ((i = 0; i < ${#LIMIT[@]}; i += 2)); do LIMITS[${LIMIT[i]}]=${LIMIT[i + 1]}; done
# Most important first: if time runs short, the last ones are the ones skipped.
ORDER=(conv:float32 conv:bfloat16 dcls:float32 dcls:bfloat16 models:float32 flexconv:float32 flexconv-long:float32
       niff:float32 fit:float32 models:bfloat16 niff:bfloat16 flexconv:bfloat16 fit:bfloat16 flexconv-long:bfloat16)
for item in "${ORDER[@]}"; do
    suite=${item%%:*}
    dtype=${item##*:}
    # shellcheck disable=SC2086  # the options are words
    run_step "bench-$suite-$dtype" "${LIMITS[$suite]}" "$PY" -m largekernel bench ${OPTS[$suite]} --device "$DEV" \
        --dtype "$dtype" --out "$OUT/bench/$suite-$dtype"
done

# ----------------------------------------------------------------------------- summary
"$PY" "$REPO/benchmarks/device_summary.py" "$OUT" > "$OUT/logs/summary.log" 2>&1 \
    || { echo "summary failed:"; cat "$OUT/logs/summary.log"; }
echo "== done in $(( $(date +%s) - START ))s: $OUT/device_check.md, $OUT/device_check.json"
awk -F '\t' 'NR > 1 && $2 != "ok" { bad = 1 } END { exit bad }' "$STEPS"
