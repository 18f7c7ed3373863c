#!/usr/bin/env bash
# `primus train` under mpirun on CPU ranks: parallel layouts give the single-rank losses,
# and checkpoints move between layouts. All runs: a tiny Llama on mock data, 8 iterations.
#   ref        1 rank
#   dp2        2 ranks, data parallel                       == ref (1e-5 relative)
#   tp2sp      2 ranks, tensor + sequence parallel; stops at iteration 4 (exit_interval, saves)
#   tp2->tp1   1 rank resumes tp2sp's checkpoint, iterations 5..8  == ref
# Usage: parallel_train.sh PRIMUS_BINARY MPIEXEC
set -euo pipefail
PRIMUS=$1
MPIEXEC=$2
WORK=$(mktemp -d /tmp/primus_parallel_train.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 PRIMUS_COMM_TIMEOUT_S=120

EXP=$(dirname "$0")/tiny_mock-pretrain.yaml
export PRIMUS_TEST_WORKSPACE=$WORK/ws

run() {  # name np [--set ...]
  local name=$1 np=$2
  shift 2
  if ((np == 1)); then
    PRIMUS_TEST_RUN=$name "$PRIMUS" train --config "$EXP" --set train_iters=8 "$@" >"$WORK/$name.log" 2>&1
  else
    PRIMUS_TEST_RUN=$name "$MPIEXEC" -np "$np" --oversubscribe --bind-to none -x PRIMUS_TEST_RUN \
      -x PRIMUS_TEST_WORKSPACE -x OPENBLAS_NUM_THREADS -x PRIMUS_COMM_TIMEOUT_S \
      "$PRIMUS" train --config "$EXP" --set train_iters=8 --world-size "$np" "$@" >"$WORK/$name.log" 2>&1
  fi || { echo "run $name failed:"; tail -30 "$WORK/$name.log"; exit 1; }
  echo "run $name: ok"
}
run ref 1
run dp2 2
run tp2sp 2 --set tensor_model_parallel_size=2 --set sequence_parallel=true --set save="$WORK/ckpt" --set exit_interval=4
run tp1resume 1 --set load="$WORK/ckpt"

/usr/bin/python3 - "$WORK/ws/test/ci" <<'PY'
import json, sys
root = sys.argv[1]
def losses(run):
    out = {}
    for line in open(f"{root}/{run}/tensorboard/metrics.jsonl"):
        r = json.loads(line)
        if r.get("type") == "train":
            out[r["iteration"]] = r["lm_loss"]
    return out
ref = losses("ref")
assert sorted(ref) == list(range(1, 9)), ref
worst = 0.0
for run, its in (("dp2", range(1, 9)), ("tp2sp", range(1, 5)), ("tp1resume", range(5, 9))):
    got = losses(run)
    assert sorted(got) == list(its), f"{run} logged iterations {sorted(got)}"
    for i in its:
        rel = abs(got[i] - ref[i]) / abs(ref[i])
        worst = max(worst, rel)
        assert rel < 1e-5, f"{run} iteration {i}: loss {got[i]!r} vs single rank {ref[i]!r} (rel {rel:.2e})"
print(f"dp2, tp2+sp and tp2 -> tp1 resume match the single-rank losses (worst relative difference {worst:.2e})")
PY
