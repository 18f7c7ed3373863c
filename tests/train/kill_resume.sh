#!/usr/bin/env bash
# Kill-and-resume: `primus train` is killed with SIGKILL at random moments (KILLS times,
# default 20), each time restarted with auto_continue_train, then run to the end. Checks:
#   - every restart resumes (no error, never from a broken checkpoint);
#   - the per-iteration losses of the final, resumed history equal an uninterrupted run's
#     bit for bit (metrics.jsonl keeps full double precision), as does the final model file;
#   - a SIGTERM makes the run save and exit 0 (Slurm preemption).
# Extra arguments after KILLS go to every run (e.g. --set num_experts=4 ...: an MoE model,
# whose expert bias and auxiliary losses must resume exactly too; every logged loss is compared).
# KILL_RESUME_EXP names another experiment (tests/train/tiny_chat-posttrain.yaml: packed SFT,
# LoRA and DPO, whose DPO reference log-probs must survive the kills too).
# Usage: kill_resume.sh PRIMUS_BINARY [KILLS [--set key=value ...]]
set -euo pipefail
PRIMUS=$1
KILLS=${2:-20}
shift $(($# < 2 ? $# : 2))
WORK=$(mktemp -d /tmp/primus_kill_resume.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

EXP=${KILL_RESUME_EXP:-$(dirname "$0")/tiny_mock-pretrain.yaml}
export PRIMUS_TEST_WORKSPACE=$WORK/ws
# Not a shell function: a backgrounded function is a subshell, and `kill -9 $!` must hit primus.
TRAIN=(train --config "$EXP" --set train_iters=400 --set lr_warmup_iters=5 --set save_interval=2
       --set auto_continue_train=true --set async_save=true "$@")

PRIMUS_TEST_RUN=ref "$PRIMUS" "${TRAIN[@]}" --set save="$WORK/ref_ckpt" >"$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; exit 1; }

tracker=$WORK/run_ckpt/latest_checkpointed_iteration.txt
saved() { cat "$tracker" 2>/dev/null || echo 0; }
for ((k = 1; k <= KILLS; k++)); do
  before=$(saved)
  PRIMUS_TEST_RUN=run "$PRIMUS" "${TRAIN[@]}" --set save="$WORK/run_ckpt" >>"$WORK/run.log" 2>&1 &
  pid=$!
  if ((RANDOM % 4 == 0)); then
    sleep "0.$((RANDOM % 5))"  # anywhere from start-up on (config, data, checkpoint loading)
  else
    # Mid-training, whatever the machine's speed: once a new checkpoint is out, 0-99 ms later.
    for ((t = 0; t < 600; t++)); do
      (($(saved) > before)) && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    sleep "0.0$((RANDOM % 10))"
  fi
  if ! kill -9 "$pid" 2>/dev/null; then
    wait "$pid"
    echo "kill $k: the run had already ended (rc $?) at iteration $(saved): raise train_iters so every kill hits a live run"
    tail -5 "$WORK/run.log"
    exit 1
  fi
  wait "$pid" 2>/dev/null || true
  echo "kill $k: last checkpoint at iteration $(saved)"
  grep -qE "\[error\]|error:" "$WORK/run.log" && { echo "an error after kill $k:"; grep -n error "$WORK/run.log" | tail; exit 1; }
done
# SIGTERM: save and exit 0 (only when the run is still going).
PRIMUS_TEST_RUN=run "$PRIMUS" "${TRAIN[@]}" --set save="$WORK/run_ckpt" >>"$WORK/run.log" 2>&1 &
pid=$!
sleep 1.5
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" || { echo "SIGTERM run did not exit 0"; tail -20 "$WORK/run.log"; exit 1; }
PRIMUS_TEST_RUN=run "$PRIMUS" "${TRAIN[@]}" --set save="$WORK/run_ckpt" >>"$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log"; exit 1; }

/usr/bin/python3 - "$WORK/ws/test/ci/ref/tensorboard/metrics.jsonl" "$WORK/ws/test/ci/run/tensorboard/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "train":
            # every logged loss (lm loss, MoE load balancing, z-loss) and the grad norm; the last
            # logged value of an iteration wins
            out[r["iteration"]] = tuple(sorted((k, v) for k, v in r.items()
                                               if k.endswith("loss") or k == "grad_norm" or k.startswith("rewards")))
    return out
ref, run = losses(sys.argv[1]), losses(sys.argv[2])
assert len(ref) == 400, f"reference logged {len(ref)} iterations"
bad = [i for i in ref if run.get(i) != ref[i]]
assert not bad, f"iterations differing from the uninterrupted run: {bad[:10]} e.g. {run.get(bad[0])} vs {ref[bad[0]]}"
print(f"all {len(ref)} iterations equal the uninterrupted run bit for bit")
PY
cmp "$WORK/ref_ckpt/iter_0000400/model.safetensors" "$WORK/run_ckpt/iter_0000400/model.safetensors"
echo "final model.safetensors identical; kill-and-resume OK"
