#!/usr/bin/env bash
# Pretraining on one node: starts one `primus train` process per GPU.
#
#   EXP=examples/megatron/llama3.1_8B-pretrain.yaml bash examples/run_pretrain.sh [key=value ...]
#
# Environment (upstream Primus names):
#   EXP              experiment YAML (required)
#   NNODES           nodes in the job (1)              NODE_RANK   this node's index (0)
#   GPUS_PER_NODE    processes on this node (the number of GPUs nvidia-smi lists, else 1)
#   MASTER_ADDR      host of rank 0 (localhost)        MASTER_PORT a free TCP port (1234)
#   PRIMUS_BIN       the primus binary (build/bin/primus)
#   PRIMUS_LAUNCHER  how processes are started:
#       env     (default with GPUs) this script forks GPUS_PER_NODE processes and gives each
#               RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as
#               torchrun does; NCCL's id travels through the TCP rendezvous at
#               MASTER_ADDR:MASTER_PORT. Works across nodes (run it once per node, e.g. from
#               run_slurm_pretrain.sh). If a process exits non-zero, the script names its
#               rank, stops the others and exits with its code.
#       mpirun  (default without GPUs) `mpirun -np GPUS_PER_NODE`: CPU ranks talk through
#               MPI. One node, or NNODES>1 with MPI_HOSTFILE (run on NODE_RANK 0 only).
#   MPIRUN_ARGS      extra mpirun options          PRIMUS_LOG_DIR  also write rank<R>.log there
# Arguments after the script go to `primus train` (key=value overrides).
#
# Stopping: SIGTERM, SIGINT or SIGUSR1 to this script (a scheduler's stop, Ctrl-C, Slurm's
# warning signal) asks every rank to save a checkpoint at the next step boundary and exit 0:
# the script forwards SIGUSR1 (through mpirun, which passes SIGUSR1 on but kills its ranks on
# SIGTERM) and waits for the ranks; a second signal sends SIGTERM, a third SIGKILL.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${EXP:?set EXP to an experiment YAML, e.g. EXP=examples/megatron/llama3.1_8B-pretrain.yaml}"
[[ -f "$EXP" || -f "$ROOT/$EXP" ]] || { echo "[run_pretrain] EXP=$EXP: no such file" >&2; exit 2; }
[[ -f "$EXP" ]] || EXP="$ROOT/$EXP"

gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else echo 0; fi
}
GPUS=$(gpu_count)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS > 0 ? GPUS : 1))}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-1234}
PRIMUS_BIN=${PRIMUS_BIN:-$ROOT/build/bin/primus}
PRIMUS_LAUNCHER=${PRIMUS_LAUNCHER:-$([[ $GPUS -gt 0 ]] && echo env || echo mpirun)}

for v in NNODES NODE_RANK GPUS_PER_NODE MASTER_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "[run_pretrain] $v=${!v} is not a number" >&2; exit 2; }
done
((NNODES >= 1 && GPUS_PER_NODE >= 1)) || { echo "[run_pretrain] NNODES and GPUS_PER_NODE must be >= 1" >&2; exit 2; }
((NODE_RANK < NNODES)) || { echo "[run_pretrain] NODE_RANK=$NODE_RANK must be < NNODES=$NNODES" >&2; exit 2; }
[[ -x "$PRIMUS_BIN" ]] || { echo "[run_pretrain] PRIMUS_BIN=$PRIMUS_BIN is not an executable; build with ./setup.sh or set PRIMUS_BIN" >&2; exit 2; }

WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
CMD=("$PRIMUS_BIN" train pretrain --config "$EXP" "$@")
echo "[run_pretrain] node $NODE_RANK of $NNODES, $GPUS_PER_NODE processes, world $WORLD_SIZE, launcher $PRIMUS_LAUNCHER, rendezvous $MASTER_ADDR:$MASTER_PORT" >&2
[[ -n "${PRIMUS_LOG_DIR:-}" ]] && mkdir -p "$PRIMUS_LOG_DIR"

# The n-th stop signal to this script: 1st -> SIGUSR1 (save and stop), 2nd -> SIGTERM, then SIGKILL.
stops=0
escalate() {
  stops=$((stops + 1))
  STOP_SIG=USR1
  if ((stops == 2)); then STOP_SIG=TERM; elif ((stops > 2)); then STOP_SIG=KILL; fi
}

