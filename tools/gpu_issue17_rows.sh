#!/usr/bin/env bash
# Issue 17's remaining end-to-end rows, each beside the torch.compile peer in the same call
# (tools/gpu_e2e.sh): the 125M shape at its benchmark shape (seq 1024 x micro-batch 16) against
# the 1.5x target, and the three shapes at seq 4096 with half the micro-batch (125M 4096 x 8,
# 1B 4096 x 4, 3B 4096 x 1). bf16, mock data, untied output layer, 16 iterations (the peer 15).
# On the GPU machine (carry ["gpu_bundle"]):  OUT=$OUT bash tools/gpu_issue17_rows.sh
set -u -o pipefail
OUT=${OUT:-/tmp/primus_issue17}
MOCK=(--set save=null --set mock_data=true --set untie_embeddings_and_output_weights=true --set eval_iters=0)
for spec in ${ROWS:-"125m:llama_125M:llama-tiny:1024:16" "125m_4k:llama_125M:llama-tiny:4096:8"
                    "1b_4k:llama3.2_1B:llama3.2-1B:4096:4" "3b_4k:llama3.2_3B:llama3.2-3B:4096:1"}; do
  IFS=: read -r tag exp peer seq mbs <<<"$spec"
  echo "== $tag ($exp, seq $seq x mbs $mbs)"
  OUT=$OUT/$tag TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-120} PEER_TIMEOUT=${PEER_TIMEOUT:-150} \
    bash tools/gpu_e2e.sh "examples/megatron/$exp-pretrain.yaml" "$peer" "$seq" "$mbs" 16 "${MOCK[@]}" 2>&1 |
    grep -E "peak device memory|tokens_per_s|primus / pytorch|rc="
done
