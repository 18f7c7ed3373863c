// Merge of two attention results of the same queries over disjoint key sets (context
// parallel's ring attention): the math is Backend::attention_merge's (ops/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// acc_out (B,T,H,Dv) dt, acc_lse (B,H,T) fp32, updated in place with part_out (B,Tp,H,Dv) dt,
// part_lse (B,H,Tp) fp32 at rows t0 .. t0+Tp-1.
void launch_attention_merge(void* acc_out, float* acc_lse, const void* part_out, const float* part_lse, DType dt,
                            int64_t B, int64_t T, int64_t H, int64_t Dv, int64_t Tp, int64_t t0, cudaStream_t stream);

}  // namespace primus::cuda
