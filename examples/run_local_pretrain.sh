#!/usr/bin/env bash
# Pretraining inside the Primus container on this node (examples/Dockerfile):
#
#   EXP=examples/megatron/llama3.1_8B-pretrain.yaml bash examples/run_local_pretrain.sh
#
# Runs examples/run_pretrain.sh in the image with every GPU, host networking (NCCL and the
# rendezvous), and the checkout mounted at /workspace/Primus so that EXP, data and outputs
# are the host's. Environment: EXP (required), DOCKER_IMAGE (primus:latest), DATA_PATH
# (mounted at the same path when set), plus what run_pretrain.sh reads (NNODES, NODE_RANK,
# GPUS_PER_NODE, MASTER_ADDR, MASTER_PORT, PRIMUS_LAUNCHER).
#
# NOTE: the image cannot be built or run on Primus's development and CI machines (no
# container runtime, no GPUs); this flow is written from the docker CLI's documented
# options and has not been exercised there. Build it first:
#   docker build -f examples/Dockerfile -t primus:latest .
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${EXP:?set EXP to an experiment YAML under this checkout}"
DOCKER_IMAGE=${DOCKER_IMAGE:-primus:latest}
command -v docker >/dev/null || { echo "[run_local_pretrain] docker not found; use examples/run_pretrain.sh on the host instead" >&2; exit 2; }

ENV_ARGS=()
# PRIMUS_COMM_TIMEOUT_S is retired (distributed_timeout_minutes replaces it): it is still passed
# on so that primus refuses it by name instead of the container silently dropping it.
for v in EXP NNODES NODE_RANK GPUS_PER_NODE MASTER_ADDR MASTER_PORT PRIMUS_LAUNCHER PRIMUS_LOG_DIR \
         PRIMUS_COMM_TIMEOUT_S HF_TOKEN DATA_PATH NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA; do
  [[ -n "${!v:-}" ]] && ENV_ARGS+=(-e "$v=${!v}")
done
MOUNTS=(-v "$ROOT:/workspace/Primus")
[[ -n "${DATA_PATH:-}" ]] && MOUNTS+=(-v "$DATA_PATH:$DATA_PATH")

exec docker run --rm --gpus all --network host --ipc host --shm-size 16g \
  --ulimit memlock=-1 --ulimit stack=67108864 \
  "${MOUNTS[@]}" "${ENV_ARGS[@]}" -e PRIMUS_BIN=/opt/primus/build/bin/primus -w /workspace/Primus \
  "$DOCKER_IMAGE" bash examples/run_pretrain.sh "$@"
