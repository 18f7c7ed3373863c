#!/usr/bin/env bash
# examples/run_pretrain.sh with a probe in place of primus (build/bin/primus_launch_probe):
# both launchers start every rank, ranks find each other, two "nodes" on one host form one
# job, a failing rank is named and the others stopped, and bad settings are refused.
# Usage: test_run_pretrain.sh PATH/primus_launch_probe
set -uo pipefail
PROBE=${1:?usage: test_run_pretrain.sh PROBE}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAUNCH="$ROOT/examples/run_pretrain.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PRIMUS_BIN=$PROBE
unset RANK WORLD_SIZE LOCAL_RANK OMPI_COMM_WORLD_RANK SLURM_PROCID PMIX_RANK PMI_RANK
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export EXP="$WORK/exp.yaml"
echo "work_group: test" >"$EXP"
passed=0 failed=0
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
check() {  # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then echo "PASS $name"; passed=$((passed + 1)); else echo "FAIL $name"; failed=$((failed + 1)); cat "$WORK"/log 2>/dev/null; fi
}
ranks_ok() {  # ranks_ok DIR N PATTERN: files rank0..rank(N-1) exist and match PATTERN
  local dir=$1 n=$2 pattern=$3
  for ((r = 0; r < n; r++)); do
    grep -q -- "$pattern" "$dir/rank$r" 2>/dev/null || { echo "  rank $r: missing or lacks '$pattern'"; return 1; }
    grep -q -- "args: train pretrain --config $EXP lr=0.1" "$dir/rank$r" || { echo "  rank $r: wrong args"; cat "$dir/rank$r"; return 1; }
  done
  [[ ! -e "$dir/rank$n" ]]
}

# 1. env launcher (the GPU path): 2 processes, torchrun-style variables, TCP rendezvous.
mkdir -p "$WORK/env"
PRIMUS_PROBE_DIR="$WORK/env" PRIMUS_LAUNCHER=env GPUS_PER_NODE=2 MASTER_PORT=$(free_port) \
  timeout 60 bash "$LAUNCH" lr=0.1 >"$WORK/log" 2>&1
check "env launcher starts 2 ranks that meet" ranks_ok "$WORK/env" 2 "via torchrun-style environment.*tcp rendezvous with 2 ranks"

# 2. mpirun launcher (the CPU path): ranks talk through MPI.
mkdir -p "$WORK/mpi"
PRIMUS_PROBE_DIR="$WORK/mpi" PRIMUS_LAUNCHER=mpirun GPUS_PER_NODE=2 timeout 60 bash "$LAUNCH" lr=0.1 >"$WORK/log" 2>&1
check "mpirun launcher starts 2 ranks that meet" ranks_ok "$WORK/mpi" 2 "via mpirun.*mpi all_reduce over 2 ranks"

# 3. two nodes on one host (NNODES=2, one process each): one job of world size 2.
mkdir -p "$WORK/nodes"
port=$(free_port)
for node in 0 1; do
  PRIMUS_PROBE_DIR="$WORK/nodes" PRIMUS_LAUNCHER=env NNODES=2 NODE_RANK=$node GPUS_PER_NODE=1 \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$port timeout 60 bash "$LAUNCH" lr=0.1 >"$WORK/log$node" 2>&1 &
done
wait
check "NNODES=2 NODE_RANK=0/1 form one job" ranks_ok "$WORK/nodes" 2 "rank [01] of 2 (local 0 of 1).*tcp rendezvous with 2 ranks"

# 4. a rank that fails: the launcher names it, stops the others (waiting in the rendezvous
#    for it) and exits with its code, long before the 30 s rendezvous timeout.
start=$SECONDS
PRIMUS_PROBE_FAIL_RANK=1 PRIMUS_LAUNCHER=env GPUS_PER_NODE=3 MASTER_PORT=$(free_port) \
  timeout 60 bash "$LAUNCH" lr=0.1 >"$WORK/log" 2>&1
code=$?
took=$((SECONDS - start))
check "a failing rank is named and stops the node (exit $code, ${took}s)" \
  bash -c "[[ $code -eq 3 && $took -lt 20 ]] && grep -q 'rank 1 (pid [0-9]*) exited with code 3; stopping the other 2' '$WORK/log'"

# 5. bad settings are refused before anything starts.
NNODES=2 NODE_RANK=2 bash "$LAUNCH" >"$WORK/log" 2>&1
code=$?
check "NODE_RANK >= NNODES is refused" bash -c "[[ $code -eq 2 ]] && grep -q 'NODE_RANK=2 must be < NNODES=2' '$WORK/log'"
EXP=/nonexistent.yaml bash "$LAUNCH" >"$WORK/log" 2>&1
code=$?
check "a missing EXP is refused" bash -c "[[ $code -eq 2 ]] && grep -q 'no such file' '$WORK/log'"

echo "$passed passed, $failed failed"
exit $((failed > 0))
