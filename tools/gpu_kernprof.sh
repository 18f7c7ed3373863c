#!/usr/bin/env bash
# Where the device time of a steady state goes, for several runs in one device call: each run
# is started with tools/kernprof (a CUPTI preload built into the bundle's lib/ by gpu_bundle.sh)
# and leaves its kernel table (the last KERNPROF_TAIL of its device span, 0.4 here) in
# $OUT/kp_TAG.txt; the top rows and the throughput line are printed. Runs (KP_RUNS, default all):
#   gen16 gen64      bench generate --shape 1b, batch 16 / 64, prompt 128, 256 new tokens, greedy
#   b1 b3 b3fp8      primus train, Llama-3.2-1B (2048 x 8) / 3B (2048 x 2) bf16, 3B fp8 delayed
#   mixtral          primus train, examples/megatron/mixtral_mini-pretrain.yaml (2048 x 4)
# On the GPU machine (carry ["gpu_bundle"]): OUT=$OUT bash tools/gpu_kernprof.sh
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_kernprof}
mkdir -p "$OUT"
KP=$BUNDLE_DIR/lib/libkernprof.so
[[ -f $KP ]] || { echo "no $KP: rebuild the bundle with tools/gpu_bundle.sh"; exit 1; }
export KERNPROF_TAIL=${KERNPROF_TAIL:-0.4} KERNPROF_TOP=${KERNPROF_TOP:-45}
TOPN=${TOPN:-14}
prof() {  # tag command...
  local tag=$1
  shift
  LD_PRELOAD=$KP KERNPROF_OUT="$OUT/kp_$tag.json" timeout "${KP_TIMEOUT:-240}" "$@" >"$OUT/kp_$tag.log" 2>&1
  local rc=$?
  grep '^kernprof:' "$OUT/kp_$tag.log" >"$OUT/kp_$tag.txt"
  echo "== $tag rc=$rc"
  grep -m1 '^{' "$OUT/kp_$tag.log" | cut -c1-400
  grep -E 'iteration +[0-9]+/' "$OUT/kp_$tag.log" | tail -1 | cut -c1-300
  head -n $((TOPN + 1)) "$OUT/kp_$tag.txt" | sed 's/^kernprof: //' | cut -c1-150
}
want() { [[ " ${KP_RUNS:-gen16 gen64 b1 b3 b3fp8 mixtral} " == *" $1 "* ]]; }
GEN=("$B/primus" bench generate --shape 1b --device cuda --prompt-len 128 --new-tokens 256 --rounds 2 --warmup 1)
want gen16 && prof gen16 "${GEN[@]}" --batch 16
want gen64 && prof gen64 "${GEN[@]}" --batch 64
TRAIN=(--set bf16=true --set log_interval=1 --set log_num_zeros_in_grad=false --set save=null --set mock_data=true
       --set untie_embeddings_and_output_weights=true --set eval_iters=0 --set seq_length=2048)
dense() {  # tag yaml mbs iters [--set ...]
  local tag=$1 exp=$2 mbs=$3 iters=$4
  shift 4
  prof "$tag" "$B/primus" train --config "$exp" "${TRAIN[@]}" --set micro_batch_size="$mbs" \
    --set global_batch_size="$mbs" --set train_iters="$iters" "$@"
}
want b1 && dense b1 examples/megatron/llama3.2_1B-pretrain.yaml 8 16
want b3 && dense b3 examples/megatron/llama3.2_3B-pretrain.yaml 2 16
want b3fp8 && dense b3fp8 examples/megatron/llama3.2_3B-pretrain.yaml 2 16 --set fp8=hybrid --set fp8_recipe=delayed \
  --set fp8_amax_history_len=16 --set fp8_amax_compute_algo=max
want mixtral && prof mixtral "$B/primus" train --config examples/megatron/mixtral_mini-pretrain.yaml --set train_iters=16 \
  --set log_interval=1 --set log_num_zeros_in_grad=false --set save=null
exit 0
