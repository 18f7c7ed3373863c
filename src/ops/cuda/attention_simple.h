// Plain attention kernels: any head dims (Dqk, Dv <= 256, e.g. MLA's 192/128), fp32/bf16/fp16,
// causal or not, GQA. One warp per query row with an online softmax over the keys (forward) and
// a recompute-from-lse backward with fp32 atomics for dK/dV. Slow (no tensor cores) but simple:
// the fallback for shapes flash_attention.h does not cover, and a second opinion in tests.
// Layouts as flash_attention.h: q (B,T,Hq,Dqk), k (B,T,Hkv,Dqk), v (B,T,Hkv,Dv), out (B,T,Hq,Dv),
// lse (B,Hq,T) fp32; segments null or (B,T) int32 document ids, non-decreasing per row: a query
// sees only the keys of its own document (ops/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

constexpr int64_t kSimpleAttentionMaxHeadDim = 256;

void launch_attention_simple_forward(void* out, float* lse, const void* q, const void* k, const void* v, DType dt,
                                     int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv,
                                     float scale, bool causal, cudaStream_t stream,
                                     const int32_t* segments = nullptr);

size_t attention_simple_backward_workspace_bytes(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t Dqk,
                                                 int64_t Dv);
void launch_attention_simple_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                                      const void* v, const void* out, const float* lse, DType dt, int64_t B, int64_t T,
                                      int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv, float scale, bool causal,
                                      void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                      const int32_t* segments = nullptr);

}  // namespace primus::cuda
