#!/usr/bin/env bash
# Post-training on the lent GPU, in one call, after tools/gpu_bundle.sh (run from the repo root
# there; the Llama 3.1 tokenizer files travel in gpu_bundle/tokenizer/, see below):
#   1. the GPU tests (packed attention and per-token RoPE against the CPU reference, and the rest);
#   2. SFT of the Llama-3.2-1B shape with packing at seq 4096 on synthetic chat data of mixed
#      lengths: real tokens/s next to pretraining (mock data) at the same shape;
#   3. LoRA (rank 16, all four targets) at the same shape: memory and tokens/s next to full SFT;
#   4. the PEFT export check (tools/check_peft_adapter.py: transformers + peft load the adapter).
# POST_STAGES picks stages (default "tests sft lora peft"); GPU_TESTS a gtest filter (default
# all); ITERS the iterations per training run (default 12); MBS the micro-batch (default 2).
# Logs under $OUT; the last lines are a summary table.
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_post}
mkdir -p "$OUT"
STAGES=${POST_STAGES:-tests sft lora peft}
ITERS=${ITERS:-12}
MBS=${MBS:-2}
TOK=${TOKENIZER_DIR:-$ROOT/gpu_bundle/tokenizer}
SUMMARY=()
median() {  # the median tokens/s of the second half of a log's iteration lines
  python3 -c 'import re,statistics,sys; v=[float(x) for x in re.findall(r"throughput \(tokens/s\): ([0-9.]+)", open(sys.argv[1]).read())]; print(round(statistics.median(v[len(v)//2:])) if v else "none")' "$1"
}
# Peak device memory as tools/gpu_e2e.sh measures it: nvidia-smi's used memory every 100 ms.
mem_start() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$1" 2>/dev/null & MEMPID=$!; }
mem_stop() { kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; sort -n "$1" | tail -1; }
IDLE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
if [[ " $STAGES " == *" tests "* ]]; then
  t0=$SECONDS
  timeout 200 "$B/primus_gpu_tests" --gtest_brief=1 --gtest_filter="${GPU_TESTS:-*}" >"$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: rc=$? in $((SECONDS - t0)) s: $(grep -E "PASSED|FAILED" "$OUT/gpu_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED" "$OUT/gpu_tests.log" | head
fi
# Synthetic chat data of realistic lengths: conversations of 1-4 turns whose user and assistant
# texts are 20-1500 words drawn from a fixed word list (seeded), so packing has work to do.
mkdir -p "$OUT/data"
python3 - "$OUT/data/chat_long.jsonl" <<'PY'
import json, random, sys
rng = random.Random(1234)
words = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
         "you were her she there been one all we their has would when if so no will more about up out who them what "
         "model data train token layer attention memory gradient answer question number value system user").split()
with open(sys.argv[1], "w") as f:
    for i in range(1500):
        msgs = []
        for t in range(rng.randint(1, 4)):
            n_user, n_asst = rng.randint(10, 300), rng.randint(20, 1200)
            msgs.append({"role": "user", "content": " ".join(rng.choice(words) for _ in range(n_user)) + "?"})
            msgs.append({"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(n_asst)) + "."})
        f.write(json.dumps({"messages": msgs}) + "\n")
PY
EXP=examples/megatron/llama3.2_1B-pretrain.yaml
COMMON=(--set bf16=true --set micro_batch_size="$MBS" --set global_batch_size="$MBS" --set seq_length=4096
        --set train_iters="$ITERS" --set log_interval=1 --set eval_iters=0 --set save= --set load=
        --set auto_continue_train=false --set log_num_zeros_in_grad=false)
SFT=(--set data_path="$OUT/data/chat_long.jsonl" --set split=100,0,0 --set packing=true
     --set tokenizer_type=HuggingFaceTokenizer --set tokenizer_model="$TOK/tokenizer.json"
     --set data_cache_path="$OUT/data/cache" --set pretrained_checkpoint= --set finetune=false)
sft_run() {  # name [--set ...]
  local name=$1
  shift
  mem_start "$OUT/mem_$name.txt"
  timeout 400 "$B/primus" train posttrain --config examples/megatron/llama3.2_1B-sft.yaml "${COMMON[@]}" "${SFT[@]}" "$@" \
    >"$OUT/$name.log" 2>&1
  local rc=$? peak
  peak=$(mem_stop "$OUT/mem_$name.txt")
  echo "$name: rc=$rc tokens/s $(median "$OUT/$name.log") | $(grep -m1 -o 'packing efficiency [0-9.]*%' "$OUT/$name.log") | peak $((peak - IDLE)) MiB"
  grep -m1 "LoRA:" "$OUT/$name.log" | cut -c1-300
  grep -E "error|Error" "$OUT/$name.log" | head -3
}
if [[ " $STAGES " == *" sft "* ]]; then
  mem_start "$OUT/mem_pretrain.txt"
  timeout 300 "$B/primus" train --config "$EXP" "${COMMON[@]}" --set mock_data=true >"$OUT/pretrain_4096.log" 2>&1
  rc=$?
  peak=$(mem_stop "$OUT/mem_pretrain.txt")
  echo "pretrain 1B seq 4096 x $MBS (mock data): rc=$rc tokens/s $(median "$OUT/pretrain_4096.log") | peak $((peak - IDLE)) MiB"
  sft_run sft_packed_4096
fi
if [[ " $STAGES " == *" lora "* ]]; then
  sft_run lora_packed_4096 --set peft=lora --set lora_dim=16 --set lora_alpha=32
fi
if [[ " $STAGES " == *" peft "* ]]; then
  timeout 200 python3 "$ROOT/tools/check_peft_adapter.py" --primus "$B/primus" --workdir "$OUT/peft" >"$OUT/peft.json" 2>"$OUT/peft.err"
  echo "peft check: rc=$? $(tail -1 "$OUT/peft.json")"
fi
