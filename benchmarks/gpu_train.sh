#!/usr/bin/env bash
# One prepared GPU run of the training benchmark (issue 16): model only beside `train.py` end to
# end, for fp32 / bf16 + channels-last / + torch.compile, at the reference setting (512x512,
# batch 16), with a profile of one bf16 step and nvidia-smi GPU-busy samples. Meant to finish
# within 6 minutes on one H100/H200, data generation and compilation included.
#
#   OUT=/some/folder bash benchmarks/gpu_train.sh          # on the GPU machine
#   BENCH_CPU=1 OUT=/tmp/x bash benchmarks/gpu_train.sh    # the same steps on the CPU, tiny sizes
#
# Environment: OUT (results folder, default ./gpu_out), PYTHON (default python3), PANNUKE_SITE
# (a folder of extra packages, e.g. `pip install --target` wheels, put on PYTHONPATH), BENCH_WORK
# (scratch folder, default /tmp/pannuke_gpu_bench), BENCH_BUDGET_S (no new measurement starts
# after this many seconds, default 240), BENCH_TIMEOUT_S (hard limit of the benchmark, default 320).
# Writes to $OUT: gpu_train.log (everything), bench.md + bench.json (the table), train_runs.log
# (the train.py outputs), profile_bf16-cl.md / profile_bf16-cl-compile.md, nvidia_smi.csv.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/gpu_out}
PY=${PYTHON:-python3}
WORK=${BENCH_WORK:-/tmp/pannuke_gpu_bench}
BUDGET=${BENCH_BUDGET_S:-240}
HARD_LIMIT=${BENCH_TIMEOUT_S:-320}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_train.log") 2>&1

export PYTHONPATH="$ROOT${PANNUKE_SITE:+:$PANNUKE_SITE}${PYTHONPATH:+:$PYTHONPATH}"
# Nothing may be fetched: every Hugging Face library stays offline; caches in the scratch folder.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="$WORK/hf" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [ -n "${BENCH_CPU:-}" ]; then
    # The same steps on the CPU with tiny sizes (a check of the script, not a measurement).
    SIZE_ARGS=(--device cpu --size 64 --batch 2 --base-channels 8 --num-stages 3 --model-steps 2 --model-warmup 1
               --e2e-steps 6 --e2e-warmup 2 --logging-steps 2 --patches-per-fold 6 --workers 1 --eval-samples 4
               --data-samples 4 --e2e-timeout 200)
    BUDGET=${BENCH_BUDGET_S:-100000}
    HARD_LIMIT=${BENCH_TIMEOUT_S:-1800}
else
    # 3 x 160 generated patches: 384 training images = 24 full batches of 16 per epoch.
    SIZE_ARGS=(--device cuda --size 512 --batch 16 --base-channels 64 --num-stages 5 --model-steps 15 --model-warmup 5
               --e2e-steps 80 --e2e-warmup 20 --logging-steps 10 --patches-per-fold 160 --workers 8 --eval-samples 32
               --build-num-proc 4 --e2e-timeout 150)
fi

echo "== gpu_train.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); OUT=$OUT; budget ${BUDGET}s, limit ${HARD_LIMIT}s"
(cd "$ROOT" && echo "commit $(git rev-parse --short HEAD 2>/dev/null), working tree: $(git diff --shortstat 2>/dev/null)") || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nproc
"$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "datasets", "evaluate", "numpy", "pyarrow", "cv2", "triton"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001 - report and go on: the benchmark says what fails
        print(f"{name} MISSING ({type(error).__name__}: {error})")
import torch
print("cuda available", torch.cuda.is_available(), torch.version.cuda, torch.backends.cudnn.version())
import pannuke_hf.training.run  # noqa: F401 - the whole training import chain, before any timing
print("pannuke_hf training imports: ok")
EOF

echo "== benchmark"
start=$(date +%s)
timeout --signal=TERM --kill-after=15 "$HARD_LIMIT" "$PY" "$ROOT/benchmarks/bench_train.py" "${SIZE_ARGS[@]}" \
    --settings fp32 bf16-cl bf16-cl-compile \
    --e2e-settings bf16-cl bf16-cl-compile fp32 \
    --extra-settings bf16-cl-compile-tuned bf16-cl-compile-cudagraphs \
    --time-budget-s "$BUDGET" \
    --workdir "$WORK/bench" \
    --profile-dir "$OUT" --smi-log "$OUT/nvidia_smi.csv" \
    --out-json "$OUT/bench.json" --out-md "$OUT/bench.md" --log "$OUT/train_runs.log"
status=$?
echo "== benchmark exit status $status after $(( $(date +%s) - start )) s (124: cut at ${HARD_LIMIT}s; the tables keep what was measured)"
[ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"
exit $status
