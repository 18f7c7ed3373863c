#include "model/attention_core.h"

#include "parallel/context_parallel.h"

namespace primus {

void attention_core_forward(LayerEnv& env, Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k,
                            const Tensor& v, float scale) {
  if (!env.cp.active()) {
    ops::attention_forward(env.ctx, out, lse, q, k, v, scale, true, segments_of(env));
    return;
  }
  PRIMUS_CHECK(!env.segments.defined(), "context parallel attention does not take packed rows (segments)");
  parallel::ring_attention_forward(env.ctx, env.cp, env.arena, out, lse, q, k, v, scale);
}

void attention_core_backward(LayerEnv& env, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                             const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, float scale) {
  if (!env.cp.active()) {
    ops::attention_backward(env.ctx, dq, dk, dv, dout, q, k, v, out, lse, scale, true, segments_of(env));
    return;
  }
  parallel::ring_attention_backward(env.ctx, env.cp, env.arena, dq, dk, dv, dout, q, k, v, out, lse, scale);
}

}  // namespace primus
