// Cross-entropy over a vocabulary split across tensor-parallel ranks (the math is stated with
// Backend::cross_entropy_shard_stats in ops/backend.h): pass 1 reduces each row of this rank's
// logit slice to (max, sum of exp(z - max), target logit); the caller all-gathers those; pass 2
// combines the ranks' triples into the row's logsumexp, writes the losses and, for training,
// overwrites the slice with its gradient. One block per row, fp32 accumulation over
// low-precision logits (like cross_entropy.h), no fp32 copy of the logits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// stats (3,N) fp32, row-major: stats[0,i] = max_j z[i,j], stats[1,i] = sum_j exp(z[i,j] - stats[0,i]),
// stats[2,i] = z[i,targets[i]] when 0 <= targets[i] < Vs, else 0. logits (N,Vs) of dtype dt;
// targets int32 (N) local to this slice (negative: the label lies on another rank or is ignored).
// A target >= Vs cannot be reported from the device; it is treated like a negative one (the
// host-side caller, parallel/tensor_parallel.cpp, only produces targets in [-1, Vs)).
void launch_cross_entropy_shard_stats(float* stats, const void* logits, DType dt, const int32_t* targets,
                                      int64_t N, int64_t Vs, cudaStream_t stream);

// gathered (P,3,N) fp32: the P ranks' stats. Per row: M = max_r m_r, S = sum_r s_r exp(m_r - M),
// lse = M + log S, losses[i] = lse - sum_r zt_r (finite also for rows whose label is ignored on
// every rank: then it is lse). When logits (N,Vs) is non-null it is overwritten in place with
//   dz[i,j] = dloss[i] * (exp(z[i,j] - lse) - [j == targets[i]])
// in its own dtype (dloss (N) fp32 must then be non-null).
void launch_cross_entropy_shard_finish(float* losses, void* logits, DType dt, const float* gathered, int64_t P,
                                       const int32_t* targets, const float* dloss, int64_t N, int64_t Vs,
                                       cudaStream_t stream);

}  // namespace primus::cuda
