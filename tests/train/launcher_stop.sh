#!/usr/bin/env bash
# A scheduler's stop through the launcher: examples/run_pretrain.sh starts `primus train` on
# 2 MPI ranks (PRIMUS_LAUNCHER=mpirun) and on 1 process (PRIMUS_LAUNCHER=env); once training
# runs, the script gets SIGTERM. Every rank must save a checkpoint at the next step boundary
# and the script exit 0; a rerun resumes from that checkpoint. (mpirun alone kills its ranks
# on SIGTERM: the script forwards SIGUSR1, which mpirun passes on.)
# Usage: launcher_stop.sh PRIMUS_BINARY
set -uo pipefail
PRIMUS=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/primus_launcher_stop.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1 PRIMUS_BIN=$PRIMUS PRIMUS_TEST_WORKSPACE=$WORK/ws
export EXP=$ROOT/tests/train/tiny_mock-pretrain.yaml
unset RANK WORLD_SIZE LOCAL_RANK OMPI_COMM_WORLD_RANK SLURM_PROCID PMIX_RANK PMI_RANK
fail() { echo "FAIL: $*"; tail -25 "$WORK/$name.log"; exit 1; }

for launcher in mpirun env; do
  name=$launcher
  np=$([[ $launcher == mpirun ]] && echo 2 || echo 1)
  save=$WORK/ckpt_$launcher
  PRIMUS_TEST_RUN=$name PRIMUS_LAUNCHER=$launcher GPUS_PER_NODE=$np \
    bash "$ROOT/examples/run_pretrain.sh" train_iters=100000 save="$save" save_interval=100000 distributed_timeout_minutes=1 \
    log_interval=1 >"$WORK/$name.log" 2>&1 &
  pid=$!
  for ((t = 0; t < 300; t++)); do  # until an iteration has run
    grep -q "iteration  *3/" "$WORK/$name.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || fail "$launcher: the run ended before it was stopped"
    sleep 0.1
  done
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  ((rc == 0)) || fail "$launcher: run_pretrain.sh exited $rc after SIGTERM (expected 0)"
  it=$(cat "$save/latest_checkpointed_iteration.txt" 2>/dev/null) || fail "$launcher: no checkpoint was saved"
  grep -q "stopping at iteration $it (SIGUSR1)" "$WORK/$name.log" || fail "$launcher: no 'stopping at iteration $it' line"
  # The checkpoint resumes.
  PRIMUS_TEST_RUN=$name PRIMUS_LAUNCHER=$launcher GPUS_PER_NODE=$np \
    bash "$ROOT/examples/run_pretrain.sh" train_iters=$((it + 2)) save="$save" load="$save" distributed_timeout_minutes=1 \
    >"$WORK/${name}_resume.log" 2>&1 || { name=${name}_resume; fail "$launcher: the resume failed"; }
  grep -q "resumed from .* at iteration $it" "$WORK/${name}_resume.log" || { name=${name}_resume; fail "$launcher: did not resume at $it"; }
  echo "$launcher ($np rank(s)): SIGTERM -> saved iteration $it, exit 0, resumed"
done
