#!/usr/bin/env bash
# One `primus train` variant on the GPU machine with its throughput and peak device memory
# (nvidia-smi's used memory every 100 ms, as tools/gpu_e2e.sh measures both sides), to weigh
# a memory knob against speed:
#   [ENV=...] bash tools/gpu_variant.sh NAME EXPERIMENT SEQ MBS STEPS [--set key=value ...]
set -u -o pipefail
NAME=$1 EXP=$2 SEQ=$3 MBS=$4 STEPS=$5
shift 5
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" >/dev/null || exit 1
OUT=${OUT:-/tmp/primus_variant}
mkdir -p "$OUT"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/mem_$NAME.txt" 2>/dev/null &
smi=$!
timeout 300 "$B/primus" train --config "$EXP" --set bf16=true --set micro_batch_size="$MBS" \
  --set global_batch_size="$MBS" --set seq_length="$SEQ" --set train_iters="$STEPS" --set log_interval=1 \
  --set log_num_zeros_in_grad=false --set save=null --set mock_data=true --set eval_iters=0 "$@" \
  >"$OUT/$NAME.log" 2>&1
rc=$?
kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
tps=$(python3 -c 'import re,statistics,sys; v=[float(x) for x in re.findall(r"throughput \(tokens/s\): ([0-9.]+)", open(sys.argv[1]).read())]; print(round(statistics.median(v[len(v)//2:])) if v else "none")' "$OUT/$NAME.log")
echo "$NAME: rc=$rc tokens/s $tps peak memory $(sort -n "$OUT/mem_$NAME.txt" | tail -1) MiB"
