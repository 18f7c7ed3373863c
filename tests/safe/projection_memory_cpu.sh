#!/usr/bin/env bash
# The projection's memory per rank (estimate_memory, the same number `primus train --dry-run`
# prints) against the peak RSS of `primus train` on CPU ranks, for the layouts of
# tests/train/parallel_train.sh on a scaled-up tiny_mock model (44M parameters, fp32: the
# model state dominates the process). Not a ctest (about 2 minutes); docs/SAFE.md records its table.
#   usage: projection_memory_cpu.sh PRIMUS [MPIEXEC]
#   prints: | layout | ranks | estimate MiB | peak RSS MiB (min..max over ranks) | (RSS - baseline) / estimate - 1 |
set -u
PRIMUS=$1
MPIEXEC=${2:-mpirun}
EXP=$(cd "$(dirname "$0")/../train" && pwd)/tiny_mock-pretrain.yaml
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PRIMUS_TEST_WORKSPACE=$WORK OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
STEPS=(--set train_iters=3 --set lr_warmup_iters=1)
MODEL=(--set num_layers=4 --set hidden_size=512 --set ffn_hidden_size=1408 --set num_attention_heads=8
       --set num_query_groups=4 --set vocab_size=32000 --set untie_embeddings_and_output_weights=true)

peak_rss() {  # name np args... -> peak RSS of every rank in KiB, one per line
  local name=$1 np=$2; shift 2
  if [ "$np" = 1 ]; then
    PRIMUS_TEST_RUN=$name /usr/bin/time -f "RSS_KB %M" "$PRIMUS" train --config "$EXP" "${STEPS[@]}" "$@" > "$WORK/$name.log" 2>&1
  else
    PRIMUS_TEST_RUN=$name "$MPIEXEC" -np "$np" --oversubscribe --bind-to none /usr/bin/time -f "RSS_KB %M" \
      "$PRIMUS" train --config "$EXP" "${STEPS[@]}" "$@" > "$WORK/$name.log" 2>&1
  fi || { tail -20 "$WORK/$name.log"; echo "FAIL: $name"; exit 1; }
  grep -o 'RSS_KB [0-9]*' "$WORK/$name.log" | cut -d' ' -f2
}
estimate_gib() {  # np args... -> the dry run's total per GPU (GiB, 2 decimals)
  local np=$1; shift
  "$PRIMUS" train --config "$EXP" "${STEPS[@]}" --dry-run --world-size "$np" "$@" | sed -n 's/^  total \([0-9.]*\) GiB.*/\1/p'
}

base=$(peak_rss base 1 | head -1)  # the 2-layer, 64-wide default: the process without a model to speak of
echo "baseline (tiny_mock as is, 1 rank): $((base / 1024)) MiB"
echo "| layout | ranks | estimate MiB | peak RSS MiB | error of (RSS - baseline) |"
echo "| --- | --- | --- | --- | --- |"
row() {  # name np args...
  local name=$1 np=$2; shift 2
  local est rss
  est=$(estimate_gib "$np" "${MODEL[@]}" "$@")
  rss=$(peak_rss "$name" "$np" "${MODEL[@]}" "$@" | tr '\n' ' ')
  python3 - "$name" "$np" "$est" "$base" $rss <<'PY'
import sys
name, np_, est, base = sys.argv[1], sys.argv[2], float(sys.argv[3]) * 1024, int(sys.argv[4]) / 1024
rss = [int(x) / 1024 for x in sys.argv[5:]]
lo, hi = min(rss), max(rss)
err = lambda r: f"{((r - base) / est - 1) * 100:+.0f}%"
print(f"| {name} | {np_} | {est:.0f} | {lo:.0f}..{hi:.0f} | {err(lo)}..{err(hi)} |")
PY
}
row ref 1
row dp2 2
row tp2 2 --set tensor_model_parallel_size=2
row tp2sp 2 --set tensor_model_parallel_size=2 --set sequence_parallel=true
row pp2 2 --set pipeline_model_parallel_size=2
row dp2_distopt 2 --set use_distributed_optimizer=true
row dp2tp2 4 --set tensor_model_parallel_size=2 --set use_distributed_optimizer=true
row pp2dp2 4 --set pipeline_model_parallel_size=2 --set use_distributed_optimizer=true
