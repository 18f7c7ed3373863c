#include "model/llama_layer.h"

namespace primus {

namespace {

// Allocates the activations of one layer: the always-kept ones, and/or the attention-core
// and SwiGLU outputs that Selective recomputes.
void alloc_main(Arena& A, const LlamaDims& d, DType dt, LlamaLayerActivations& a) {
  const int64_t N = d.N(), R = d.residual_rows();
  a.h1 = A.alloc({R, d.C}, dt);
  a.rstd1 = A.alloc({R}, DType::F32);
  a.q = A.alloc({d.B, d.T, d.Hq, d.D}, dt);
  a.k = A.alloc({d.B, d.T, d.Hkv, d.D}, dt);
  a.v = A.alloc({d.B, d.T, d.Hkv, d.D}, dt);
  a.x_mid = A.alloc({R, d.C}, dt);
  a.h2 = A.alloc({R, d.C}, dt);
  a.rstd2 = A.alloc({R}, DType::F32);
  a.gate_up = A.alloc({N, 2 * d.F}, dt);
}
void alloc_core(Arena& A, const LlamaDims& d, DType dt, LlamaLayerActivations& a) {
  a.attn = A.alloc({d.B, d.T, d.Hq, d.D}, dt);
  a.lse = A.alloc({d.B, d.Hq, d.T}, DType::F32);
  a.act = A.alloc({d.N(), d.F}, dt);
}

// y (R,C) = x_full (N, in) @ w^T + residual (R,C) for a row-parallel w: partial sums of this
// rank's input columns, reduced over tp into the residual rows (Megatron's RowParallelLinear),
// then the residual connection. On one tp rank the add happens inside the GEMM.
void row_parallel_linear_forward_add(LlamaLayerEnv& env, Tensor& y, const Tensor& x_full, const Tensor& w,
                                     const Tensor& residual) {
  if (!env.tp.active()) return ops::linear_forward_add(env.ctx, y, x_full, w, residual);
  const Arena::Mark m = env.arena.mark();
  Tensor partial = parallel::tp_partial_buffer(env.tp, y, env.arena);
  ops::linear_forward(env.ctx, partial, x_full, w);
  parallel::exit_tp_region(env.tp, y, partial);
  env.arena.release(m);
  ops::add(env.ctx, y, y, residual);
}

// The backward of a column-parallel linear whose input is the residual-rows tensor x:
// dw += dy^T @ x_full, dx (R,C) = the tp-reduced dy @ w (Megatron's ColumnParallelLinear).
// Under sequence parallel x_full is all-gathered again here rather than kept from forward.
void column_parallel_linear_backward(LlamaLayerEnv& env, Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                                     const Tensor& w) {
  const Arena::Mark m = env.arena.mark();
  const Tensor x_full = parallel::enter_tp_region(env.tp, x, env.arena);
  Tensor dx_full = parallel::tp_partial_buffer(env.tp, dx, env.arena);
  ops::linear_backward(env.ctx, &dx_full, dw, dy, x_full, w, !env.overwrite_linear_grads);
  parallel::enter_tp_region_backward(env.tp, dx, dx_full);
  env.arena.release(m);
}

}  // namespace

void LlamaLayer::forward(LlamaLayerEnv& env, Tensor x, Tensor& x_out, LlamaLayerActivations& a,
                         Recompute keep) const {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const LlamaDims& d = env.dims;
  const DType dt = x.dtype();
  const int64_t N = d.N();
  a = LlamaLayerActivations{};
  a.x = x;
  Arena::Mark scratch{};
  if (keep == Recompute::Full) {  // everything is scratch
    scratch = A.mark();
    alloc_main(A, d, dt, a);
    alloc_core(A, d, dt, a);
  } else {
    alloc_main(A, d, dt, a);
    if (keep == Recompute::None) alloc_core(A, d, dt, a);
    scratch = A.mark();
    if (keep == Recompute::Selective) alloc_core(A, d, dt, a);
  }

  // Attention block.
  ops::rmsnorm_forward(ctx, a.h1, a.rstd1, x, p_.input_norm->value, env.norm_eps);
  {
    const Arena::Mark m = A.mark();
    const Tensor h1 = parallel::enter_tp_region(env.tp, a.h1, A);  // (N,C)
    Tensor qkv = A.alloc({N, d.qkv_width()}, dt);
    ops::linear_forward(ctx, qkv, h1, p_.qkv->value);
    ops::qkv_split_rope_forward(ctx, a.q, a.k, a.v, qkv, env.rope_cos, env.rope_sin);
    A.release(m);
  }
  ops::attention_forward(ctx, a.attn, a.lse, a.q, a.k, a.v, env.attn_scale, true);
  row_parallel_linear_forward_add(env, a.x_mid, a.attn.view({N, d.Hq * d.D}), p_.proj->value, x);

  // MLP block.
  ops::rmsnorm_forward(ctx, a.h2, a.rstd2, a.x_mid, p_.mlp_norm->value, env.norm_eps);
  {
    const Arena::Mark m = A.mark();
    const Tensor h2 = parallel::enter_tp_region(env.tp, a.h2, A);  // (N,C)
    ops::linear_forward(ctx, a.gate_up, h2, p_.fc1->value);
    A.release(m);
  }
  ops::swiglu_forward(ctx, a.act, a.gate_up);
  row_parallel_linear_forward_add(env, x_out, a.act, p_.fc2->value, a.x_mid);

  A.release(scratch);
  if (keep == Recompute::Full) {
    a = LlamaLayerActivations{};
    a.x = x;
  } else if (keep == Recompute::Selective) {
    a.attn = a.lse = a.act = Tensor();
  }
}

void LlamaLayer::backward(LlamaLayerEnv& env, LlamaLayerActivations& a, Tensor& dres, Recompute kept) const {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const LlamaDims& d = env.dims;
  const int64_t N = d.N(), R = d.residual_rows();
  const Arena::Mark start = A.mark();

  if (kept == Recompute::Full) {  // re-run the layer keeping everything, then backward as usual
    Tensor x_out = A.alloc({R, d.C}, a.x.dtype());
    const Tensor x = a.x;
    forward(env, x, x_out, a, Recompute::None);
    backward(env, a, dres, Recompute::None);
    A.release(start);
    a = LlamaLayerActivations{};
    a.x = x;
    return;
  }
  const DType dt = a.x.dtype();
  if (kept == Recompute::Selective) {
    alloc_core(A, d, dt, a);
    ops::attention_forward(ctx, a.attn, a.lse, a.q, a.k, a.v, env.attn_scale, true);
    ops::swiglu_forward(ctx, a.act, a.gate_up);
  }

  Tensor dh = A.alloc({R, d.C}, dt);  // d h2, later d h1
  Arena::Mark m = A.mark();
  {  // MLP block: dres = d x_out = d (mlp output); the residual passes it to x_mid as is.
    const Tensor dout = parallel::exit_tp_region_backward(env.tp, dres, A);  // (N,C)
    Tensor d_act = A.alloc({N, d.F}, dt);
    Tensor d_gate_up = A.alloc({N, 2 * d.F}, dt);
    ops::linear_backward(ctx, &d_act, p_.fc2->grad, dout, a.act, p_.fc2->value, !env.overwrite_linear_grads);
    ops::swiglu_backward(ctx, d_gate_up, d_act, a.gate_up);
    column_parallel_linear_backward(env, dh, p_.fc1->grad, d_gate_up, a.h2, p_.fc1->value);
    A.release(m);
  }
  ops::rmsnorm_backward(ctx, dres, p_.mlp_norm->grad, dh, a.x_mid, p_.mlp_norm->value, a.rstd2);  // dres = d x_mid
  {  // attention block
    const Tensor dout = parallel::exit_tp_region_backward(env.tp, dres, A);  // (N,C)
    Tensor d_attn = A.alloc({d.B, d.T, d.Hq, d.D}, dt);
    Tensor d_attn2 = d_attn.view({N, d.Hq * d.D});
    ops::linear_backward(ctx, &d_attn2, p_.proj->grad, dout, a.attn.view({N, d.Hq * d.D}), p_.proj->value,
                         !env.overwrite_linear_grads);
    Tensor dq = A.alloc(a.q.shape(), dt), dk = A.alloc(a.k.shape(), dt), dv = A.alloc(a.v.shape(), dt);
    ops::attention_backward(ctx, dq, dk, dv, d_attn, a.q, a.k, a.v, a.attn, a.lse, env.attn_scale, true);
    Tensor dqkv = A.alloc({N, d.qkv_width()}, dt);
    ops::qkv_split_rope_backward(ctx, dqkv, dq, dk, dv, env.rope_cos, env.rope_sin);
    column_parallel_linear_backward(env, dh, p_.qkv->grad, dqkv, a.h1, p_.qkv->value);
    A.release(m);
  }
  ops::rmsnorm_backward(ctx, dres, p_.input_norm->grad, dh, a.x, p_.input_norm->value, a.rstd1);  // dres = d x
  A.release(start);
  if (kept == Recompute::Selective) a.attn = a.lse = a.act = Tensor();
}

}  // namespace primus
