#!/usr/bin/env bash
# Pretraining on a Slurm cluster: one srun task per node, each running run_pretrain.sh,
# which starts one process per GPU on its node (as upstream Primus does).
#
#   NNODES=4 EXP=examples/megatron/llama3.1_8B-pretrain.yaml bash examples/run_slurm_pretrain.sh
#
# From a login node srun allocates the nodes; inside sbatch/salloc it uses the allocation.
# Environment: NNODES (1), GPUS_PER_NODE (GPUs of the node), MASTER_PORT (1234),
# MASTER_ADDR (the first node of the job), SRUN_ARGS (extra srun options, e.g.
# "-p gpu --gres=gpu:8 -t 2:00:00"), plus everything run_pretrain.sh reads (EXP,
# PRIMUS_BIN, PRIMUS_LAUNCHER, PRIMUS_LOG_DIR). Arguments go to `primus train`.
#
# Why one task per node rather than one per GPU: the per-node script can watch its
# processes (a dead rank is named and its node stopped) and needs no PMI plugin; srun's
# --kill-on-bad-exit then stops the other nodes. Across nodes the ranks meet through the
# TCP rendezvous at MASTER_ADDR:MASTER_PORT (the NCCL id), so PRIMUS_LAUNCHER defaults to
# env here; CPU runs over MPI use `srun --mpi=pmix -n N primus train ...` directly instead.
#
# Stopping: srun asks Slurm for SIGUSR1 PRIMUS_STOP_LEAD_S seconds (default 180) before the
# time limit, and scancel sends SIGTERM; run_pretrain.sh turns either into "save a checkpoint
# at the next step and exit 0" on every rank. Slurm kills what still runs KillWait seconds
# after SIGTERM (default 30): a checkpoint of a large model may need a longer KillWait.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${EXP:?set EXP to an experiment YAML}"
command -v srun >/dev/null || { echo "[run_slurm_pretrain] srun not found: is this a Slurm login node? (./setup.sh installs slurm-wlm)" >&2; exit 2; }
NNODES=${NNODES:-1}
export EXP NNODES MASTER_PORT=${MASTER_PORT:-1234} PRIMUS_LAUNCHER=${PRIMUS_LAUNCHER:-env}
[[ -f "$EXP" ]] && EXP=$(cd "$(dirname "$EXP")" && pwd)/$(basename "$EXP")
export PRIMUS_RUN_PRETRAIN="$ROOT/examples/run_pretrain.sh"

echo "[run_slurm_pretrain] $NNODES node(s), one task per node, launcher $PRIMUS_LAUNCHER" >&2
# shellcheck disable=SC2086,SC2016
exec srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
  --signal=USR1@"${PRIMUS_STOP_LEAD_S:-180}" \
  --export=ALL ${SRUN_ARGS:-} bash -c '
    set -euo pipefail
    export NODE_RANK=$SLURM_NODEID
    export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
    echo "[run_slurm_pretrain] $(hostname): node rank $NODE_RANK of $NNODES, master $MASTER_ADDR:$MASTER_PORT" >&2
    exec bash "$PRIMUS_RUN_PRETRAIN" "$@"' run_slurm_pretrain "$@"
