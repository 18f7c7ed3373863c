// The attention core of a training forward / backward, shared by every attention block (GQA,
// MLA): causal softmax(q k^T * scale) v over the block's (B, T) rows, with
//   packed rows    env.segments defined: attention stays inside each document
//                  (Megatron's reset_attention_mask; ops/backend.h's segments mask)
//   context par.   env.cp active: the rows hold this cp rank's two chunks of each sequence and
//                  the keys of the whole sequence come round a ring (parallel/context_parallel.h)
//                  (packed rows are refused with it where the decoder takes them)
// q (B,T,H,Dq), k (B,T,Hkv,Dq), v (B,T,Hkv,Dv), out (B,T,H,Dv), lse (B,H,T) fp32; the backward
// writes dq, dk, dv (not accumulated) from the forward's final out and lse.
#pragma once

#include "model/block.h"

namespace primus {

void attention_core_forward(LayerEnv& env, Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, float scale);
void attention_core_backward(LayerEnv& env, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                             const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, float scale);

}  // namespace primus
