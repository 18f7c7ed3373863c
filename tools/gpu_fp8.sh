#!/usr/bin/env bash
# FP8 training on the lent GPU (docs/PERFORMANCE.md, "FP8"): our bf16 against fp8 at the same
# shape in one call. Run from the repo root on the GPU machine after tools/gpu_bundle.sh:
#   bash tools/gpu_fp8.sh speed                 # 3B (seq 2048 x 2) and 1B (2048 x 8), mock data
#   bash tools/gpu_fp8.sh curve [ITERS]         # 1B shape on Brown, bf16 and fp8 (default 300 steps)
# speed prints the median tokens/s of the second half of each run and the peak device memory
# (nvidia-smi, sampled every 100 ms); curve copies each run's metrics.jsonl to $OUT for
# `primus plot`. SPEED_STEPS (default 24) and FP8_SETS (extra --set pairs for the fp8 runs).
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
if [[ $mode == speed ]]; then
  S=${SPEED_STEPS:-24}
  MOCK=(--set save=null --set mock_data=true --set untie_embeddings_and_output_weights=true --set eval_iters=0)
  for shape in "3b examples/megatron/llama3.2_3B-pretrain.yaml 2" "1b examples/megatron/llama3.2_1B-pretrain.yaml 8"; do
    read -r tag exp mbs <<<"$shape"
    run "${tag}_bf16" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}"
    run "${tag}_fp8_delayed" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}" "${FP8[@]}" "${EXTRA[@]}"
    run "${tag}_fp8_tensorwise" "$exp" 2048 "$mbs" "$S" "${MOCK[@]}" --set fp8=hybrid --set fp8_recipe=tensorwise \
      "${EXTRA[@]}"
  done
  grep -h "fp8:" "$OUT"/3b_fp8_delayed.log | head -2
elif [[ $mode == curve ]]; then
  N=${2:-300}
  # The Brown corpus and the Llama 3.1 tokenizer as tools/gpu_bundle.sh packs them.
  BROWN=(--set save=null --set mock_data=false --set train_data_path="$BUNDLE_DIR/data/brown_llama3_text_document"
         --set data_cache_path="$OUT/cache" --set tokenizer_type=HuggingFaceTokenizer
         --set tokenizer_model="$BUNDLE_DIR/data/tokenizer.json" --set eval_iters=0 --set lr=3e-4 --set min_lr=3e-5
         --set lr_warmup_iters=30 --set lr_decay_iters="$N" --set workspace="$OUT/ws" --set seed=1234)
  run curve_bf16 examples/megatron/llama3.2_1B-pretrain.yaml 2048 4 "$N" "${BROWN[@]}" --set exp_name=curve_bf16
  run curve_fp8 examples/megatron/llama3.2_1B-pretrain.yaml 2048 4 "$N" "${BROWN[@]}" "${FP8[@]}" "${EXTRA[@]}" \
    --set exp_name=curve_fp8
  for t in bf16 fp8; do
    f=$(find "$OUT/ws" -path "*curve_$t*" -name metrics.jsonl | head -1)
    [[ -n $f ]] && cp "$f" "$OUT/metrics_$t.jsonl"
  done
  python3 - "$OUT/metrics_bf16.jsonl" "$OUT/metrics_fp8.jsonl" <<'PY'
import json, sys
def losses(p):
    out = {}
    for line in open(p):
        r = json.loads(line)
        if r.get("type") == "train" and "lm loss" in r:
            out[r["iteration"]] = r["lm loss"]
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
its = sorted(set(a) & set(b))
warm = [i for i in its if i > 30]
worst = max(abs(b[i] - a[i]) / a[i] for i in warm)
print(f"curve: {len(its)} common iterations; after warm-up (iteration > 30) worst |fp8 - bf16| / bf16 = {worst:.4f}")
for i in [1, 10, 30, 50, 100, 150, 200, 250, 300, its[-1]]:
    if i in a and i in b:
        print(f"  iteration {i}: bf16 {a[i]:.4f} fp8 {b[i]:.4f} ({(b[i] - a[i]) / a[i]:+.4f})")
PY
fi
