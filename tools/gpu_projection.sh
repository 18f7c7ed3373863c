#!/usr/bin/env bash
# Issue 18's check of `primus projection` on one GPU: for each shape, the step table of this GPU
# (`primus bench step --tp 1`), the projection of the one-GPU layout from it, and a measured run
# (`primus train`, 16 iterations: the median time per iteration of the second half, and the peak
# of nvidia-smi's used memory sampled every 100 ms less the idle value, as tools/gpu_e2e.sh
# measures both). Prints predicted against measured step time and memory, one row per shape.
# On the GPU machine (carry ["gpu_bundle"]):  OUT=$OUT bash tools/gpu_projection.sh
# SHAPES (default "125m 1b 1b_ga2 3b"): 125m = llama_125M (seq 1024 x micro-batch 16), 1b and 3b
# = Llama-3.2 (2048 x 8, 2048 x 2), 1b_ga2 = 1b with two micro-batches per step; all bf16, mock
# data, untied output layer, the examples' optimizer settings.
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_projection}
mkdir -p "$OUT"
mem_start() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null & MEMPID=$!; }
mem_stop() { kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; sort -n "$1" | tail -1; }
ROWS=()
for shape in ${SHAPES:-125m 1b 1b_ga2 3b}; do
  ga=1
  case $shape in
    125m) exp=examples/megatron/llama_125M-pretrain.yaml seq=1024 mbs=16 ;;
    1b) exp=examples/megatron/llama3.2_1B-pretrain.yaml seq=2048 mbs=8 ;;
    1b_ga2) exp=examples/megatron/llama3.2_1B-pretrain.yaml seq=2048 mbs=8 ga=2 ;;
    3b) exp=examples/megatron/llama3.2_3B-pretrain.yaml seq=2048 mbs=2 ;;
    *) echo "unknown shape $shape"; continue ;;
  esac
  SETS=(--set bf16=true --set seq_length="$seq" --set micro_batch_size="$mbs" --set global_batch_size=$((mbs * ga))
        --set mock_data=true --set save=null --set eval_iters=0 --set untie_embeddings_and_output_weights=true
        --set log_interval=1 --set log_num_zeros_in_grad=false)
  timeout 300 "$B/primus" bench step --config "$exp" "${SETS[@]}" --tp 1 --out "$OUT/table_$shape.json" \
    >"$OUT/bench_$shape.log" 2>&1
  echo "== $shape: bench step rc=$?"; grep -E '^\| 1 ' "$OUT/bench_$shape.log"
  "$B/primus" projection --config "$exp" "${SETS[@]}" --nodes 1 --gpus-per-node 1 --bench-table "$OUT/table_$shape.json" \
    --gpu-memory-gib 80 --top 1 >"$OUT/proj_$shape.md" 2>&1
  echo "projection rc=$?"; grep -E '^\| 1 ' "$OUT/proj_$shape.md"
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  mem_start "$OUT/mem_$shape.txt"
  timeout 300 "$B/primus" train --config "$exp" "${SETS[@]}" --set train_iters=16 --set tensorboard_dir="$OUT/tb_$shape" \
    >"$OUT/train_$shape.log" 2>&1
  rc=$?
  peak=$(mem_stop "$OUT/mem_$shape.txt")
  echo "train rc=$rc peak $((peak - idle)) MiB above idle; its own memory report (last iteration):"
  python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]; print({k: round(v/2**30, 3) for k, v in r.items() if "mem" in k})' \
    "$OUT/tb_$shape/metrics.jsonl" 2>&1 | tail -1
  ROWS+=("$(python3 - "$shape" "$OUT/proj_$shape.md" "$OUT/train_$shape.log" "$((peak - idle))" <<'PYEOF'
import re, statistics, sys
shape, proj, log, peak = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
row = [l for l in open(proj) if l.startswith("| 1 |")]
cells = [c.strip() for c in row[0].strip().strip("|").split("|")] if row else None
ms = [float(x) for x in re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+)", open(log, errors="replace").read())]
meas = statistics.median(ms[len(ms) // 2:]) / 1e3 if ms else float("nan")
if not cells:
    print(f"| {shape} | no projection | | {meas:.4f} | | | {peak / 1024:.2f} | |"); sys.exit()
step = float(cells[7]); mem = float(cells[6].split()[0])
print(f"| {shape} | {step:.4f} | {cells[8]} | {meas:.4f} | {100 * (step - meas) / meas:+.1f}% | {mem:.2f} | "
      f"{peak / 1024:.2f} | {100 * (mem - peak / 1024) / (peak / 1024):+.1f}% |")
PYEOF
)")
done
echo
echo "| shape | projected step s | of which compute | measured step s | error | projected GiB | measured GiB (nvidia-smi) | error |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
