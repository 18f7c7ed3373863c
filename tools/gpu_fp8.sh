#!/usr/bin/env bash
# FP8 training on the lent GPU (docs/PERFORMANCE.md, "FP8"): our bf16 against fp8 at the same
# shape in one call. Run from the repo root on the GPU machine after tools/gpu_bundle.sh:
#   bash tools/gpu_fp8.sh speed                 # 3B (seq 2048 x 2) and 1B (2048 x 8), mock data
#   bash tools/gpu_fp8.sh curve [ITERS]         # 1B shape on Brown, bf16 and fp8 (default 300 steps)
#   bash tools/gpu_fp8.sh diag                  # the CudaFp8 GPU tests; if they fail, cuBLASLt's API trace of
#                                               # our FP8 GEMM next to torch._scaled_mm's (same dtypes) to compare
# speed prints the median tokens/s of the second half of each run and the peak device memory
# (nvidia-smi, sampled every 100 ms); curve copies each run's metrics.jsonl to $OUT for
# `primus plot`. SPEED_STEPS (default 24), FP8_SETS (extra --set pairs for the fp8 runs), QUICK=1 (no
# tensorwise run at 1B), SHAPES (default "3b 1b"),
# CURVES (default "bf16 fp8 fp16"; a missing run's metrics are read from $OUT if there), TRAIN_TIMEOUT (seconds per run, default 400).
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_fp8}
mkdir -p "$OUT"
mode=${1:-speed}
median_tps() {
  python3 -c 'import re,statistics,sys; v=[float(x) for x in re.findall(r"throughput \(tokens/s\): ([0-9.]+)", open(sys.argv[1]).read())]; print(round(statistics.median(v[len(v)//2:])) if v else "none")' "$1"
}
mem_start() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null & MEMPID=$!; }
mem_stop() { kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; sort -n "$1" | tail -1; }
run() {  # tag experiment seq mbs iters [--set ...]
  local tag=$1 exp=$2 seq=$3 mbs=$4 iters=$5
  shift 5
  mem_start "$OUT/mem_$tag.txt"
  timeout "${TRAIN_TIMEOUT:-400}" "$B/primus" train --config "$exp" --set bf16=true --set micro_batch_size="$mbs" \
    --set global_batch_size="$mbs" --set seq_length="$seq" --set train_iters="$iters" --set log_interval=1 \
    --set log_num_zeros_in_grad=false "$@" >"$OUT/$tag.log" 2>&1
  local rc=$?
  local peak
  peak=$(mem_stop "$OUT/mem_$tag.txt")
  echo "$tag: rc=$rc tokens/s $(median_tps "$OUT/$tag.log") peak_mib $peak"
  ((rc == 0)) || tail -5 "$OUT/$tag.log"
}
FP8=(--set fp8=hybrid --set fp8_recipe=delayed --set fp8_amax_history_len=16 --set fp8_amax_compute_algo=max)
read -r -a EXTRA <<<"${FP8_SETS:-}"
if [[ $mode == diag ]]; then
  "$B/primus_gpu_tests" --gtest_filter='CudaFp8*' >"$OUT/fp8_tests.log" 2>&1
  rc=$?
  tail -12 "$OUT/fp8_tests.log"
  ((rc == 0)) && exit 0
  # CUBLASLT_LOG_LEVEL=5: every cuBLASLt call with its descriptors' attributes.
  CUBLASLT_LOG_LEVEL=5 "$B/primus_gpu_tests" --gtest_filter='CudaFp8.Linear*' >"$OUT/fp8_lt_trace.log" 2>&1
  echo "--- ours (first cublasLtMatmul calls and errors)"
  grep -n "cublasLtMatmul(\|cublasLtMatmulAlgoGetHeuristic(" "$OUT/fp8_lt_trace.log" | head -3 | cut -c1-2000
  grep -n -i "error\|not supported" "$OUT/fp8_lt_trace.log" | head -6 | cut -c1-600
  CUBLASLT_LOG_LEVEL=5 python3 - >"$OUT/fp8_torch_trace.log" 2>&1 <<'PY'
import torch
M, N, K = 256, 512, 128
one = torch.tensor(1.0, device="cuda")
x = (torch.randn(M, K, device="cuda") * 0.5).to(torch.float8_e4m3fn)
w = (torch.randn(N, K, device="cuda") * 0.5).to(torch.float8_e4m3fn)
g = (torch.randn(M, K, device="cuda") * 0.5).to(torch.float8_e5m2)
for a, name in ((x, "e4m3"), (g, "e5m2")):
    for out in (torch.bfloat16, torch.float32):
        try:
            torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one, out_dtype=out)
            print("torch._scaled_mm", name, "x e4m3 ->", out, "ok")
        except Exception as e:
            print("torch._scaled_mm", name, "x e4m3 ->", out, "failed:", str(e)[:200])
