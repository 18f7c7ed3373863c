#!/usr/bin/env bash
# MoE on the lent GPU, in one call, after tools/gpu_bundle.sh (run from the repo root there):
#   1. the GPU tests (the MoE kernels against the CPU reference, and the rest);
#   2. `primus bench moe` at the two MoE peer shapes (grouped expert GEMMs vs one dense GEMM);
#   3. `primus train` vs the PyTorch MoE peer (../shared/anchors/pt_moe_bench.py: torch.compile +
#      torch._grouped_mm experts) at mixtral-mini and deepseek-moe-mini, seq 2048 x mbs 4
#      (tools/gpu_e2e.sh: same call, nvidia-smi peak memory for both sides).
# MOE_STAGES picks stages (default "tests bench e2e"), GPU_TESTS a gtest filter (default all),
# BENCH_SHAPES / E2E_PAIRS (experiment:peer_shape) narrow the shapes, TRAIN_TIMEOUT /
# PEER_TIMEOUT bound each e2e side;
# PEER_ARGS passes flags to the peer
# (e.g. "--moe-impl loop --compile 0" for HF's eager expert loop). Logs under $OUT.
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_moe}
mkdir -p "$OUT"
STAGES=${MOE_STAGES:-tests bench e2e}
if [[ " $STAGES " == *" tests "* ]]; then
  t0=$SECONDS
  timeout 150 "$B/primus_gpu_tests" --gtest_brief=1 --gtest_filter="${GPU_TESTS:-*}" >"$OUT/gpu_tests.log" 2>&1
  echo "gpu tests: rc=$? in $((SECONDS - t0)) s: $(grep -E "PASSED|FAILED" "$OUT/gpu_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED" "$OUT/gpu_tests.log" | head
fi
if [[ " $STAGES " == *" bench "* ]]; then
  for shape in ${BENCH_SHAPES:-mixtral-mini deepseek-moe-mini}; do
    timeout 120 "$B/primus" bench moe --model "$shape" --iters 20 >"$OUT/bench_moe_$shape.md" 2>&1
    echo "bench moe $shape: rc=$?"
    grep -E "^#|all \(one layer" "$OUT/bench_moe_$shape.md"
  done
fi
if [[ " $STAGES " == *" e2e "* ]]; then
  for pair in ${E2E_PAIRS:-mixtral_mini:mixtral-mini deepseek_moe_mini:deepseek-moe-mini}; do
    OUT=$OUT/${pair%%:*} PEER=pt_moe_bench.py TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-150} PEER_TIMEOUT=${PEER_TIMEOUT:-200} \
      bash "$ROOT/tools/gpu_e2e.sh" \
      "examples/megatron/${pair%%:*}-pretrain.yaml" "${pair##*:}" 2048 4 15 2>&1 | tail -6
  done
fi
