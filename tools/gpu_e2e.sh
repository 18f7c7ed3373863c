#!/usr/bin/env bash
# End-to-end throughput on the lent GPU: `primus train` (bf16) on an experiment and the PyTorch
# peer (../shared/anchors/pt_llama_bench.py, packed into gpu_bundle/ by tools/gpu_bundle.sh)
# at the same shape, sequence length and micro-batch, in the same call. Run from the repo root
# on the GPU machine after tools/gpu_bundle.sh:
#   bash tools/gpu_e2e.sh EXPERIMENT PEER_SHAPE SEQ MBS [STEPS] [--set key=value ...]
#   bash tools/gpu_e2e.sh examples/megatron/llama3.2_1B-pretrain.yaml llama3.2-1B 2048 8 30
# PEER_SHAPE is llama-tiny | llama3.2-1B | llama3.2-3B, or with PEER=pt_moe_bench.py the MoE
# peer's mixtral-mini | deepseek-moe-mini (PEER_ARGS adds its flags, e.g. "--moe-impl loop
# --compile 0"). Logs go to $OUT (or /tmp/primus_e2e); the last lines printed are the two JSON
# results and their ratio. TRAIN_TIMEOUT / PEER_TIMEOUT bound each side (seconds; 480 / 300).
# GEMM_TUNING=1 runs the three-stage GEMM tuning first (stage 1: a 3-iteration run logs the
# step's GEMM shapes; stage 2: `primus tune` times the cuBLASLt candidates of each; stage 3:
# the measured run uses the table) and also reports the heuristic-only run.
set -u -o pipefail
if (($# < 4)); then
  sed -n '2,10p' "$0"
  exit 2
fi
EXP=$1 SHAPE=$2 SEQ=$3 MBS=$4
STEPS=${5:-30}
shift $(($# < 5 ? 4 : 5))
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_e2e}
mkdir -p "$OUT"

train() {  # log_file iterations
  timeout "${TRAIN_TIMEOUT:-480}" "$B/primus" train --config "$EXP" --set bf16=true --set micro_batch_size="$MBS" \
    --set global_batch_size="$MBS" --set seq_length="$SEQ" --set train_iters="$2" --set log_interval=1 \
    --set log_num_zeros_in_grad=false "${EXTRA[@]}" >"$1" 2>&1
}
EXTRA=("$@")
tag=$(basename "$EXP" .yaml)_${SEQ}x${MBS}
median_tps() {
  python3 -c 'import re,statistics,sys; v=[float(x) for x in re.findall(r"throughput \(tokens/s\): ([0-9.]+)", open(sys.argv[1]).read())]; print(statistics.median(v[len(v)//2:]) if v else "none")' "$1"
}
if [[ "${GEMM_TUNING:-0}" == 1 ]]; then
  t0=$SECONDS
  train "$OUT/e2e_primus_heuristic.log" "$STEPS"
  echo "primus train, cuBLASLt heuristic: rc=$? tokens/s $(median_tps "$OUT/e2e_primus_heuristic.log")"
  rm -f "$OUT/gemm_shapes_$tag.jsonl"
  PRIMUS_GEMM_TUNING_STAGE=1 PRIMUS_GEMM_TUNING_FILE="$OUT/gemm_shapes_$tag.jsonl" train "$OUT/e2e_stage1.log" 3
  echo "stage 1: rc=$? $(wc -l <"$OUT/gemm_shapes_$tag.jsonl") GEMM shapes"
  "$B/primus" tune --shapes "$OUT/gemm_shapes_$tag.jsonl" --table "$OUT/gemm_table_$tag.json" \
    >"$OUT/e2e_stage2.log" 2>&1
  echo "stage 2: rc=$?"; tail -4 "$OUT/e2e_stage2.log"
  export PRIMUS_GEMM_TUNING_STAGE=3 PRIMUS_GEMM_TUNING_RESULT="$OUT/gemm_table_$tag.json"
  echo "tuning took $((SECONDS - t0)) s"
fi
# Peak device memory of each side measured the same way: nvidia-smi's used memory sampled every
# 100 ms while it runs (CUDA context, allocator caches and all), minus what was used before.
mem_start() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null & MEMPID=$!; }
mem_stop() { kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; sort -n "$1" | tail -1; }
idle_mib=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
t0=$SECONDS
mem_start "$OUT/mem_primus.txt"
train "$OUT/e2e_primus.log" "$STEPS"
rc=$?
primus_peak_mib=$(mem_stop "$OUT/mem_primus.txt")
unset PRIMUS_GEMM_TUNING_STAGE PRIMUS_GEMM_TUNING_RESULT
echo "primus train${GEMM_TUNING:+ (tuned GEMMs)}: rc=$rc in $((SECONDS - t0)) s (log: $OUT/e2e_primus.log)"
grep -E "set-up:" "$OUT/e2e_primus.log" | cut -c 44-
tail -5 "$OUT/e2e_primus.log"

t0=$SECONDS
mem_start "$OUT/mem_peer.txt"
# shellcheck disable=SC2086
timeout "${PEER_TIMEOUT:-300}" python3 "$PY/${PEER:-pt_llama_bench.py}" --shape "$SHAPE" --seq "$SEQ" --mbs "$MBS" --steps 15 ${PEER_ARGS:-} \
  >"$OUT/e2e_peer.jsonl" 2>"$OUT/e2e_peer.err"
echo "pytorch peer: rc=$? in $((SECONDS - t0)) s"
peer_peak_mib=$(mem_stop "$OUT/mem_peer.txt")
echo "peak device memory (nvidia-smi, MiB above the idle ${idle_mib:-?}): primus $((primus_peak_mib - idle_mib)), pytorch peer $((peer_peak_mib - idle_mib))"

python3 - "$OUT/e2e_primus.log" "$OUT/e2e_peer.jsonl" "$SEQ" "$MBS" <<'PYEOF'
import json, re, statistics, sys
log, peer, seq, mbs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
vals = [float(m) for m in re.findall(r"throughput \(tokens/s\): ([0-9.]+)", open(log, errors="replace").read())]
ours = statistics.median(vals[len(vals) // 2:]) if vals else None  # steady state: the second half
mem = re.findall(r"(?:max|peak)[^|\n]*?memory[^|\n]*?([0-9.]+)\s*(GB|GiB)", open(log, errors="replace").read())
p = None
for line in open(peer, errors="replace"):
    if line.startswith("{"):
        p = json.loads(line)
print(json.dumps({"system": "primus", "seq": seq, "mbs": mbs, "tokens_per_s": ours,
                  "peak_mem": " ".join(mem[-1]) if mem else None}))
print(json.dumps(p))
if ours and p:
    print(f"primus / pytorch tokens/s = {ours / p['tokens_per_s']:.3f}")
PYEOF
