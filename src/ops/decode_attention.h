// Decode-time attention: one new query per sequence against that sequence's KV cache.
//
// For sequence b at position p = positions[b] (the new token's position), query head h
// and its kv head g = h / (Hq/Hkv):
//   K[b,p,g] = k_new[b,g],  V[b,p,g] = v_new[b,g]            (append to the cache)
//   s_j = scale * q[b,h] . K[b,j,g]                          j = 0..p
//   out[b,h] = sum_j softmax(s)_j V[b,j,g]
// which is row p of the causal attention of the full sequence: the training forward and
// this function agree position by position.
//
//   q, out          (B, Hq, D)
//   k_new, v_new    (B, Hkv, D)        the new token's key (after RoPE) and value
//   k_cache, v_cache (B, Lmax, Hkv, D) written at [b, positions[b]]
//   positions       int32 (B) on the context's device, 0 <= positions[b] < Lmax
// All float tensors share one dtype: fp32 on CPU; fp32/bf16/fp16 on CUDA (scores and the
// softmax in fp32 there).
#pragma once

#include "core/tensor.h"
#include "ops/ops.h"

namespace primus::ops {

void decode_attention(ops::Context& ctx, Tensor& out, const Tensor& q, const Tensor& k_new, const Tensor& v_new,
                      Tensor& k_cache, Tensor& v_cache, const Tensor& positions, float scale);

// The fp32 CPU loop behind decode_attention (positions on the host); also the reference
// the CUDA kernel is tested against.
void decode_attention_cpu(Tensor& out, const Tensor& q, const Tensor& k_new, const Tensor& v_new, Tensor& k_cache,
                          Tensor& v_cache, const int32_t* positions, float scale);

}  // namespace primus::ops
