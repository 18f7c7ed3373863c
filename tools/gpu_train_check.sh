#!/usr/bin/env bash
# On the GPU machine: the same training run on the CPU path (fp32) and the CUDA path (bf16),
# same init and data, and how far their loss curves are apart (issue #5's end-to-end check).
# The Brown corpus and the tokenizer travel in the bundle's data/ (tools/gpu_bundle.sh); the run's
# options are tools/train_check_args.sh's.
#   bash tools/gpu_train_check.sh [--cpu-curve FILE | --cpu-in-call] [ITERS]
#                                                    (default 200; logs and curves in $OUT)
# Where the CPU side comes from:
#   --cpu-curve FILE  a curve computed beforehand on the build machine (tools/cpu_curve.sh); only
#                     the CUDA side trains here. Its options, its resolved configuration (this
#                     binary's --dry-run of the CPU run, host paths aside) and the sha256 of its data
#                     and tokenizer must equal this run's, else the check stops (exit 2).
#   --cpu-in-call     train the CPU side here too, next to the CUDA side (the old mode; at ~2.2 s
#                     per CPU iteration about 200 iterations do not fit in one 600 s call).
#   neither           gpu_bundle/cpu_curve_ITERS.json when it exists (tools/gpu_bundle.sh puts
#                     output/cpu_curve_*.json there), else --cpu-in-call.
set -u -o pipefail
CPU_CURVE="" MODE=auto ITERS=200
while (($#)); do
  case $1 in
    --cpu-curve) CPU_CURVE=${2:?--cpu-curve needs a file}; MODE=file; shift 2 ;;
    --cpu-in-call) MODE=in_call; shift ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) ITERS=$1; shift ;;
  esac
done
ROOT=$(pwd)
if [[ $MODE == auto ]]; then
  MODE=in_call
  if [[ -f $ROOT/gpu_bundle/cpu_curve_$ITERS.json ]]; then CPU_CURVE=$ROOT/gpu_bundle/cpu_curve_$ITERS.json; MODE=file; fi
fi
if [[ $MODE == file && ! -f $CPU_CURVE ]]; then
  echo "gpu_train_check.sh: --cpu-curve $CPU_CURVE not found (make it with tools/cpu_curve.sh $ITERS)" >&2
  exit 2
fi
source "$ROOT/tools/gpu_env.sh" || exit 1
source "$ROOT/tools/train_check_args.sh"
OUT=${OUT:-/tmp/primus_train_check}
mkdir -p "$OUT"
DATA=$BUNDLE_DIR/data
train_check_args "$ITERS" "$DATA/brown_llama3_text_document" "$DATA/tokenizer.json"

devices=(cpu cuda)
if [[ $MODE == file ]]; then
  devices=(cuda)
  echo "CPU side: $CPU_CURVE (computed on the build machine); training only the CUDA side here"
  # The curve counts only if it came from this very experiment: same options (paths aside), the
  # same configuration resolved by this binary and checkout, the same data and tokenizer bytes,
  # as many iterations.
  train_check_device_args cpu
  if ! PRIMUS_EXP_NAME=check_cpu "$B/primus" train "${TRAIN_CHECK_ARGS[@]}" "${TRAIN_CHECK_DEVICE_ARGS[@]}" --dry-run \
      >"$OUT/cpu_dryrun.txt" 2>&1; then
    echo "gpu_train_check.sh: primus train --dry-run failed here; see $OUT/cpu_dryrun.txt" >&2
    exit 2
  fi
  python3 - "$CPU_CURVE" "$ITERS" "${TRAIN_CHECK_CONFIG_ARGS[*]}" "$DATA/brown_llama3_text_document" \
    "$DATA/tokenizer.json" "$OUT/cpu_dryrun.txt" <<'PY' || exit 2
import hashlib, json, sys
sys.path.insert(0, "tools")  # the working directory is the repo root
import train_check_config
path, iters, config_args, data, tokenizer, dryrun = sys.argv[1:7]
c = json.load(open(path))
def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
problems = []
if c.get("format") != "primus-cpu-curve-v1":
    problems.append(f"format is {c.get('format')!r}, expected 'primus-cpu-curve-v1'")
if c.get("steps") != int(iters):
    problems.append(f"it has {c.get('steps')} iterations, this check runs {iters} (pass ITERS={c.get('steps')} "
                    f"or make a new curve with tools/cpu_curve.sh {iters})")
