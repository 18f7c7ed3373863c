#include "model/attention_gqa.h"

#include <cmath>

#include "model/attention_core.h"
#include "ops/decode_attention.h"
#include "parallel/layers.h"

namespace primus {

struct GqaAttention::Acts : BlockActivations {
  Tensor h, rstd;      // (R,C), (R) fp32
  Tensor q, k, v;      // (B,T,Hq,D), (B,T,Hkv,D) x2, after RoPE
  Tensor attn, lse;    // (B,T,Hq,D), (B,Hq,T) fp32   [not kept under Selective]
};

GqaAttention::GqaAttention(GqaParams p, int64_t heads, int64_t groups, int64_t head_dim, float softmax_scale)
    : p_(p), Hq_(heads), Hkv_(groups), D_(head_dim), scale_(softmax_scale) {}

std::vector<NamedTensor*> GqaAttention::params() const {
  std::vector<NamedTensor*> out{p_.norm, p_.qkv, p_.proj};
  parallel::append_lora_params({&p_.qkv_lora, &p_.proj_lora}, out);
  return out;
}

std::vector<NamedTensor*> GqaAttention::lora_partial_grads(const parallel::TensorParallel& tp) const {
  std::vector<NamedTensor*> out;
  parallel::lora_partial_grads(tp, p_.qkv_lora, true, out);
  parallel::lora_partial_grads(tp, p_.proj_lora, false, out);
  return out;
}

void GqaAttention::project_qkv(LayerEnv& env, const Tensor& x, Tensor& h, Tensor& rstd, Tensor& q, Tensor& k,
                               Tensor& v) const {
  ops::rmsnorm_forward(env.ctx, h, rstd, x, p_.norm->value, env.norm_eps);
  const Arena::Mark m = env.arena.mark();
  Tensor qkv = env.arena.alloc({q.size(0) * q.size(1), qkv_width()}, h.dtype());
  parallel::column_parallel_linear_forward(env.ctx, env.tp, env.arena, qkv, h, p_.qkv->value, fp8_of(env, p_.qkv));
  parallel::lora_column_forward(env.ctx, env.tp, env.arena, qkv, h, p_.qkv_lora, lora_dropout_of(env));
  ops::qkv_split_rope_forward(env.ctx, q, k, v, qkv, env.rope_cos, env.rope_sin);
  env.arena.release(m);
}

void GqaAttention::forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts_out,
                           Recompute keep) {
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const DType dt = x.dtype();
  auto acts = std::make_unique<Acts>();
  Acts& a = *acts;
  a.x = x;
  auto alloc_core = [&] {
    a.attn = A.alloc({d.B, d.T, Hq_, D_}, dt);
    a.lse = A.alloc({d.B, Hq_, d.T}, DType::F32);
  };
  const Arena::Mark start = A.mark();  // Full: everything is scratch
  a.h = A.alloc({d.residual_rows(), d.C}, dt);
  a.rstd = A.alloc({d.residual_rows()}, DType::F32);
  a.q = A.alloc({d.B, d.T, Hq_, D_}, dt);
  a.k = A.alloc({d.B, d.T, Hkv_, D_}, dt);
  a.v = A.alloc({d.B, d.T, Hkv_, D_}, dt);
  if (keep == Recompute::None) alloc_core();
  const Arena::Mark scratch = keep == Recompute::Full ? start : A.mark();
  if (keep != Recompute::None) alloc_core();

  project_qkv(env, x, a.h, a.rstd, a.q, a.k, a.v);
  attention_core_forward(env, a.attn, a.lse, a.q, a.k, a.v, scale_);
  parallel::row_parallel_linear_forward(env.ctx, env.tp, A, y, a.attn.view({d.N(), Hq_ * D_}), p_.proj->value, &x,
                                        fp8_of(env, p_.proj));
  parallel::lora_row_forward(env.ctx, env.tp, A, y, a.attn.view({d.N(), Hq_ * D_}), p_.proj_lora,
                             lora_dropout_of(env));

  finish_attention_forward(A, scratch, std::move(acts), x, keep, acts_out);
}

