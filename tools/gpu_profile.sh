#!/usr/bin/env bash
# Where a training step's GPU time goes: runs `primus train` under Nsight Compute with one
# metric (each kernel's duration) over the kernels of steady-state steps, and prints the time
# per kernel name, the kernel count and the sum against the step's wall time (the difference
# is GPU idle time: host-side gaps, synchronisation). On the GPU machine, after gpu_bundle.sh:
#   bash tools/gpu_profile.sh EXPERIMENT SEQ MBS SKIP_KERNELS COUNT [--set key=value ...]
# SKIP_KERNELS should cover start-up and the first steps; COUNT about two steps' kernels.
set -u -o pipefail
if (($# < 5)); then sed -n '2,7p' "$0"; exit 2; fi
EXP=$1 SEQ=$2 MBS=$3 SKIP=$4 COUNT=$5
shift 5
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_profile}
mkdir -p "$OUT"
tag=$(basename "$EXP" .yaml)_${SEQ}x${MBS}
args=(train --config "$EXP" --set bf16=true --set micro_batch_size="$MBS" --set global_batch_size="$MBS"
      --set seq_length="$SEQ" --set log_interval=1 --set log_num_zeros_in_grad=false --set save=null
      --set mock_data=true --set eval_iters=0 "$@")
# Plain run first: the wall time per step without the profiler.
timeout 200 "$B/primus" "${args[@]}" --set train_iters=12 >"$OUT/$tag.plain.log" 2>&1
echo "plain run rc=$? ($tag)"; grep -E "iteration +(6|12)/" "$OUT/$tag.plain.log" | tail -2
timeout 400 ncu --clock-control none --metrics gpu__time_duration.sum --launch-skip "$SKIP" \
  --launch-count "$COUNT" --csv --log-file "$OUT/$tag.ncu.log" \
  "$B/primus" "${args[@]}" --set train_iters=40 >"$OUT/$tag.ncu.csv" 2>"$OUT/$tag.ncu.err"
echo "ncu rc=$?"
python3 - "$OUT/$tag.ncu.csv" <<'PYEOF'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if len(r) > 10]
if not rows:
    print("no ncu rows"); sys.exit(0)
h = rows[0]
ki, mi, vi, ui = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Value"), h.index("Metric Unit")
seq = []  # (name, usecond) in launch order
for r in rows[1:]:
    if r[mi] != "gpu__time_duration.sum": continue
    v = float(r[vi].replace(",", ""))
    v = v / 1000.0 if r[ui] == "nsecond" else (v * 1000.0 if r[ui] == "msecond" else v)
    seq.append((r[ki], v))
# One optimizer step = the kernels between two consecutive AdamW launches.
marks = [i for i, (n, _) in enumerate(seq) if "adamw" in n.lower()]
if len(marks) >= 2:
    seq = seq[marks[0] + 1: marks[1] + 1]
    print(f"one step (between AdamW launches {marks[0]} and {marks[1]}):")
else:
    print(f"no two AdamW launches in the window ({len(marks)}): all {len(seq)} kernels")
tot = collections.Counter(); cnt = collections.Counter()
for name, v in seq:
    name = name[:100]
    tot[name] += v; cnt[name] += 1
all_us = sum(tot.values()); n = sum(cnt.values())
print(f"kernels: {n}, GPU time {all_us/1000:.2f} ms")
for name, us in tot.most_common(45):
    print(f"{us/1000:9.3f} ms {100*us/all_us:5.1f}% {cnt[name]:5d}x  {name}")
PYEOF