if c.get("config_args") != config_args.split(" "):
    problems.append(f"its options {c.get('config_args')} differ from this run's {config_args.split(' ')} "
                    "(tools/train_check_args.sh changed since: rerun tools/cpu_curve.sh)")
if c.get("device_args") != ["--set", "device=cpu", "--set", "bf16=false"]:
    problems.append(f"it was not a CPU fp32 run: {c.get('device_args')}")
if "resolved_config" not in c:
    problems.append("it has no resolved_config (made by an older tools/cpu_curve.sh): rerun it")
else:
    changed, one_sided = train_check_config.differences(c["resolved_config"],
                                                        train_check_config.resolved(open(dryrun).read()))
    problems += ["resolved configuration differs: " + d for d in changed]
    for d in one_sided:
        print("note: configuration key " + d + " (the binaries' schemas differ; not fatal)")
mine = {"data.bin": sha256(data + ".bin"), "data.idx": sha256(data + ".idx"), "tokenizer.json": sha256(tokenizer)}
for k, v in mine.items():
    if c.get("sha256", {}).get(k) != v:
        problems.append(f"{k} differs from the one it was trained on (sha256 {v[:12]} here, "
                        f"{str(c.get('sha256', {}).get(k))[:12]} there): rebuild the bundle or the curve")
if problems:
    print(f"gpu_train_check.sh: cannot use {path}:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(2)
print(f"CPU curve checked: same options, resolved configuration ({len(c['resolved_config'])} keys) and data; made at commit {c.get('git_commit', '?')[:12]} "
      f"in {c.get('seconds')} s ({c.get('seconds_per_iteration')} s/iteration)")
PY
fi

for dev in "${devices[@]}"; do
  train_check_device_args "$dev"
  ( t0=$SECONDS
    PRIMUS_EXP_NAME=check_$dev timeout 500 "$B/primus" train "${TRAIN_CHECK_ARGS[@]}" "${TRAIN_CHECK_DEVICE_ARGS[@]}" \
      --set tensorboard_dir="$OUT/tb_$dev" >"$OUT/train_$dev.log" 2>&1
    echo "train on $dev: rc=$? in $((SECONDS - t0)) s" ) &
done
wait
cpu_source=$OUT/tb_cpu/metrics.jsonl
[[ $MODE == file ]] && cpu_source=$CPU_CURVE
python3 - "$cpu_source" "$OUT/tb_cuda/metrics.jsonl" "$ITERS" <<'PY'
import json, sys
def curve(p):
    out = {}
    try:
        if p.endswith(".json"):  # tools/cpu_curve.sh's file
            return {int(i): v for i, v in json.load(open(p))["losses"].items()}
        for line in open(p):
            r = json.loads(line)
            if r.get("type") == "train": out[r["iteration"]] = r["lm_loss"]
    except FileNotFoundError:
        pass
    return out
cpu, gpu = curve(sys.argv[1]), curve(sys.argv[2])
common = sorted(set(cpu) & set(gpu))
if not common:
    print(json.dumps({"error": "no common iterations", "cpu": len(cpu), "cuda": len(gpu)})); sys.exit(1)
d = [abs(cpu[i] - gpu[i]) for i in common]
last = common[-50:]
res = {"iterations": len(common), "expected_iterations": int(sys.argv[3]), "cpu_source": sys.argv[1], "cpu_first": cpu[common[0]], "cpu_last": cpu[common[-1]],
       "cuda_first": gpu[common[0]], "cuda_last": gpu[common[-1]], "max_abs_diff": max(d),
       "mean_abs_diff": sum(d) / len(d),
       "mean_abs_diff_last50": sum(abs(cpu[i] - gpu[i]) for i in last) / len(last),
       "max_rel_diff": max(abs(cpu[i] - gpu[i]) / abs(cpu[i]) for i in common)}
print(json.dumps(res))
# Criterion: every compared iteration within 2% relative difference, over the whole run.
complete = len(common) == int(sys.argv[3])
ok = res["max_rel_diff"] < 0.02 and complete
print("CPU fp32 vs CUDA bf16 loss curves " + ("agree" if ok else "DISAGREE") + " (max relative difference %.3g)" % res["max_rel_diff"]
      + ("" if complete else "; INCOMPLETE: %d of %s iterations on both sides" % (len(common), sys.argv[3])))
sys.exit(0 if ok else 1)
PY
