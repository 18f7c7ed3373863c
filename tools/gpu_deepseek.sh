#!/usr/bin/env bash
# DeepSeek on the lent GPU, in one call, after tools/gpu_bundle.sh (run from the repo root there):
#   1. the DeepSeek GPU tests (MLA kernels, a tiny DeepSeek step vs the CPU, latent-cache decode);
#   2. tools/hf_count_params.py: --dry-run parameter counts vs transformers' DeepSeek classes;
#   3. tools/hf_parity.py: every conversion round vs transformers (Llama, Mixtral, DeepSeek-V3/V2);
#   4. `primus train` of DeepSeek-V2-Lite cut to 4 layers (tokens/s, MFU over active parameters).
# DS_STAGES picks stages (default "tests count parity train"); logs under $OUT.
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_deepseek}
mkdir -p "$OUT"
STAGES=${DS_STAGES:-tests count parity train}
if [[ " $STAGES " == *" tests "* ]]; then
  timeout 120 "$B/primus_gpu_tests" --gtest_brief=1 \
    --gtest_filter="CudaRope.Mla*:CudaGradOverwrite.*:GenerateCuda.*" >"$OUT/ds_gpu_tests.log" 2>&1
  echo "deepseek gpu tests: rc=$? $(grep -E "PASSED|FAILED" "$OUT/ds_gpu_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" -A3 "$OUT/ds_gpu_tests.log" | head -20
fi
if [[ " $STAGES " == *" count "* ]]; then
  timeout 120 python3 tools/hf_count_params.py --primus "$B/primus" >"$OUT/count_params.jsonl" 2>&1
  echo "hf_count_params: rc=$?"
  cat "$OUT/count_params.jsonl" | tail -5
fi
if [[ " $STAGES " == *" parity "* ]]; then
  timeout 300 python3 tools/hf_parity.py --primus "$B/primus" --make-checkpoint "$B/generate_test_checkpoint" \
    --workdir /tmp/hfp --device "${PARITY_DEVICE:-both}" >"$OUT/hf_parity.json" 2>"$OUT/hf_parity.err"
  echo "hf_parity: rc=$?"
  python3 -c "
import json,sys
s=json.load(open('$OUT/hf_parity.json'))
for k,v in s.items():
    if isinstance(v,dict) and 'ok' in v: print(k, 'ok' if v['ok'] else 'FAIL', {d: {x: v[d].get(x) for x in ('logits_rel_err',)} for d in ('cpu','cuda') if d in v})
" 2>&1 | head -20
fi
if [[ " $STAGES " == *" train "* ]]; then
  timeout 240 "$B/primus" train --config examples/megatron/deepseek_v2_lite_4l-pretrain.yaml --set train_iters=15 \
    >"$OUT/deepseek_v2_lite_4l.log" 2>&1
  echo "deepseek_v2_lite 4 layers train: rc=$?"
  grep -E "kernels:|iteration +15/|error" "$OUT/deepseek_v2_lite_4l.log" | cut -c1-400 | tail -3
  nvidia-smi --query-gpu=memory.used --format=csv,noheader
fi
