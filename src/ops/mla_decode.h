// Decode-time multi-latent attention over the latent cache (DeepSeek-V2's "absorbed" form).
//
// The cache holds, per sequence and position, the normalised key/value latent c (L) and the
// rotated shared key k_pe (Dr): L + Dr values instead of 2 H Dq. With W_kvu's rows of head h
// split into W_uk[h] (Dn, L) and W_uv[h] (Dv, L), for the new token of sequence b at position p:
//   q_lat[b,h] = W_uk[h]^T q_nope[b,h]                                   (L)   mla_absorb_query
//   s_j        = scale * (q_lat[b,h] . c[b,j] + q_pe[b,h] . k_pe[b,j])  j = 0..p
//   o_lat[b,h] = sum_j softmax(s)_j c[b,j]                               (L)   mla_decode_attention
//   out[b,h]   = W_uv[h] o_lat[b,h]                                      (Dv)  mla_absorb_output
// which equals attention with k_h = [c W_uk[h]^T | k_pe], v_h = c W_uv[h]^T (the training
// forward's keys and values) position by position.
//
//   q        (B, H, Dn + Dr)  [q_nope | q_pe], q_pe after RoPE
//   w_kv_up  (H (Dn + Dv), L) linear_kv_up_proj.weight, per head [k rows | v rows]
//   q_lat, o_lat (B, H, L);  out (B, H, Dv)
//   c_new (B, L), pe_new (B, Dr): the new token's entries, written at [b, positions[b]] of
//   cache_c (B, Lmax, L) and cache_pe (B, Lmax, Dr) before attending
//   scores   (B, H, Lmax) fp32 scratch
//   positions int32 (B) on the context's device
// One dtype for the float tensors (fp32 on CPU; fp32/bf16/fp16 on CUDA, fp32 accumulation).
#pragma once

#include "core/tensor.h"
#include "ops/ops.h"

namespace primus::ops {

void mla_absorb_query(Context& ctx, Tensor& q_lat, const Tensor& q, const Tensor& w_kv_up, int64_t nope_dim);
void mla_absorb_output(Context& ctx, Tensor& out, const Tensor& o_lat, const Tensor& w_kv_up, int64_t nope_dim);
void mla_decode_attention(Context& ctx, Tensor& o_lat, Tensor& scores, const Tensor& q_lat, const Tensor& q,
                          const Tensor& c_new, const Tensor& pe_new, Tensor& cache_c, Tensor& cache_pe,
                          const Tensor& positions, float scale);

}  // namespace primus::ops
