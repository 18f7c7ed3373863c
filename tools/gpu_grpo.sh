#!/usr/bin/env bash
# GRPO on the lent GPU (docs/RL.md "On the GPU"), in one call, after tools/gpu_bundle.sh (run from
# the repo root there; the Llama 3.1 tokenizer files travel in gpu_bundle/tokenizer/):
#   1. SFT of the Llama-3.2-1B shape (random init, bf16) on the arithmetic chat data of
#      tools/make_chat_data.py, so that it answers some questions;
#   2. GRPO from that checkpoint (examples/megatron/llama3.2_1B-grpo.yaml: 16 prompts x 8
#      completions per step, accuracy reward): per step the time of the rollouts and of the
#      training, the rollout tokens/s, the reward;
#   3. the generation peer: HF transformers generate (bf16, batched, random weights of the same
#      shape; ../shared/anchors/hf_generate_bench.py copied into the bundle's py/) at the batch
#      of one GRPO round (128 sequences), prompt 48 tokens, 32 new tokens, next to our
#      bench_generate at the same shape.
# GRPO_STAGES picks stages (default "sft grpo peer"); SFT_ITERS (default 300), GRPO_ITERS
# (default 20), GRPO_LR (default 2e-6). Logs under $OUT; the last lines are a summary.
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_grpo}
mkdir -p "$OUT"
STAGES=${GRPO_STAGES:-sft grpo peer}
TOK=${TOKENIZER_DIR:-$ROOT/gpu_bundle/tokenizer}
SFT_ITERS=${SFT_ITERS:-300}
GRPO_ITERS=${GRPO_ITERS:-20}
python3 "$ROOT/tools/make_chat_data.py" --out "$OUT/data" --train 20000 --heldout 200 --dpo 0 --grpo 4000 >/dev/null
COMMON=(--set tokenizer_type=HuggingFaceTokenizer --set tokenizer_model="$TOK/tokenizer.json" --set chat_template=
        --set auto_continue_train=false --set load= --set eval_iters=0 --set log_num_zeros_in_grad=false)
if [[ " $STAGES " == *" sft "* ]]; then
  t0=$SECONDS
  timeout 500 "$B/primus" train posttrain --config examples/megatron/llama3.2_1B-sft.yaml "${COMMON[@]}" \
    --set pretrained_checkpoint= --set data_path="$OUT/data/sft_messages.jsonl" --set split=100,0,0 \
    --set data_cache_path="$OUT/data/cache" --set seq_length=512 --set micro_batch_size=8 --set global_batch_size=32 \
    --set train_iters="$SFT_ITERS" --set lr=1.0e-4 --set min_lr=1.0e-5 --set lr_warmup_iters=20 \
    --set lr_decay_iters="$SFT_ITERS" --set save="$OUT/sft" --set save_interval=100000 --set log_interval=20 \
    --set use_distributed_optimizer=false >"$OUT/sft.log" 2>&1
  echo "sft: rc=$? in $((SECONDS - t0)) s | $(grep -E "iteration +[0-9]+/" "$OUT/sft.log" | tail -1 | grep -o "lm loss: [0-9.E+-]*")"
  grep -E "error|Error" "$OUT/sft.log" | head -3
fi
if [[ " $STAGES " == *" grpo "* ]]; then
  t0=$SECONDS
  timeout 500 "$B/primus" train posttrain --config examples/megatron/llama3.2_1B-grpo.yaml "${COMMON[@]}" \
    --set pretrained_checkpoint="$OUT/sft" --set data_path="$OUT/data/grpo_prompts.jsonl" \
    --set train_iters="$GRPO_ITERS" --set lr="${GRPO_LR:-2.0e-6}" --set min_lr=2.0e-7 --set lr_warmup_iters=2 \
    --set lr_decay_iters="$GRPO_ITERS" --set save= --set log_interval=1 --set use_distributed_optimizer=false \
    --set tensorboard_dir="$OUT/grpo_tb" >"$OUT/grpo.log" 2>&1
  echo "grpo: rc=$? in $((SECONDS - t0)) s"
  grep -E "error|Error" "$OUT/grpo.log" | head -3
  python3 - "$OUT/grpo.log" <<'PY'
import re, statistics, sys
rows = []
for line in open(sys.argv[1]):
    if " iteration " not in line or "reward:" not in line:
        continue
    get = lambda k: float(re.search(re.escape(k) + r": ([0-9.E+-]+)", line).group(1))
    rows.append({k: get(k) for k in ["reward", "time/generation_s", "tokens_per_s/generation", "time/training_s",
                                     "tokens_per_s/training", "completions/mean_length", "elapsed time per iteration (ms)"]})
if not rows:
    sys.exit("grpo: no iteration lines")
late = rows[len(rows) // 2:]
med = lambda k: statistics.median(r[k] for r in late)
print(f"grpo 1B: step {med('elapsed time per iteration (ms)'):.0f} ms = rollouts {1e3 * med('time/generation_s'):.0f} ms "
      f"+ training {1e3 * med('time/training_s'):.0f} ms | rollout tokens/s {med('tokens_per_s/generation'):.0f} "
      f"(completion mean {med('completions/mean_length'):.1f} tokens) | training tokens/s {med('tokens_per_s/training'):.0f} "
      f"| reward first 5 {statistics.mean(r['reward'] for r in rows[:5]):.3f}, last 5 {statistics.mean(r['reward'] for r in rows[-5:]):.3f}")
PY
fi
if [[ " $STAGES " == *" peer "* ]]; then
  timeout 300 python3 "$PY/hf_generate_bench.py" "$OUT/hf" 128 48 32 >"$OUT/hf_generate.log" 2>&1
  echo "hf generate (B 128, prompt 48, 32 new): $(grep -h new_tokens_per_s "$OUT/hf_generate.log" | tr '\n' ' ')"
  if [[ -x $B/bench_generate ]]; then
    timeout 200 "$B/bench_generate" --shape 1b --device cuda --batch 128 --prompt-len 48 --new-tokens 32 \
      >"$OUT/bench_generate.log" 2>&1
    echo "primus bench_generate (same shape): $(grep -h '"bench"' "$OUT/bench_generate.log" | tail -1)"
  fi
fi
