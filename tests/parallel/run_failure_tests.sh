#!/usr/bin/env bash
# A rank that dies must stop the job with a message naming it, never hang.
# Usage: run_failure_tests.sh PATH/primus_mpi_failure_probe [mpirun]
set -uo pipefail
PROBE=${1:?usage: run_failure_tests.sh PROBE [MPIRUN]}
MPIRUN=${2:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
failures=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# run MODE TIMEOUT_S LIMIT_S RC PATTERN...: the job must exit with code RC within LIMIT_S
# seconds and its output must match every PATTERN (extended regex). A hang is killed with
# SIGKILL (exit 137), so it cannot pass for the timeout abort's own code 124.
run() {
  local mode=$1 comm_timeout=$2 limit=$3 want_rc=$4
  shift 4
  local start=$SECONDS
  timeout -s KILL "$limit" \
    "$MPIRUN" -np 2 --oversubscribe --bind-to none "$PROBE" "$mode" "$comm_timeout" >"$out" 2>&1
  local rc=$? took=$((SECONDS - start))
  local ok=1
  if [[ $rc -ne $want_rc ]]; then echo "FAIL [$mode]: exit code $rc, expected $want_rc (137: killed after ${limit}s, a hang)"; ok=0; fi
  for pattern in "$@"; do
    grep -Eq "$pattern" "$out" || { echo "FAIL [$mode]: output lacks /$pattern/"; ok=0; }
  done
  if grep -q "rank 0 finished" "$out"; then echo "FAIL [$mode]: rank 0 finished its all_reduce alone"; ok=0; fi
  if ((ok)); then
    echo "PASS [$mode]: exit $rc after ${took}s"
  else
    failures=$((failures + 1))
    echo "----- output of [$mode] -----"; cat "$out"; echo "-----"
  fi
}

# rank 1 exits with code 3 while rank 0 waits: mpirun names rank 1 and stops rank 0.
run exit 30 60 3 'rank 1|\[\[[0-9]+,[0-9]+\],1\]' 'Exit code: *3|exit(ed)? .*3|non-zero'
# rank 1 stops taking part: rank 0's 2 s timeout names the collective and aborts the job
# with code 124. (Open MPI's own MPI_ABORT banner can be lost in the abort race, so only
# our message is required.)
run hang 2 60 124 '\[primus\] rank 0 .*all_reduce did not complete within 2\.[0-9] s'
# rank 1 fails on its own: its abort message names it and the error; everyone stops.
run throw 30 60 1 "\[primus\] rank 1 .*this rank failed: reading shard 7"

echo "$((3 - failures)) passed, $failures failed"
exit $((failures > 0))