void GqaAttention::backward(LayerEnv& env, BlockActivations& base, Tensor& dres, Recompute kept) {
  Acts& a = static_cast<Acts&>(base);
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const int64_t N = d.N();
  const DType dt = a.x.dtype();
  const bool acc = !env.overwrite_linear_grads;
  const Arena::Mark start = A.mark();
  if (kept == Recompute::Selective) {
    a.attn = A.alloc({d.B, d.T, Hq_, D_}, dt);
    a.lse = A.alloc({d.B, Hq_, d.T}, DType::F32);
    attention_core_forward(env, a.attn, a.lse, a.q, a.k, a.v, scale_);
  }
  Tensor dh = A.alloc({d.residual_rows(), d.C}, dt);
  {
    Tensor d_attn = A.alloc({d.B, d.T, Hq_, D_}, dt);
    Tensor d_attn2 = d_attn.view({N, Hq_ * D_});
    parallel::row_parallel_linear_backward(ctx, env.tp, A, &d_attn2, p_.proj->grad, dres,
                                           a.attn.view({N, Hq_ * D_}), p_.proj->value, acc, fp8_of(env, p_.proj));
    parallel::lora_row_backward(ctx, env.tp, A, d_attn2, dres, a.attn.view({N, Hq_ * D_}), p_.proj_lora,
                                lora_dropout_of(env));
    Tensor dq = A.alloc(a.q.shape(), dt), dk = A.alloc(a.k.shape(), dt), dv = A.alloc(a.v.shape(), dt);
    attention_core_backward(env, dq, dk, dv, d_attn, a.q, a.k, a.v, a.attn, a.lse, scale_);
    Tensor dqkv = A.alloc({N, qkv_width()}, dt);
    ops::qkv_split_rope_backward(ctx, dqkv, dq, dk, dv, env.rope_cos, env.rope_sin);
    parallel::column_parallel_linear_backward(ctx, env.tp, A, dh, p_.qkv->grad, dqkv, a.h, p_.qkv->value, acc,
                                              fp8_of(env, p_.qkv));
    parallel::lora_column_backward(ctx, env.tp, A, dh, dqkv, a.h, p_.qkv_lora, lora_dropout_of(env));
  }
  Tensor dw_norm = norm_weight_grad(env, *p_.norm);
  ops::rmsnorm_backward(ctx, dres, dw_norm, dh, a.x, p_.norm->value, a.rstd);  // dres = d x
  A.release(start);
  if (kept == Recompute::Selective) a.attn = a.lse = Tensor();
}

void GqaAttention::prefill(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache) {
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const DType dt = x.dtype();
  const Arena::Mark m = A.mark();
  Tensor h = A.alloc({d.N(), d.C}, dt), rstd = A.alloc({d.N()}, DType::F32);
  Tensor q = A.alloc({d.B, d.T, Hq_, D_}, dt), k = A.alloc({d.B, d.T, Hkv_, D_}, dt),
         v = A.alloc({d.B, d.T, Hkv_, D_}, dt);
  Tensor attn = A.alloc({d.B, d.T, Hq_, D_}, dt), lse = A.alloc({d.B, Hq_, d.T}, DType::F32);
  project_qkv(env, x, h, rstd, q, k, v);
  ops::attention_forward(env.ctx, attn, lse, q, k, v, scale_, true);
  // Positions 0..T-1 of every sequence into the (B, max_len, Hkv, D) cache.
  const int64_t row = Hkv_ * D_, max_len = cache[0].size(1);
  const Tensor kr = k.view({d.N(), row}), vr = v.view({d.N(), row});
  Tensor kc = cache[0].view({d.B * max_len, row}), vc = cache[1].view({d.B * max_len, row});
  for (int64_t b = 0; b < d.B; ++b) {
    Tensor kd = kc.rows(b * max_len, b * max_len + d.T), vd = vc.rows(b * max_len, b * max_len + d.T);
    ops::copy_cast(env.ctx, kd, kr.rows(b * d.T, (b + 1) * d.T));
    ops::copy_cast(env.ctx, vd, vr.rows(b * d.T, (b + 1) * d.T));
  }
  parallel::row_parallel_linear_forward(env.ctx, env.tp, A, y, attn.view({d.N(), Hq_ * D_}), p_.proj->value, &x);
  parallel::lora_row_forward(env.ctx, env.tp, A, y, attn.view({d.N(), Hq_ * D_}), p_.proj_lora);
  A.release(m);
}

void GqaAttention::decode(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache,
                          const Tensor& positions) {
  Arena& A = env.arena;
  const int64_t B = x.size(0);
  const DType dt = x.dtype();
  const Arena::Mark m = A.mark();
  // The batch rides in the T dim of the RoPE ops: row b of env.rope_* rotates sequence b.
  Tensor h = A.alloc({B, x.size(1)}, dt), rstd = A.alloc({B}, DType::F32);
  Tensor q = A.alloc({1, B, Hq_, D_}, dt), k = A.alloc({1, B, Hkv_, D_}, dt), v = A.alloc({1, B, Hkv_, D_}, dt);
  Tensor attn = A.alloc({B, Hq_, D_}, dt);
  project_qkv(env, x, h, rstd, q, k, v);
  ops::decode_attention(env.ctx, attn, q.view({B, Hq_, D_}), k.view({B, Hkv_, D_}), v.view({B, Hkv_, D_}), cache[0],
                          cache[1], positions, scale_);
  parallel::row_parallel_linear_forward(env.ctx, env.tp, A, y, attn.view({B, Hq_ * D_}), p_.proj->value, &x);
  parallel::lora_row_forward(env.ctx, env.tp, A, y, attn.view({B, Hq_ * D_}), p_.proj_lora);
  A.release(m);
}

}  // namespace primus
