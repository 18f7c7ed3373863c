#!/usr/bin/env bash
# Where a training step's GPU time goes: runs `primus train` under Nsight Compute with one
# metric (each kernel's duration) over one steady-state step (the run's `profile` window:
# cudaProfilerStart/Stop around iteration STEP, ncu --profile-from-start off), and prints the
# time per NVTX range (the model's blocks: "attention forward", "moe experts backward", ...;
# core/trace.h) and per kernel name, the kernel count and the sum against the step's wall time
# (the difference is GPU idle time: host-side gaps, synchronisation). On the GPU machine, after
# gpu_bundle.sh:
#   bash tools/gpu_profile.sh EXPERIMENT SEQ MBS [STEP] [--set key=value ...]
set -u -o pipefail
if (($# < 3)); then sed -n '2,9p' "$0"; exit 2; fi
EXP=$1 SEQ=$2 MBS=$3
STEP=8
if (($# >= 4)) && [[ $4 =~ ^[0-9]+$ ]]; then STEP=$4; shift; fi
shift 3
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
timeout 200 "$B/primus" "${args[@]}" --set train_iters=8 --set timing_log_level=1 >"$OUT/$tag.timing.log" 2>&1
echo "timing_log_level 1 run rc=$?"; grep "step timing" "$OUT/$tag.timing.log" | tail -2
timeout 400 ncu --clock-control none --cache-control none --profile-from-start off --nvtx \
  --metrics gpu__time_duration.sum -f -o "$OUT/$tag" \
  "$B/primus" "${args[@]}" --set train_iters=$((STEP + 2)) --set profile=true --set profile_step_start="$STEP" \
  --set profile_step_end=$((STEP + 1)) >"$OUT/$tag.ncu.log" 2>&1
echo "ncu rc=$?"; tail -3 "$OUT/$tag.ncu.log"
# The same kernels twice: by kernel name, and renamed to their innermost NVTX range.
ncu -i "$OUT/$tag.ncu-rep" --csv --page raw --metrics gpu__time_duration.sum >"$OUT/$tag.ncu.csv" 2>&1
ncu -i "$OUT/$tag.ncu-rep" --csv --page raw --metrics gpu__time_duration.sum --print-nvtx-rename kernel \
  >"$OUT/$tag.nvtx.csv" 2>&1
python3 - "$OUT/$tag.ncu.csv" "$OUT/$tag.nvtx.csv" <<'PYEOF'
import csv, sys, collections
def kernels(path):
    rows = [r for r in csv.reader(open(path, errors="replace")) if len(r) > 10]
    if not rows: return []
    h = rows[0]
    ki = h.index("Kernel Name")
    def us(v, unit):
        v = float(v.replace(",", ""))
        return v / 1000.0 if unit in ("nsecond", "ns") else (v * 1000.0 if unit in ("msecond", "ms") else v)
    seq = []
    if "Metric Name" in h:  # the details page: one row per (kernel, metric)
        mi, vi, ui = h.index("Metric Name"), h.index("Metric Value"), h.index("Metric Unit")
        for r in rows[1:]:
            if r[mi] == "gpu__time_duration.sum": seq.append((r[ki], us(r[vi], r[ui])))
    else:  # the raw page: one column per metric, its unit in the second row
        ti = h.index("gpu__time_duration.sum")
        unit = rows[1][ti]
        for r in rows[2:]: seq.append((r[ki], us(r[ti], unit)))
    return seq
seq, ranged = kernels(sys.argv[1]), kernels(sys.argv[2])
if not seq:
    print("no ncu rows"); sys.exit(0)
def table(title, pairs, top):
    tot = collections.Counter(); cnt = collections.Counter()
    for name, v in pairs:
        tot[name[:100]] += v; cnt[name[:100]] += 1
    all_us = sum(tot.values())
    print(f"{title}: {sum(cnt.values())} kernels, GPU time {all_us/1000:.2f} ms")
    for name, us in tot.most_common(top):
        print(f"{us/1000:9.3f} ms {100*us/all_us:5.1f}% {cnt[name]:5d}x  {name}")
if len(ranged) == len(seq):
    table("by NVTX range", ranged, 30)
    # each range's kernels by name
    per = collections.defaultdict(collections.Counter)
    for (k, v), (r, _) in zip(seq, ranged): per[r[:60]][k[:90]] += v
    for r, c in sorted(per.items(), key=lambda kv: -sum(kv[1].values()))[:12]:
        print(f"-- {r}: {sum(c.values())/1000:.2f} ms")
        for k, us in c.most_common(6): print(f"   {us/1000:8.3f} ms  {k}")
else:
    print(f"(NVTX-renamed listing has {len(ranged)} kernels, the plain one {len(seq)}: no range table)")
table("by kernel", seq, 45)
PYEOF
