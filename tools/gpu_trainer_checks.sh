#!/usr/bin/env bash
# On the GPU machine, in one device call: the trainer-level checks that need CUDA, PyTorch,
# transformers or tensorboard (none of which this project's CI machine has):
#   1. CPU fp32 vs CUDA bf16 loss curves, 200 iterations on the Brown corpus (gpu_train_check.sh)
#   2. GPU tests of generation and cuDNN attention
#   3. a checkpoint trained by `primus train` on the GPU, exported with `primus convert` and
#      compared with HF transformers (logits and greedy ids), and an HF model imported
#      (tools/hf_parity.py)
#   4. our TensorBoard event files read back by the real tensorboard package
# Usage (repo root on the GPU machine, bundle carried): bash tools/gpu_trainer_checks.sh
set -u -o pipefail
ROOT=$(pwd)
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_trainer_checks}
mkdir -p "$OUT"
(OUT=$OUT timeout 540 bash tools/gpu_train_check.sh 200 >"$OUT/train_check.txt" 2>&1; touch "$OUT/train_check.done") &

timeout 150 "$B/primus_gpu_tests" --gtest_filter='GenerateCuda*:CudnnAttention*' >"$OUT/gpu_tests.txt" 2>&1
echo "gpu tests (generate, cudnn): $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests.txt" | tr '\n' ' ')"

timeout 120 "$B/primus" train --config examples/megatron/llama_tiny-pretrain.yaml --set mock_data=true \
  --set num_layers=2 --set hidden_size=128 --set ffn_hidden_size=256 --set num_attention_heads=4 \
  --set vocab_size=1024 --set make_vocab_size_divisible_by=128 --set train_iters=5 --set lr_warmup_iters=1 \
  --set lr_decay_iters=5 --set eval_iters=0 --set device=cuda --set bf16=true --set save="$OUT/tiny_ckpt" \
  --set tensorboard_dir="$OUT/tb_tiny" >"$OUT/tiny_train.log" 2>&1
echo "tiny checkpoint on cuda: rc=$?"
timeout 200 python3 "$PY/hf_parity.py" --primus "$B/primus" --workdir /tmp/hfp --device both \
  --primus-checkpoint "$OUT/tiny_ckpt" >"$OUT/hf_parity.txt" 2>&1
echo "hf_parity: rc=$?"; tail -5 "$OUT/hf_parity.txt"

python3 - "$OUT/tb_tiny" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1]); ea.Reload()
tags = ea.Tags()["scalars"]
loss = [e.value for e in ea.Scalars("lm loss")] if "lm loss" in tags else []
print(f"tensorboard read {len(tags)} scalar tags from {sys.argv[1]}: {sorted(tags)[:8]} ...; lm loss {loss}")
sys.exit(0 if loss else 1)
PY
echo "tensorboard: rc=$?"
for _ in $(seq 1 110); do [[ -f "$OUT/train_check.done" ]] && break; sleep 5; done
tail -3 "$OUT/train_check.txt"
