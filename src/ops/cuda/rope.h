// Rotary position embedding (rotate-half convention of Megatron and HF Llama) and the fused
// QKV split + RoPE used after the fused QKV projection.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// Tables: cos, sin (P, R/2) fp32; token n = b*T + t (flattened) uses row n % P, so P = T shares the
// rows over the batch and P = B*T gives every token its own row (ops/backend.h).

// out (B,T,H,D) = rope(x (B,T,H,D)), R <= D rotary dims.
// inverse = true applies the transpose (the backward): sin -> -sin. out may alias x.
void launch_rope(void* out, const void* x, DType dt, const float* cos, const float* sin, int64_t B, int64_t T,
                 int64_t H, int64_t D, int64_t R, int64_t P, bool inverse, cudaStream_t stream);

// q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,D) from qkv (B*T, (Hq+2*Hkv)*D) = [q heads | k heads | v heads];
// rope on q and k.
void launch_qkv_split_rope_forward(void* q, void* k, void* v, const void* qkv, DType dt, const float* cos,
                                   const float* sin, int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                                   int64_t R, int64_t P, cudaStream_t stream);
// dqkv (B*T, (Hq+2*Hkv)*D) = [rope^T(dq) | rope^T(dk) | dv].
void launch_qkv_split_rope_backward(void* dqkv, const void* dq, const void* dk, const void* dv, DType dt,
                                    const float* cos, const float* sin, int64_t B, int64_t T, int64_t Hq,
                                    int64_t Hkv, int64_t D, int64_t R, int64_t P, cudaStream_t stream);

// Multi-latent attention (ops/backend.h, mla_qkv_rope_*): rows = B*T, H heads, Dn + Dr query/key
// head dims (Dr rotary, cos/sin (P, Dr/2)), Dv value dims, kv_down row width Wd = L + Dr.
void launch_mla_qkv_rope_forward(void* q, void* k, void* v, const void* q_proj, const void* kv_up, const void* kv_down,
                                 DType dt, const float* cos, const float* sin, int64_t rows, int64_t P, int64_t H,
                                 int64_t Dn, int64_t Dr, int64_t Dv, int64_t Wd, cudaStream_t stream);
void launch_mla_qkv_rope_backward(void* dq_proj, void* dkv_up, void* dk_pe, const void* dq, const void* dk,
                                  const void* dv, DType dt, const float* cos, const float* sin, int64_t rows,
                                  int64_t P, int64_t H, int64_t Dn, int64_t Dr, int64_t Dv, cudaStream_t stream);

// cos_out, sin_out (N, half) = rows positions[n] of cos_table, sin_table (P, half); a position
// outside [0, P) gives a row of NaN (no host round trip to check it).
void launch_rope_gather_tables(float* cos_out, float* sin_out, const float* cos_table, const float* sin_table,
                               const int32_t* positions, int64_t N, int64_t P, int64_t half, cudaStream_t stream);

}  // namespace primus::cuda
