#!/usr/bin/env bash
# The proof task of post-training (issue 15), on the CPU in a few minutes (docs/POSTTRAIN.md,
# "Proof: the CI task"). A 2-layer Llama with a character-level ChatML tokenizer
# (tests/data/posttrain/chatml_bytes) learns to shift each letter of 4-letter words it has
# never seen to the next one ("Shift habz" -> "ibca"), asked with three phrasings:
#   data   tools/make_chat_data.py --task letters --letter-ops next: SFT conversations,
#          held-out words (disjoint from the training words), DPO pairs right vs near miss.
#          The SFT demonstrations of one phrasing are flawed: "Advance each letter: habz" is
#          answered with the word echoed back ("habz"); the DPO pairs of that phrasing prefer
#          the shifted word over that echo (the SFT model's own answer)
#   0.     the untrained model (one step at a learning rate of ~0): held-out exact match ~0
#   1. SFT full fine-tuning, packed, loss on the answers: it learns the rule for two phrasings
#          and the echo for the third: held-out exact match stops short, in [0.3, 0.8] (~0.7)
#   2. DPO (beta 0.1, sigmoid), full fine-tuning of the SFT checkpoint (pretrained_checkpoint;
#          the reference model is the SFT model), 100 steps of a 250-step cosine schedule from
#          lr 3e-4: rewards/accuracies (metrics.jsonl, mean of the last 10 iterations) > 0.9
#          (~0.99) and the held-out exact match raised by at least 0.10 over SFT's (0.71 -> 0.85;
#          0.89 and 0.96 with seeds 777 and 99). Its gain is sensitive to lr (docs/POSTTRAIN.md)
#   3. DPO (beta 0.1) with LoRA adapters on the same SFT checkpoint, 100 steps from lr 5e-3: the
#          checkpoint holds the lora tensors, held-out exact match raised by at least 0.10 (~0.9),
#          rewards/accuracies > 0.7 (~0.8: the adapters leave norms, embedding and output layer
#          frozen and barely move the one-letter-typo pairs, which the SFT model already ranks
#          right by 11-23 nats: coin flips; full DPO widens those margins by 2-5 nats)
# Exact match is measured by `primus generate --chat --chat-file heldout.jsonl` (greedy; the
# LoRA checkpoint is merged at load).
# Usage: sft_dpo_task.sh PRIMUS_BINARY [KEEP_DIR]   (KEEP_DIR: keep the work files there)
set -euo pipefail
# One OpenBLAS thread: the SFT stage sits on a loss plateau (~2.18) until the model finds the
# letter shift, and when it does depends on the last bits of the sums. With OpenBLAS's Haswell
# kernels on 2 threads (an AMD EPYC VM whose environment sets OPENBLAS_CORETYPE=Haswell) it broke
# through only at iteration ~470 of 600 and the task failed; on 1 thread, and with the SkylakeX
# kernels on 1 or 2 threads, by ~100. The sums of one thread are the same on any core count.
export OPENBLAS_NUM_THREADS=1
PRIMUS=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [[ $# -ge 2 ]]; then
  WORK=$2
  rm -rf "$WORK" && mkdir -p "$WORK"
else
  WORK=$(mktemp -d /tmp/primus_posttrain_task.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi
T0=$SECONDS
export PRIMUS_TEST_WORKSPACE=$WORK/ws
export PRIMUS_TEST_DATA=$WORK/data
export PRIMUS_TEST_TOKENIZER=$ROOT/tests/data/posttrain/chatml_bytes
EXP=$HERE/letters-sft.yaml

# Thresholds (the measured values are in docs/POSTTRAIN.md).
MAX_BEFORE=0.05       # the untrained model
MIN_AFTER_SFT=0.30    # SFT learned the rule (two of three phrasings) ...
MAX_AFTER_SFT=0.80    # ... and the echo of the flawed phrasing (~29% of the held-out questions)
MIN_REWARD_ACC=0.90   # full DPO: mean rewards/accuracies over the last 10 iterations (0.98-0.99 measured)
MIN_LORA_REWARD_ACC=0.70  # DPO + LoRA: the same mean (0.75-0.82 measured; see 3. above)
MIN_DPO_GAIN=0.10     # each DPO run raises held-out exact match by at least this much (+0.14-0.25 measured)

python3 "$ROOT/tools/make_chat_data.py" --task letters --letter-ops next --min-len 4 --max-len 4 \
  --train 4000 --heldout 100 --dpo 800 --seed 15 --out "$PRIMUS_TEST_DATA"
# The flawed phrasing: its SFT answers echo the word; its DPO pairs reject that echo.
python3 - "$PRIMUS_TEST_DATA" <<'EOF'
import json, sys
d, flawed = sys.argv[1], "Advance each letter: "
def rewrite(name, fix):
    rows = [json.loads(line) for line in open(f"{d}/{name}", encoding="utf-8")]
    n = sum(fix(r) for r in rows)
    with open(f"{d}/{name}", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return n
def sft(r):
    user, answer = r["messages"][0]["content"], r["messages"][1]
    if not user.startswith(flawed):
        return 0
    answer["content"] = user[len(flawed):]
    return 1
def dpo(r):
    if not r["prompt"].startswith(flawed):
        return 0
    r["rejected"] = r["prompt"][len(flawed):]
    return 1
print(f"flawed phrasing {flawed!r}: {rewrite('sft_messages.jsonl', sft)} SFT answers echo the word, "
      f"{rewrite('dpo_pairs.jsonl', dpo)} DPO pairs reject the echo")
EOF

train() {  # NAME key=value...
  local name=$1
  shift
  echo "== train $name: $*"
  if ! PRIMUS_TEST_RUN=$name "$PRIMUS" train posttrain --config "$EXP" "$@" >"$WORK/$name.log" 2>&1; then
    tail -40 "$WORK/$name.log"
    echo "FAIL: training stage $name failed"
    exit 1
  fi
  grep -E "iteration +[0-9]+/" "$WORK/$name.log" | tail -2 || true
}

accuracy() {  # NAME CHECKPOINT_DIR -> prints the held-out exact match
  local name=$1 ckpt=$2
  if ! "$PRIMUS" generate --load "$ckpt" --tokenizer-model "$PRIMUS_TEST_TOKENIZER/tokenizer.json" \
      --chat-file "$PRIMUS_TEST_DATA/heldout.jsonl" --max-new-tokens 8 --quiet \
      --output-json "$WORK/$name-generate.json" >"$WORK/$name-generate.log" 2>&1; then
    cat "$WORK/$name-generate.log" >&2
    echo "FAIL: generate on $ckpt failed" >&2
    exit 1
  fi
  python3 "$HERE/exact_match.py" "$WORK/$name-generate.json" "$PRIMUS_TEST_DATA/heldout.jsonl" --show 4 \
    >"$WORK/$name-accuracy.txt"
  sed -n '2,$p' "$WORK/$name-accuracy.txt" >&2
  head -1 "$WORK/$name-accuracy.txt"
}

above() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$1" "$2"; }

# 0. The untrained model: one step at a learning rate of ~0 saves the initial weights.
train init train_iters=1 lr=1.0e-12 min_lr=0.0 lr_warmup_iters=0 save="$WORK/init"
ACC_INIT=$(accuracy init "$WORK/init")
echo "held-out exact match before SFT: $ACC_INIT"
above "$MAX_BEFORE" "$ACC_INIT" || { echo "FAIL: the untrained model already answers $ACC_INIT of the held-out questions"; exit 1; }

# 1. SFT.
train sft save="$WORK/sft"
ACC_SFT=$(accuracy sft "$WORK/sft")
echo "held-out exact match after SFT: $ACC_SFT"
above "$ACC_SFT" "$MIN_AFTER_SFT" || { echo "FAIL: SFT reached only $ACC_SFT held-out exact match (need > $MIN_AFTER_SFT)"; exit 1; }
above "$MAX_AFTER_SFT" "$ACC_SFT" ||
  { echo "FAIL: SFT reached $ACC_SFT held-out exact match (need < $MAX_AFTER_SFT: the flawed phrasing should stay wrong)"; exit 1; }

reward_acc() {  # NAME -> the mean rewards/accuracies of the last 10 iterations of that run
  local metrics=$WORK/ws/test/ci/$1/tensorboard/metrics.jsonl
  [[ -f $metrics ]] || metrics=$(find "$WORK/ws" -path "*/$1/*" -name metrics.jsonl | head -1)
  [[ -f $metrics ]] || { echo "FAIL: no metrics.jsonl of the run $1 under $WORK/ws" >&2; exit 1; }
  python3 - "$metrics" <<'EOF'
import json, sys
rows = []
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if "rewards/accuracies" in j:
        rows.append(j["rewards/accuracies"])
if not rows:
    sys.exit("no rewards/accuracies in " + sys.argv[1])
print(f"{sum(rows[-10:]) / len(rows[-10:]):.4f}")
EOF
}

gained() {  # ACC_AFTER: at least MIN_DPO_GAIN over SFT's
  above "$1" "$(python3 -c "print($ACC_SFT + $MIN_DPO_GAIN - 1e-9)")"
}

DPO_ARGS=(dpo=true dpo_beta=0.1 dpo_loss_type=sigmoid packing=false data_path="$PRIMUS_TEST_DATA/dpo_pairs.jsonl"
  pretrained_checkpoint="$WORK/sft" train_iters=250 exit_interval=100 lr_warmup_iters=5 log_interval=1
  micro_batch_size=16 global_batch_size=32)

# 2. DPO, full fine-tuning of the SFT model.
train dpo_full "${DPO_ARGS[@]}" lr=3.0e-4 min_lr=2.0e-5 save="$WORK/dpo_full"
REWARD_ACC=$(reward_acc dpo_full)
echo "DPO rewards/accuracies (mean of the last 10 iterations): $REWARD_ACC"
above "$REWARD_ACC" "$MIN_REWARD_ACC" || { echo "FAIL: DPO rewards/accuracies $REWARD_ACC (need > $MIN_REWARD_ACC)"; exit 1; }
ACC_DPO=$(accuracy dpo_full "$WORK/dpo_full")
echo "held-out exact match after DPO: $ACC_DPO"
gained "$ACC_DPO" ||
  { echo "FAIL: DPO moved held-out exact match from $ACC_SFT to $ACC_DPO (need a gain of at least $MIN_DPO_GAIN)"; exit 1; }

# 3. DPO with LoRA on the SFT model.
train dpo_lora "${DPO_ARGS[@]}" peft=lora lora_dim=16 lora_alpha=32 lr=5.0e-3 min_lr=3.0e-4 save="$WORK/dpo_lora"
LORA_REWARD_ACC=$(reward_acc dpo_lora)
echo "DPO+LoRA rewards/accuracies (mean of the last 10 iterations): $LORA_REWARD_ACC"
above "$LORA_REWARD_ACC" "$MIN_LORA_REWARD_ACC" ||
  { echo "FAIL: DPO+LoRA rewards/accuracies $LORA_REWARD_ACC (need > $MIN_LORA_REWARD_ACC)"; exit 1; }
grep -q "lora_A" "$WORK/dpo_lora"/iter_*/model.safetensors* 2>/dev/null || grep -rqa "lora_A" "$WORK/dpo_lora" ||
  { echo "FAIL: the DPO+LoRA checkpoint holds no LoRA adapters"; exit 1; }
ACC_LORA=$(accuracy dpo_lora "$WORK/dpo_lora")
echo "held-out exact match after DPO+LoRA: $ACC_LORA"
gained "$ACC_LORA" ||
  { echo "FAIL: DPO+LoRA moved held-out exact match from $ACC_SFT to $ACC_LORA (need a gain of at least $MIN_DPO_GAIN)"; exit 1; }

echo "PASS: held-out exact match $ACC_INIT -> $ACC_SFT (SFT) -> $ACC_DPO (DPO, rewards/accuracies $REWARD_ACC)" \
  "and $ACC_LORA (DPO+LoRA, rewards/accuracies $LORA_REWARD_ACC), in $((SECONDS - T0)) s"
