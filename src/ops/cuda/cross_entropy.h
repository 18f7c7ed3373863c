// Cross-entropy over the vocabulary, one block per row: an online softmax (running max and
// sum) in fp32 over the low-precision logits, never an fp32 copy of the logits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// losses (N) fp32 = logsumexp(logits[i]) - logits[i, targets[i]]; logits (N,V); targets int32 (N),
// negative = ignored (loss 0).
void launch_cross_entropy_forward(float* losses, const void* logits, DType dt, const int32_t* targets, int64_t N,
                                  int64_t V, cudaStream_t stream);
// Same losses, and logits (N,V) overwritten in place with dloss[i] * (softmax(logits[i]) - onehot(targets[i]))
// (zeros for ignored rows); dloss (N) fp32.
void launch_cross_entropy_fused(float* losses, void* logits, DType dt, const int32_t* targets, const float* dloss,
                                int64_t N, int64_t V, cudaStream_t stream);

}  // namespace primus::cuda
