// Rotary position embedding (rotate-half convention of Megatron and HF Llama) and the fused
// QKV split + RoPE used after the fused QKV projection.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// out (B,T,H,D) = rope(x (B,T,H,D)); cos, sin (T, R/2) fp32, R <= D rotary dims.
// inverse = true applies the transpose (the backward): sin -> -sin. out may alias x.
void launch_rope(void* out, const void* x, DType dt, const float* cos, const float* sin, int64_t B, int64_t T,
                 int64_t H, int64_t D, int64_t R, bool inverse, cudaStream_t stream);

// q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,D) from qkv (B*T, (Hq+2*Hkv)*D) = [q heads | k heads | v heads];
// rope on q and k.
void launch_qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, DType dt, const float* cos,
                                   const float* sin, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                   int64_t R, cudaStream_t stream);
// dqkv (B*T, (Hq+2*Hkv)*D) = [rope^T(dq) | rope^T(dk) | dv].
void launch_qkv_split_rope_backward(void* dqkv, const void* dq, const void* dk, const void* dv, DType dt,
                                    const float* cos, const float* sin, int64_t B, int64_t T, int64_t Hq,
                                    int64_t Hkv, int64_t D, int64_t R, cudaStream_t stream);

}  // namespace primus::cuda
