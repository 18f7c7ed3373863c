// CUDA launchers of the latent-cache MLA decode (ops/mla_decode.h has the math and layouts).
// Compiled into primus_cuda; included only under PRIMUS_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// q_lat (B,H,L) = W_uk[h]^T q[b,h,:Dn]; q (B,H,Dq), w (H*(Dn+Dv), L).
void launch_mla_absorb_query(void* q_lat, const void* q, const void* w, DType dt, int64_t B, int64_t H, int64_t Dq,
                             int64_t Dn, int64_t Dv, int64_t L, cudaStream_t stream);
// out (B,H,Dv) = W_uv[h] o_lat[b,h].
void launch_mla_absorb_output(void* out, const void* o_lat, const void* w, DType dt, int64_t B, int64_t H,
                              int64_t Dn, int64_t Dv, int64_t L, cudaStream_t stream);
// Appends c_new / pe_new at positions, then o_lat (B,H,L) over the cache (scores: (B,H,Lmax) fp32).
void launch_mla_decode_attention(void* o_lat, float* scores, const void* q_lat, const void* q, const void* c_new,
                                 const void* pe_new, void* cache_c, void* cache_pe, const int32_t* positions, DType dt,
                                 int64_t B, int64_t H, int64_t Dq, int64_t L, int64_t Dr, int64_t Lmax, float scale,
                                 cudaStream_t stream);

}  // namespace primus::cuda
