#!/usr/bin/env bash
# The GPU checks, as one bounded script for a host with an NVIDIA GPU and onnxruntime-gpu
# (a lent GPU machine, a GPU node): the GPU tests, the model store on CUDA against the CPU,
# and one load profile on CUDA against the CPU. Every step has a time limit; a failed step
# does not stop the next one. Figures from a run are in docs/benchmarks.md ("GPU").
#
#   OUT=/tmp/gpu loadtests/gpu_check.sh            # PYTHON (default python3) must see
#                                                  # onnxruntime-gpu and this project's deps
# Environment: STEPS (default "host tests memory store load"), MODELS (store benchmark on
# the CPU, default 1000), MODELS_CUDA (on CUDA, default 400: each CUDA session holds about
# 200 MiB of GPU memory, see docs/models.md), LOAD_S (seconds per load run, 20),
# LOAD_USERS (32), LOAD_BATCH (rows per request, 64), LOAD_WORKERS (4).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-loadtests/results/gpu-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-host tests memory store load}
MODELS=${MODELS:-1000}
MODELS_CUDA=${MODELS_CUDA:-400}
LOAD_S=${LOAD_S:-20}
LOAD_USERS=${LOAD_USERS:-32}
LOAD_BATCH=${LOAD_BATCH:-64}
LOAD_WORKERS=${LOAD_WORKERS:-4}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1
# The servers run this checkout's package (python -m server) where scorehost is not installed.
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { echo "== $* ($(date +%T))" | tee -a "$LOG"; }
# run LIMIT_S CMD...: bounded, output into the log, never fatal.
run() {
    local limit=$1
    shift
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "-- rc ${PIPESTATUS[0]}" | tee -a "$LOG"
}

wants() { [[ " $STEPS " == *" $1 "* ]]; }

if wants host; then
    step "host"
    run 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
    run 30 "$PY" -c 'import sys, onnxruntime as ort; print(sys.version.split()[0], "onnxruntime", ort.__version__, ort.get_available_providers())'
    run 10 nproc
fi

if wants tests; then
    step "GPU tests"
    run 240 "$PY" -m pytest -q -s -p no:cacheprovider --timeout 200 tests/test_gpu.py
fi

if wants memory; then
    step "GPU memory per CUDA session, by provider options"
    run 240 "$PY" loadtests/gpu_memory.py --sessions 20
fi

if wants store; then
    step "model store: $MODELS_CUDA models on CUDA, $MODELS on the CPU"
    SCOREHOST_DEVICE=cuda run 200 "$PY" loadtests/bench_models.py --models "$MODELS_CUDA" --server \
        --requests 2000 --timeout 150 --dir "$WORK/store_cuda" --json "$OUT/store_cuda.json"
    SCOREHOST_DEVICE=cpu run 200 "$PY" loadtests/bench_models.py --models "$MODELS" --server \
        --requests 2000 --timeout 90 --dir "$WORK/store_cpu" --json "$OUT/store_cpu.json"
fi

if wants load; then
    step "load profile: multi-model (one model), V2, MLP 64-1024-1024-8, batch $LOAD_BATCH, $LOAD_USERS users"
    run 60 "$PY" -c "from loadtests.models import make_mlp; make_mlp('$WORK/load/mlp/1/model.onnx', n_in=64, n_hidden=1024, n_out=8, hidden_layers=2)"
    # name=server environment: the default (CUDA, 4 MB cuBLAS workspace), cuBLAS's own workspace, the CPU.
    for variant in cuda=SCOREHOST_DEVICE=cuda cuda-cublas-default=SCOREHOST_GPU_CUBLAS_WORKSPACE_MB=0 \
        cpu=SCOREHOST_DEVICE=cpu; do
        name=${variant%%=*}
        run $((LOAD_S + 60)) "$PY" -m loadtests.run multi-model --model-dir "$WORK/load" --batch "$LOAD_BATCH" \
            --users "$LOAD_USERS" --duration "$LOAD_S" --workers "$LOAD_WORKERS" --server-env "${variant#*=}" \
            --server-env SCOREHOST_DEVICE="${name%%-*}" --no-plots --quiet --out "$WORK/load_$name"
        cp "$WORK/load_$name/summary.md" "$OUT/load_$name.md" 2>/dev/null
    done
fi
step "done"
