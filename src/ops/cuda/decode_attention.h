// CUDA launchers of decode_attention (see decode_attention.h for the math and layouts).
// Compiled into primus_cuda; included only under PRIMUS_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::ops::cuda {

constexpr int64_t kDecodeAttentionMaxHeadDim = 256;

// k_cache/v_cache (B,Lmax,Hkv,D)[b, positions[b]] = k_new/v_new (B,Hkv,D)[b].
void launch_kv_append(void* k_cache, void* v_cache, const void* k_new, const void* v_new, const int32_t* positions,
                      DType dt, int64_t B, int64_t Lmax, int64_t Hkv, int64_t D, cudaStream_t stream);

// out (B,Hq,D) = softmax(scale * q K^T over keys 0..positions[b]) V, GQA; one warp per (b, h).
void launch_decode_attention(void* out, const void* q, const void* k_cache, const void* v_cache,
                             const int32_t* positions, DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv,
                             int64_t D, float scale, cudaStream_t stream);

}  // namespace primus::ops::cuda