case "$PRIMUS_LAUNCHER" in
  mpirun)
    command -v mpirun >/dev/null || { echo "[run_pretrain] mpirun not found; install openmpi-bin (./setup.sh)" >&2; exit 2; }
    ARGS=(-np "$WORLD_SIZE" --oversubscribe --bind-to none)
    [[ $(id -u) -eq 0 ]] && ARGS+=(--allow-run-as-root)
    if ((NNODES > 1)); then
      [[ -n "${MPI_HOSTFILE:-}" ]] || { echo "[run_pretrain] PRIMUS_LAUNCHER=mpirun with NNODES=$NNODES needs MPI_HOSTFILE (or use PRIMUS_LAUNCHER=env on GPUs)" >&2; exit 2; }
      if ((NODE_RANK != 0)); then echo "[run_pretrain] mpirun on node 0 starts this node's ranks" >&2; exit 0; fi
      ARGS+=(--hostfile "$MPI_HOSTFILE" --npernode "$GPUS_PER_NODE")
    fi
    [[ -n "${PRIMUS_LOG_DIR:-}" ]] && ARGS+=(--output-filename "$PRIMUS_LOG_DIR")
    # Not exec'd: this shell stays to turn a stop signal into SIGUSR1 for mpirun to forward.
    # shellcheck disable=SC2086
    mpirun "${ARGS[@]}" ${MPIRUN_ARGS:-} "${CMD[@]}" &
    MPIRUN_PID=$!
    on_stop() {
      escalate
      echo "[run_pretrain] $1: sending SIG$STOP_SIG to mpirun (ranks save a checkpoint and stop at the next step)" >&2
      kill "-$STOP_SIG" "$MPIRUN_PID" 2>/dev/null || true
    }
    for s in TERM INT USR1; do trap "on_stop SIG$s" "$s"; done
    while true; do
      set +e
      wait "$MPIRUN_PID"
      code=$?
      set -e
      kill -0 "$MPIRUN_PID" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
    done
    exit "$code"
    ;;
  env) ;;
  *) echo "[run_pretrain] PRIMUS_LAUNCHER=$PRIMUS_LAUNCHER: use env or mpirun" >&2; exit 2 ;;
esac

# ---- env launcher: fork one process per GPU and watch them ------------------------------
declare -A RANK_OF=()
stop_all() {
  local sig=$1
  for pid in "${!RANK_OF[@]}"; do kill "-$sig" "$pid" 2>/dev/null || true; done
}
# A stop signal: the ranks save and stop (SIGUSR1), then keep being waited for below.
on_stop() {
  escalate
  echo "[run_pretrain] $1: sending SIG$STOP_SIG to the ${#RANK_OF[@]} rank(s) of this node (they save a checkpoint and stop at the next step)" >&2
  stop_all "$STOP_SIG"
}
for s in TERM INT USR1; do trap "on_stop SIG$s" "$s"; done

for ((local_rank = 0; local_rank < GPUS_PER_NODE; local_rank++)); do
  rank=$((NODE_RANK * GPUS_PER_NODE + local_rank))
  (
    export RANK=$rank WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$local_rank LOCAL_WORLD_SIZE=$GPUS_PER_NODE \
           NODE_RANK=$NODE_RANK NNODES=$NNODES MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT
    # Variables of an outer launcher would name another rank: the ones above are the truth.
    unset OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE PMIX_RANK PMI_RANK PMI_SIZE
    if [[ -n "${PRIMUS_LOG_DIR:-}" ]]; then
      exec "${CMD[@]}" > >(tee "$PRIMUS_LOG_DIR/rank$rank.log") 2>&1
    else
      exec "${CMD[@]}"
    fi
  ) &
  RANK_OF[$!]=$rank
done

status=0
while ((${#RANK_OF[@]} > 0)); do
  finished=""
  set +e
  wait -n -p finished "${!RANK_OF[@]}"
  code=$?
  set -e
  if [[ -z "${finished:-}" ]]; then
    ((code == 127)) && break  # no child left to wait for
    continue                  # a trapped signal interrupted the wait: keep waiting
  fi
  rank=${RANK_OF[$finished]}
  unset "RANK_OF[$finished]"
  if ((code != 0)); then
    echo "[run_pretrain] rank $rank (pid $finished) exited with code $code; stopping the other ${#RANK_OF[@]} rank(s) on this node" >&2
    stop_all TERM
    sleep 2
    stop_all KILL
    wait 2>/dev/null || true
    status=$code
    break
  fi
done
exit $status
