#!/usr/bin/env bash
# Runs on the lent GPU machine, from the repository root, after tools/gpu_bundle.sh was run
# here and gpu_bundle/ carried along. One call = bundle check + GPU correctness tests +
# benchmarks + the PyTorch peers; full logs and JSON under $OUT, a short table printed last.
#   bash tools/gpu_check.sh                 everything
#   STEPS="tests ops" bash tools/gpu_check.sh   a subset of: env tests memcheck ops attention sdpa tune dense gemm preflight
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_gpu_out}
R=/tmp/primus_gpu_results
STEPS=${STEPS:-"env tests memcheck ops attention sdpa tune dense gemm preflight"}
mkdir -p "$OUT"
rm -rf "$R" && mkdir -p "$R"
LOG=$OUT/bench.log
: >"$LOG"
want() { [[ " $STEPS " == *" $1 "* ]]; }
# step NAME TIMEOUT CMD... : runs CMD (stdout to $R/NAME.out, stderr to the log), records rc and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >"$R/$name.out" 2>>"$LOG"
  local rc=$?
  cat "$R/$name.out" >>"$LOG"
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >>"$R/steps.jsonl"
}

if want env; then
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
    echo "cudnn: $(ls /usr/lib/x86_64-linux-gnu/libcudnn.so.* 2>/dev/null | head -3 | tr '\n' ' ')"
    echo "system libmpi.so.40: $(ldconfig -p | grep -c "libmpi.so.40 ") entries; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    python3 -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())' 2>&1
  } >"$R/env.out" 2>&1
  cat "$R/env.out" >>"$LOG"
  missing=$(for f in "$B"/*; do ldd "$f" | grep "not found"; done | sort -u)
  if [[ -n "$missing" ]]; then
    echo "ldd: missing libraries:" | tee -a "$LOG"
    echo "$missing" | tee -a "$LOG"
  else
    echo "ldd: all libraries resolved" | tee -a "$LOG"
  fi
fi

if want tests; then
  t0=$SECONDS
  timeout 300 "$B/primus_gpu_tests" --gtest_output="json:$R/gtest.json" >"$OUT/gpu_tests.log" 2>&1
  echo "== tests: rc=$? in $((SECONDS - t0)) s" | tee -a "$LOG"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$OUT/gpu_tests.log" | head -20
fi
if want memcheck && command -v compute-sanitizer >/dev/null; then
  step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/primus_gpu_tests" \
    --gtest_filter='CudaRmsNorm.*:CudaRope.*:CudaSwiglu.*:CudaEmbedding.*:CudaAttention.SimpleKernelMatchesCpu'
  grep -E "ERROR SUMMARY|Invalid" "$R/memcheck.out" | head -5
fi
if want ops; then
  step ops 180 "$B/primus" bench ops --shape llama3.2-1B --seq 2048 --mbs 8 --output jsonl
fi
if want attention; then
  step attention_1B 150 "$B/primus" bench attention --shape llama3.2-1B --seq 2048 --mbs 8 --all-configs --output jsonl
  step attention_tiny 90 "$B/primus" bench attention --shape llama-tiny --seq 1024 --mbs 16 --all-configs --output jsonl
  step attention_3B 90 "$B/primus" bench attention --shape llama3.2-3B --seq 2048 --mbs 2 --all-configs --output jsonl
fi
if want sdpa; then
  step sdpa 180 python3 "$PY/gpu_sdpa_ref.py" --shapes llama3.2-1B:8,llama-tiny:16,llama3.2-3B:2
fi
if want tune; then
  step tune 240 "$B/primus" tune --model-config llama3.2-1B --seq 2048 --mbs 8 --table "$OUT/gemm_tuning_1B.json" \
    --output jsonl
fi
if want dense; then
  step dense_tuned 150 env PRIMUS_GEMM_TUNING_STAGE=3 PRIMUS_GEMM_TUNING_RESULT="$OUT/gemm_tuning_1B.json" \
    "$B/primus" bench gemm-dense --shape llama3.2-1B --seq 2048 --mbs 8 --no-best --output jsonl
fi
if want gemm; then
  step gemm8192 120 "$B/primus" bench gemm --m 8192 --n 8192 --k 8192 --output jsonl
fi
if want preflight; then
  step preflight 120 "$B/primus" preflight --quick --output-dir "$R/preflight"
  cp "$R"/preflight/*.md "$OUT/preflight.md" 2>/dev/null
fi
python3 "$PY/gpu_summary.py" "$R" "$OUT"
