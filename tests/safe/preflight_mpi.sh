#!/usr/bin/env bash
# `primus preflight --device cpu` on 4 MPI ranks split into 2 emulated nodes (so the intra-node,
# inter-node and world groups all run), with small sizes; then on 1 rank without a launcher.
# Checks: the exit code is the report's verdict; the JSON has every rank, node and group, every
# op at every size, busbw = algbw x the nccl-tests factor, every collective result check passes,
# and the markdown names the same verdict.
#   usage: preflight_mpi.sh PRIMUS MPIEXEC
set -u
PRIMUS=$1
MPIEXEC=$2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$MPIEXEC" -np 4 --oversubscribe --bind-to none "$PRIMUS" preflight --device cpu --emulate-nodes 2 --distributed-timeout-minutes 1 \
  --min-bytes 64K --max-bytes 256K --step-factor 4 --warmup 1 --iters 2 --report "$WORK/np4" > "$WORK/np4.log" 2>&1
rc=$?
cat "$WORK/np4.log"
[ -f "$WORK/np4.json" ] && [ -f "$WORK/np4.md" ] || fail "no report written (exit $rc)"

python3 - "$WORK/np4.json" "$rc" <<'PY' || fail "the 4-rank report"
import json, sys
j = json.load(open(sys.argv[1])); rc = int(sys.argv[2])
assert j["format"] == "primus-preflight/1"
assert j["exit_code"] == rc, (j["exit_code"], rc)
assert j["result"] == ("PASS" if rc == 0 else "FAIL")
assert rc == 0 or j["failed_checks"] or j["outliers"], "a failing exit without a reason"
s = j["settings"]
assert s["device"] == "cpu" and s["backend"] == "mpi" and s["emulated_nodes"] == 2
assert s["sizes_bytes"] == [65536, 262144]
assert j["world_size"] == 4 and [r["rank"] for r in j["ranks"]] == [0, 1, 2, 3]
assert [n["ranks"] for n in j["nodes"]] == [[0, 1], [2, 3]]
for r in j["ranks"]:
    assert r["kind"] == "cpu" and r["gemm_tflops"] > 0 and r["mem_gbps"] > 0, r
    assert r["node"].endswith("/node%d" % (r["rank"] // 2)) and r["local_rank"] == r["rank"] % 2
groups = [(g["scope"], g["ranks"]) for g in j["groups"]]
assert groups == [("intra-node", [0, 1]), ("intra-node", [2, 3]), ("inter-node", [0, 2]),
                  ("inter-node", [1, 3]), ("world", [0, 1, 2, 3])], groups
factor = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
          "reduce_scatter": lambda n: (n - 1) / n, "all_to_all": lambda n: (n - 1) / n,
          "send_recv": lambda n: 1.0}
for g in j["groups"]:
    n = len(g["ranks"])
    ops = [(row["op"], row["bytes"]) for row in g["rows"]]
    assert ops == [(op, b) for op in factor for b in (65536, 262144)], ops
    for row in g["rows"]:
        assert row["ranks"] == n and row["time_us"] > 0
        assert abs(row["algbw_gbps"] - row["bytes"] / (row["time_us"] * 1e-6) / 1e9) <= 1e-6 * row["algbw_gbps"]
        assert abs(row["busbw_gbps"] - row["algbw_gbps"] * factor[row["op"]](n)) <= 1e-9 * row["algbw_gbps"], row
    assert [c["name"] for c in g["checks"]] == [op + "_result" for op in factor]
    assert all(c["pass"] for c in g["checks"]), g["checks"]
for o in j["outliers"]:
    assert o["kind"] in ("rank", "node", "rail") and o["value"] < o["median"] * 0.9, o
print("4-rank report OK: result", j["result"], "with", len(j["outliers"]), "outlier(s)")
PY
grep -q "^## Outliers" "$WORK/np4.md" || fail "no outlier section in the markdown"
if [ "$rc" = 0 ]; then grep -q "Result: PASS" "$WORK/np4.md"; else grep -q "Result: FAIL" "$WORK/np4.md"; fi \
  || fail "the markdown's result differs from the exit code $rc"

# One rank, no launcher: the compute checks only, a PASS with loose thresholds.
"$PRIMUS" preflight --device cpu --quick --min-gemm-tflops 1e-6 --min-hbm-gbps 0.001 --report "$WORK/one" \
  > "$WORK/one.log" 2>&1 || { cat "$WORK/one.log"; fail "1-rank preflight exited $?"; }
python3 - "$WORK/one.json" <<'PY' || fail "the 1-rank report"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["world_size"] == 1 and j["groups"] == [] and j["result"] == "PASS", j
assert "1 rank: no collectives to measure" in j["notes"]
assert [c["name"] for c in j["ranks"][0]["checks"]] == ["gemm_sanity", "min_gemm_tflops", "min_hbm_gbps"]
PY
# An impossible threshold fails the rank, and the exit code says so.
"$PRIMUS" preflight --device cpu --quick --min-gemm-tflops 1e9 --report "$WORK/slow" > "$WORK/slow.log" 2>&1
rc=$?
[ "$rc" = 1 ] || { cat "$WORK/slow.log"; fail "a failed --min-gemm-tflops exited $rc, expected 1"; }
grep -q "FAIL rank 0 on .*: min_gemm_tflops" "$WORK/slow.md" || fail "the failed check is not named"
# Flags are refused by name.
out=$("$PRIMUS" preflight --device cpu --min-bytes 1X 2>&1); [ $? != 0 ] && echo "$out" | grep -q -- "--min-bytes" \
  || fail "a bad --min-bytes: $out"
out=$("$PRIMUS" preflight --device cpu --ops all_reduce,allgather 2>&1); echo "$out" | grep -q "all_gather" \
  || fail "a bad --ops: $out"
echo "preflight tests passed"