torch.cuda.synchronize()
PY
  echo "--- torch._scaled_mm"
  grep -v "^\[" "$OUT/fp8_torch_trace.log" | head -6
  grep -n "cublasLtMatmul(" "$OUT/fp8_torch_trace.log" | head -2 | cut -c1-2000
  exit 1
elif [[ $mode == speed ]]; then
  S=${SPEED_STEPS:-24}
  MOCK=(--set save=null --set mock_data=true --set untie_embeddings_and_output_weights=true --set eval_iters=0)
  for shape in "3b examples/megatron/llama3.2_3B-pretrain.yaml 2" "1b examples/megatron/llama3.2_1B-pretrain.yaml 8"; do
    read -r tag exp mbs <<<"$shape"
    [[ " ${SHAPES:-3b 1b} " == *" $tag "* ]] || continue
    run "${tag}_bf16" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}"
    run "${tag}_fp8_delayed" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}" "${FP8[@]}" "${EXTRA[@]}"
    [[ $tag == 1b && -n ${QUICK:-} ]] && continue
    run "${tag}_fp8_tensorwise" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}" --set fp8=hybrid --set fp8_recipe=tensorwise \
      "${EXTRA[@]}"
  done
  grep -h "fp8:" "$OUT"/*_fp8_delayed.log | head -1 | cut -c1-300
elif [[ $mode == curve ]]; then
  N=${2:-300}
  # The Brown corpus and the Llama 3.1 tokenizer as tools/gpu_bundle.sh packs them.
  BROWN=(--set save=null --set mock_data=false --set train_data_path="$BUNDLE_DIR/data/brown_llama3_text_document"
         --set data_cache_path="$OUT/cache" --set tokenizer_type=HuggingFaceTokenizer
         --set tokenizer_model="$BUNDLE_DIR/data/tokenizer.json" --set eval_iters=0 --set lr=3e-4 --set min_lr=3e-5
         --set lr_warmup_iters=30 --set lr_decay_iters="$N" --set workspace="$OUT/ws" --set seed=1234)
  want() { [[ " ${CURVES:-bf16 fp8 fp16} " == *" $1 "* ]]; }
  want bf16 && run curve_bf16 examples/megatron/llama3.2_1B-pretrain.yaml 2048 4 "$N" "${BROWN[@]}" --set exp_name=curve_bf16
  want fp8 && run curve_fp8 examples/megatron/llama3.2_1B-pretrain.yaml 2048 4 "$N" "${BROWN[@]}" "${FP8[@]}" \
    "${EXTRA[@]}" --set exp_name=curve_fp8
  # Issue 17's fp16 check: dynamic loss scaling on the GPU, 200 steps beside bf16 (the examples'
  # bf16-only memory savings off).
  want fp16 && run curve_fp16 examples/megatron/llama3.2_1B-pretrain.yaml 2048 4 "$((N < 200 ? N : 200))" "${BROWN[@]}" \
    --set bf16=false --set fp16=true --set grad_reduce_in_bf16=false --set use_precision_aware_optimizer=false \
    --set exp_name=curve_fp16
  want fp16 && grep -h "loss scale" "$OUT/curve_fp16.log" | tail -2 | cut -c1-400
  for t in bf16 fp8 fp16; do
    f=$(find "$OUT/ws" -path "*curve_$t*" -name metrics.jsonl | head -1)
    [[ -n $f ]] && cp "$f" "$OUT/metrics_$t.jsonl"
  done
  python3 - "$OUT/metrics_bf16.jsonl" "$OUT/metrics_fp8.jsonl" "$OUT/metrics_fp16.jsonl" <<'PY'
import json, sys
def losses(p):
    out = {}
    for line in open(p):
        r = json.loads(line)
        if r.get("type") == "train" and "lm_loss" in r:
            out[r["iteration"]] = r["lm_loss"]
    return out
a = losses(sys.argv[1])
for name, path in (("fp8", sys.argv[2]), ("fp16", sys.argv[3])):
    try:
        b = losses(path)
    except OSError:
        print(f"{name}: no metrics"); continue
    its = sorted(set(a) & set(b))
    warm = [i for i in its if i > 30]
    if not warm:
        print(f"{name}: no common iterations after warm-up"); continue
    worst = max(abs(b[i] - a[i]) / a[i] for i in warm)
    mean = sum(abs(b[i] - a[i]) / a[i] for i in warm) / len(warm)
    print(f"{name}: {len(its)} common iterations; after warm-up (iteration > 30) |{name} - bf16| / bf16 worst {worst:.4f} mean {mean:.4f}")
    for i in [1, 10, 30, 50, 100, 150, 200, 250, 300, its[-1]]:
        if i in a and i in b:
            print(f"  iteration {i}: bf16 {a[i]:.4f} {name} {b[i]:.4f} ({(b[i] - a[i]) / a[i]:+.4f})")
PY
fi
