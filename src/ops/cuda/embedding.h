// Embedding lookup and its deterministic backward (sort by token id, then sum each id's rows
// in token order: no atomics, bit-identical results run to run).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// out (N,C) = table[ids] ; ids int32 (N) in [0, V), table (V,C); out and table any float dtype.
void launch_embedding_forward(void* out, DType out_dt, const int32_t* ids, const void* table, DType table_dt,
                              int64_t N, int64_t C, cudaStream_t stream);

size_t embedding_backward_workspace_bytes(int64_t N, int64_t V);
// dtable (V,C) fp32 += sum over tokens n with ids[n] == v of dout (N,C)[n]; negative ids skipped.
void launch_embedding_backward(float* dtable, const void* dout, DType dout_dt, const int32_t* ids, int64_t N,
                               int64_t C, int64_t V, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream);

}  // namespace primus::cuda
