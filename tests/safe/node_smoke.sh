#!/usr/bin/env bash
# `primus node-smoke --device cpu`: a pass with reachable thresholds, a fail (exit 1) with an
# impossible one, alone and on 2 MPI ranks (one line per node naming the failed ranks), and
# exit 2 for --device cuda where no GPU is usable.
#   usage: node_smoke.sh PRIMUS MPIEXEC
set -u
PRIMUS=$1
MPIEXEC=$2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
host=$(hostname)

out=$("$PRIMUS" node-smoke --device cpu --min-gemm-tflops 1e-6 --min-hbm-gbps 0.001 --report "$WORK/pass.json" 2>&1)
rc=$?; echo "$out"
[ "$rc" = 0 ] || fail "reachable thresholds exited $rc"
echo "$out" | grep -q "^node-smoke PASS $host: 1 CPU check(s), GEMM .* TFLOP/s (>= 1e-06), memory .* GB/s (>= 0.001)" \
  || fail "no PASS line for $host"
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['result']=='PASS' and j['nodes'][0]['pass']" \
  "$WORK/pass.json" || fail "the JSON report"

out=$("$PRIMUS" node-smoke --device cpu --min-gemm-tflops 1e9 2>&1)
rc=$?; echo "$out"
[ "$rc" = 1 ] || fail "an impossible --min-gemm-tflops exited $rc, expected 1"
echo "$out" | grep -q "^node-smoke FAIL $host" || fail "no FAIL line"
echo "$out" | grep -q "CPU: min_gemm_tflops: GEMM 512^3 at .*(--min-gemm-tflops 1e+09)" || fail "the failed check is not named"

out=$("$MPIEXEC" -np 2 --oversubscribe --bind-to none "$PRIMUS" node-smoke --device cpu --min-hbm-gbps 1e9 --distributed-timeout-minutes 1 2>&1)
rc=$?; echo "$out"
[ "$rc" = 1 ] || fail "2 ranks with an impossible --min-hbm-gbps exited $rc, expected 1"
[ "$(echo "$out" | grep -c "^node-smoke FAIL $host: 2 CPU check(s)")" = 1 ] || fail "not one FAIL line for the node"
echo "$out" | grep -q "rank 1 (CPU): min_hbm_gbps" || fail "rank 1's failure is not named"

out=$("$PRIMUS" node-smoke --device cuda 2>&1)
rc=$?; echo "$out"
if [ "$rc" != 0 ]; then
  [ "$rc" = 2 ] || fail "--device cuda without a usable GPU exited $rc, expected 2"
  echo "$out" | grep -q "node-smoke FAIL $host: no usable GPU" || fail "no-GPU line"
fi
out=$("$PRIMUS" node-smoke --device tpu 2>&1); [ $? = 1 ] && echo "$out" | grep -q -- "--device 'tpu'" || fail "bad --device: $out"
echo "node-smoke tests passed"
