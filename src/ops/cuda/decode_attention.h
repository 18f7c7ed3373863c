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

// out (B,Hq,D) = softmax(scale * q K^T over keys 0..positions[b]) V, GQA. Head dims that
// 16-byte vectors tile over 2..32 lanes (bf16/fp16: 16, 32, 64, 128, 256; fp32: 8..128) run
// the GQA split-K kernel (each CTA reads a kv head's keys once for all its query heads; key
// ranges split over CTAs when batch x kv heads is small, merged by a second kernel, which needs
// decode_attention_workspace_bytes() of device workspace); other shapes, or a missing
// workspace, run one warp per (b, h). Scores and softmax in fp32.
void launch_decode_attention(void* out, const void* q, const void* k_cache, const void* v_cache,
                             const int32_t* positions, DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv,
                             int64_t D, float scale, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Bytes of workspace launch_decode_attention wants for this shape (0: none; the split count
// depends on the current device's SM count, B, Lmax and the kv heads only).
size_t decode_attention_workspace_bytes(DType dt, int64_t B, int64_t Lmax, int64_t Hq, int64_t Hkv, int64_t D);

}  // namespace primus::ops::cuda
