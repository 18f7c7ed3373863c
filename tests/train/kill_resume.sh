#!/usr/bin/env bash
# Kill-and-resume: `primus train` is killed with SIGKILL at random moments (KILLS times,
# default 20), each time restarted with auto_continue_train, then run to the end. Checks:
#   - every restart resumes (no error, never from a broken checkpoint);
#   - the per-iteration losses of the final, resumed history equal an uninterrupted run's
#     bit for bit (metrics.jsonl keeps full double precision), as does the final model file;
#   - a SIGTERM makes the run save and exit 0 (Slurm preemption).
# Usage: kill_resume.sh PRIMUS_BINARY [KILLS]
set -euo pipefail
PRIMUS=$1
KILLS=${2:-20}
WORK=$(mktemp -d /tmp/primus_kill_resume.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

write_exp() {  # name save_dir
  cat >"$WORK/$1.yaml" <<YAML
work_group: test
user_name: ci
exp_name: $1
workspace: $WORK/ws
modules:
  pre_trainer:
    framework: megatron
    config: pre_trainer.yaml
    model: llama_tiny.yaml
    overrides:
      num_layers: 2
      hidden_size: 64
      ffn_hidden_size: 128
      num_attention_heads: 4
      num_query_groups: 2
      vocab_size: 256
      make_vocab_size_divisible_by: 64
      seq_length: 32
      max_position_embeddings: 64
      micro_batch_size: 2
      global_batch_size: 8
      train_iters: 60
      lr: 3.0e-3
      min_lr: 3.0e-4
      lr_warmup_iters: 5
      lr_decay_style: cosine
      mock_data: true
      bf16: false
      device: cpu
      log_interval: 1
      eval_iters: 0
      save: $2
      save_interval: 2
      auto_continue_train: true
      async_save: true
      watchdog_minutes: 0
YAML
}

write_exp ref "$WORK/ref_ckpt"
"$PRIMUS" train --config "$WORK/ref.yaml" >"$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; exit 1; }

write_exp run "$WORK/run_ckpt"
for ((k = 1; k <= KILLS; k++)); do
  "$PRIMUS" train --config "$WORK/run.yaml" >>"$WORK/run.log" 2>&1 &
  pid=$!
  sleep "$((RANDOM % 3)).$((RANDOM % 10))$((RANDOM % 10))"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    echo "kill $k: at iteration $(cat "$WORK/run_ckpt/latest_checkpointed_iteration.txt" 2>/dev/null || echo none) (last saved)"
  else
    wait "$pid" || { echo "run $k failed:"; tail -20 "$WORK/run.log"; exit 1; }
    echo "kill $k: the run had already finished"
  fi
  grep -qE "\[error\]|error:" "$WORK/run.log" && { echo "an error after kill $k:"; grep -n error "$WORK/run.log" | tail; exit 1; }
done
# SIGTERM: save and exit 0 (only when the run is still going).
"$PRIMUS" train --config "$WORK/run.yaml" >>"$WORK/run.log" 2>&1 &
pid=$!
sleep 1.5
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" || { echo "SIGTERM run did not exit 0"; tail -20 "$WORK/run.log"; exit 1; }
"$PRIMUS" train --config "$WORK/run.yaml" >>"$WORK/run.log" 2>&1 || { tail -20 "$WORK/run.log"; exit 1; }

/usr/bin/python3 - "$WORK/ws/test/ci/ref/tensorboard/metrics.jsonl" "$WORK/ws/test/ci/run/tensorboard/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "train":
            out[r["iteration"]] = (r["lm_loss"], r["grad_norm"])  # the last logged value wins
    return out
ref, run = losses(sys.argv[1]), losses(sys.argv[2])
assert len(ref) == 60, f"reference logged {len(ref)} iterations"
bad = [i for i in ref if run.get(i) != ref[i]]
assert not bad, f"iterations differing from the uninterrupted run: {bad[:10]} e.g. {run.get(bad[0])} vs {ref[bad[0]]}"
print(f"all {len(ref)} iterations equal the uninterrupted run bit for bit")
PY
cmp "$WORK/ref_ckpt/iter_0000060/model.safetensors" "$WORK/run_ckpt/iter_0000060/model.safetensors"
echo "final model.safetensors identical; kill-and-resume OK"
