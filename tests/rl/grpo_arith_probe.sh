#!/usr/bin/env bash
# A CPU analog of the GPU GRPO run of docs/RL.md ("On the GPU"), for learning-rate and batch
# studies in minutes (not a ctest: it measures, it does not assert). Same task shape as the
# Llama-3.2-1B run: tools/make_chat_data.py's arithmetic (operands 0..49), answers that are ONE
# token followed by the end-of-turn token (the character-level ChatML tokenizer of
# tests/data/posttrain/chatml_bytes plus 100 BPE merges "00".."99", 359 ids), an SFT model that
# answers about a fifth of the prompts right at temperature 1, then GRPO with 8 completions per
# prompt, the accuracy reward, dapo, beta 0, top_k 50 (the GPU yaml's keys).
#   1. data + tokenizer; 2. SFT of the CI task's 2-layer Llama (tests/posttrain/letters-sft.yaml),
#      stopped at iteration 500 of 600 (reward ~0.19 at the start of GRPO);
#   3. GRPO from it for each learning rate of LRS: the mean reward, entropy and completion length
#      of every 10 iterations.
# Usage: grpo_arith_probe.sh PRIMUS_BINARY [WORK_DIR]
#   env: LRS (default "1e-4 3e-4 1e-3"), ITERS (100), BATCH (global_batch_size, completions per
#        step: 128 = 16 prompts x 8), EXTRA (more key=value for the GRPO runs)
# Measured 2026-12-07 (2 cores; ~25 s per 100 iterations at BATCH 128, mean reward of the first
# -> the worst -> the last 10 iterations): BATCH 128: lr 1e-4 flat (0.19 -> 0.17 -> 0.20), 3e-4
# a dip then a rise (0.18 -> 0.15 -> 0.20), 1e-3 a fall (0.11 in the first 10, 0.08, 0.14 at
# 100); BATCH 512 (64 prompts): 3e-4 rises steadily (0.18 -> 0.22 in 60), 1e-3 dips and
# recovers (0.14 -> 0.11 -> 0.20). The GPU run's pattern (flat at a low rate, falling at a
# higher one, 16 prompts a step) is this one: the rate a step can take grows with the batch.
set -euo pipefail
PRIMUS=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${2:-$(mktemp -d /tmp/primus_grpo_arith.XXXXXX)}
mkdir -p "$WORK"
LRS=${LRS:-1e-4 3e-4 1e-3}
ITERS=${ITERS:-100}
BATCH=${BATCH:-128}
export PRIMUS_TEST_WORKSPACE=$WORK/ws PRIMUS_TEST_DATA=$WORK/data PRIMUS_TEST_TOKENIZER=$WORK/tokenizer

python3 "$ROOT/tools/make_chat_data.py" --out "$WORK/data" --min 0 --max 49 --train 20000 --heldout 100 --dpo 0 \
  --grpo 2000 >/dev/null
python3 - "$ROOT/tests/data/posttrain/chatml_bytes" "$WORK/tokenizer" <<'PY'
import json, os, shutil, sys
src, dst = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
tok = json.load(open(os.path.join(src, "tokenizer.json")))
vocab, merges = tok["model"]["vocab"], []
for a in "0123456789":
    for b in "0123456789":  # every 2-digit number one token, as numbers are in Llama 3's vocabulary
        vocab[a + b] = 259 + len(merges)
        merges.append(f"{a} {b}")
tok["model"]["merges"] = merges
json.dump(tok, open(os.path.join(dst, "tokenizer.json"), "w"), ensure_ascii=False, indent=1)
shutil.copy(os.path.join(src, "tokenizer_config.json"), dst)
PY
sed -e 's/vocab_size: 259/vocab_size: 359/' "$ROOT/tests/posttrain/letters-sft.yaml" >"$WORK/arith-sft.yaml"

if [[ ! -d $WORK/sft/iter_0000500 ]]; then
  echo "== SFT (500 of 600 iterations)"
  PRIMUS_TEST_RUN=sft "$PRIMUS" train posttrain --config "$WORK/arith-sft.yaml" --set train_iters=600 \
    --set exit_interval=500 --set save="$WORK/sft" >"$WORK/sft.log" 2>&1 || { tail -20 "$WORK/sft.log"; exit 1; }
fi
for lr in $LRS; do
  name=grpo_lr$lr
  echo "== GRPO lr $lr, $BATCH completions per step, $ITERS iterations ${EXTRA:-}"
  extra=()
  for kv in ${EXTRA:-}; do extra+=(--set "$kv"); done
  PRIMUS_TEST_RUN=$name "$PRIMUS" train posttrain --config "$WORK/arith-sft.yaml" --set grpo=true --set packing=false \
    --set data_path="$WORK/data/grpo_prompts.jsonl" --set pretrained_checkpoint="$WORK/sft/iter_0000500" \
    --set num_generations=8 --set max_prompt_length=48 --set max_completion_length=8 --set top_k=50 \
    --set micro_batch_size=32 --set global_batch_size="$BATCH" --set log_interval=1 --set train_iters="$ITERS" \
    --set lr="$lr" --set min_lr="$(python3 -c "print($lr / 10)")" --set lr_warmup_iters=2 --set save= \
    "${extra[@]}" >"$WORK/$name.log" 2>&1 ||
    { tail -20 "$WORK/$name.log"; exit 1; }
  python3 - "$WORK/$name.log" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    if " iteration " in line and "reward:" in line:
        get = lambda k: float(re.search(re.escape(k) + r": ([0-9.E+-]+)", line).group(1))
        rows.append((get("reward"), get("entropy"), get("completions/mean_length")))
for i in range(0, len(rows), 10):
    c = rows[i:i + 10]
    mean = lambda j: sum(r[j] for r in c) / len(c)
    print(f"  iterations {i + 1:3d}-{i + len(c):3d}: reward {mean(0):.3f}  entropy {mean(1):.3f}  length {mean(2):.2f}")
PY
done
