#include "model/attention_mla.h"

#include "core/error.h"
#include "model/attention_core.h"
#include "ops/mla_decode.h"
#include "parallel/layers.h"

namespace primus {

// The latents are this rank's residual rows R (N, or N / tp under sequence parallel); q, k, v
// and the attention are every token's, for this rank's H heads.
struct MlaAttention::Acts : BlockActivations {
  Tensor h, rstd;                // (R, C), (R) fp32
  Tensor cq, cq_rstd, cqn;       // (R, Lq), (R), (R, Lq): Lq > 0 (cqn aliases cq without a q norm)
  Tensor kvd;                    // (R, L + Dr) = [c_kv | k_pe]
  Tensor ckv, ckv_rstd, ckvn;    // (R, L), (R), (R, L) (ckvn aliases ckv without a kv norm)
  Tensor q, k, v;                // (B, T, H, Dq) x2, (B, T, H, Dv)
  Tensor attn, lse;              // (B, T, H, Dv), (B, H, T) fp32   [not kept under Selective]
};

MlaAttention::MlaAttention(MlaParams p, MlaDims dims, float softmax_scale) : p_(p), d_(dims), scale_(softmax_scale) {
  PRIMUS_CHECK(p_.norm && p_.kv_down && p_.kv_up && p_.proj && (d_.q_lora > 0 ? p_.q_down && p_.q_up : p_.q != nullptr),
               "MlaAttention: a projection of the layer is missing");
}

std::vector<NamedTensor*> MlaAttention::params() const {
  std::vector<NamedTensor*> out{p_.norm};
  for (NamedTensor* t : {p_.q_down, p_.q_norm, p_.q_up, p_.q, p_.kv_down, p_.kv_norm, p_.kv_up, p_.proj})
    if (t) out.push_back(t);
  parallel::append_lora_params(
      {&p_.q_down_lora, &p_.q_up_lora, &p_.q_lora, &p_.kv_down_lora, &p_.kv_up_lora, &p_.proj_lora}, out);
  return out;
}

std::vector<NamedTensor*> MlaAttention::lora_partial_grads(const parallel::TensorParallel& tp) const {
  std::vector<NamedTensor*> out;
  parallel::lora_replicated_partial_grads(tp, p_.q_down_lora, out);
  parallel::lora_partial_grads(tp, p_.q_up_lora, true, out);
  parallel::lora_partial_grads(tp, p_.q_lora, true, out);
  parallel::lora_replicated_partial_grads(tp, p_.kv_down_lora, out);
  parallel::lora_partial_grads(tp, p_.kv_up_lora, true, out);
  parallel::lora_partial_grads(tp, p_.proj_lora, false, out);
  return out;
}

std::vector<NamedTensor*> MlaAttention::overwritten_grads() const {
  std::vector<NamedTensor*> out;
  for (NamedTensor* t : {p_.q_down, p_.q_up, p_.q, p_.kv_down, p_.kv_up, p_.proj})
    if (t) out.push_back(t);
  return out;
}

void MlaAttention::alloc_latents(Arena& A, int64_t rows, DType dt, Acts& a) const {
  a.h = A.alloc({rows, p_.norm->value.size(0)}, dt);
  a.rstd = A.alloc({rows}, DType::F32);
  if (d_.q_lora > 0) {
    a.cq = A.alloc({rows, d_.q_lora}, dt);
    if (p_.q_norm) {
      a.cq_rstd = A.alloc({rows}, DType::F32);
      a.cqn = A.alloc({rows, d_.q_lora}, dt);
    } else {
      a.cqn = a.cq;
    }
  }
  a.kvd = A.alloc({rows, d_.kv_lora + d_.rope}, dt);
  a.ckv = A.alloc({rows, d_.kv_lora}, dt);
  if (p_.kv_norm) {
    a.ckv_rstd = A.alloc({rows}, DType::F32);
    a.ckvn = A.alloc({rows, d_.kv_lora}, dt);
  } else {
    a.ckvn = a.ckv;
  }
}

void MlaAttention::project_latents(LayerEnv& env, const Tensor& x, Acts& a, Tensor& q_proj) const {
  ops::Context& ctx = env.ctx;
  const parallel::LoraDropoutSite drop = lora_dropout_of(env);
  ops::rmsnorm_forward(ctx, a.h, a.rstd, x, p_.norm->value, env.norm_eps);
  if (d_.q_lora > 0) {
    ops::linear_forward(ctx, a.cq, a.h, p_.q_down->value);
    parallel::lora_replicated_forward(ctx, env.tp, env.arena, a.cq, a.h, p_.q_down_lora, drop);
    if (p_.q_norm) ops::rmsnorm_forward(ctx, a.cqn, a.cq_rstd, a.cq, p_.q_norm->value, env.norm_eps);
    parallel::column_parallel_linear_forward(ctx, env.tp, env.arena, q_proj, a.cqn, p_.q_up->value,
                                             fp8_of(env, p_.q_up));
    parallel::lora_column_forward(ctx, env.tp, env.arena, q_proj, a.cqn, p_.q_up_lora, drop);
  } else {
    parallel::column_parallel_linear_forward(ctx, env.tp, env.arena, q_proj, a.h, p_.q->value, fp8_of(env, p_.q));
    parallel::lora_column_forward(ctx, env.tp, env.arena, q_proj, a.h, p_.q_lora, drop);
  }
  ops::linear_forward(ctx, a.kvd, a.h, p_.kv_down->value);
  parallel::lora_replicated_forward(ctx, env.tp, env.arena, a.kvd, a.h, p_.kv_down_lora, drop);
  ops::copy_columns(ctx, a.ckv, 0, a.kvd, 0, d_.kv_lora);
  if (p_.kv_norm) ops::rmsnorm_forward(ctx, a.ckvn, a.ckv_rstd, a.ckv, p_.kv_norm->value, env.norm_eps);
}

Tensor MlaAttention::rotated_k_pe(LayerEnv& env, const Acts& a, int64_t B, int64_t T) const {
  Tensor pe = env.arena.alloc({B * T, d_.rope}, a.kvd.dtype());
  ops::copy_columns(env.ctx, pe, 0, a.kvd, d_.kv_lora, d_.rope);
  Tensor pe4 = pe.view({B, T, 1, d_.rope});
  ops::rope_forward(env.ctx, pe4, pe4, env.rope_cos, env.rope_sin);
  return pe;
}

void MlaAttention::project(LayerEnv& env, const Tensor& x, Acts& a) const {
  Arena& A = env.arena;
  const int64_t N = env.dims.N(), H = d_.heads;
  const Arena::Mark m = A.mark();
  Tensor q_proj = A.alloc({N, H * d_.qk()}, x.dtype());
  project_latents(env, x, a, q_proj);
  Tensor kv_up = A.alloc({N, H * (d_.nope + d_.v)}, x.dtype());
  parallel::column_parallel_linear_forward(env.ctx, env.tp, A, kv_up, a.ckvn, p_.kv_up->value,
                                           fp8_of(env, p_.kv_up));
  parallel::lora_column_forward(env.ctx, env.tp, A, kv_up, a.ckvn, p_.kv_up_lora, lora_dropout_of(env));
  // The shared rotary key of every token (all-gathered under sequence parallel).
  const Tensor kvd_all = parallel::enter_tp_region(env.tp, a.kvd, A);
  ops::mla_qkv_rope_forward(env.ctx, a.q, a.k, a.v, q_proj, kv_up, kvd_all, env.rope_cos, env.rope_sin);
  A.release(m);
}

void MlaAttention::forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts_out,
                           Recompute keep) {
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const DType dt = x.dtype();
  const int64_t N = d.N(), H = d_.heads;
  auto acts = std::make_unique<Acts>();
  Acts& a = *acts;
  a.x = x;
  auto alloc_core = [&] {
    a.attn = A.alloc({d.B, d.T, H, d_.v}, dt);
    a.lse = A.alloc({d.B, H, d.T}, DType::F32);
  };
  const Arena::Mark start = A.mark();  // Full: everything is scratch
  alloc_latents(A, d.residual_rows(), dt, a);
  a.q = A.alloc({d.B, d.T, H, d_.qk()}, dt);
  a.k = A.alloc({d.B, d.T, H, d_.qk()}, dt);
  a.v = A.alloc({d.B, d.T, H, d_.v}, dt);
  if (keep == Recompute::None) alloc_core();
  const Arena::Mark scratch = keep == Recompute::Full ? start : A.mark();
  if (keep != Recompute::None) alloc_core();

  project(env, x, a);
  attention_core_forward(env, a.attn, a.lse, a.q, a.k, a.v, scale_);
  parallel::row_parallel_linear_forward(env.ctx, env.tp, A, y, a.attn.view({N, H * d_.v}), p_.proj->value, &x,
                                        fp8_of(env, p_.proj));
  parallel::lora_row_forward(env.ctx, env.tp, A, y, a.attn.view({N, H * d_.v}), p_.proj_lora, lora_dropout_of(env));

  finish_attention_forward(A, scratch, std::move(acts), x, keep, acts_out);
}

void MlaAttention::backward(LayerEnv& env, BlockActivations& base, Tensor& dres, Recompute kept) {
  Acts& a = static_cast<Acts&>(base);
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const int64_t N = d.N(), R = d.residual_rows(), H = d_.heads, L = d_.kv_lora;
  const DType dt = a.x.dtype();
  const bool acc = !env.overwrite_linear_grads;
  const parallel::LoraDropoutSite drop = lora_dropout_of(env);
  const Arena::Mark start = A.mark();
  if (kept == Recompute::Selective) {
    a.attn = A.alloc({d.B, d.T, H, d_.v}, dt);
    a.lse = A.alloc({d.B, H, d.T}, DType::F32);
    attention_core_forward(env, a.attn, a.lse, a.q, a.k, a.v, scale_);
  }
  // Everything from the up-projections down is per residual row (R); the replicated latent
  // weights then take their grads from this rank's rows (summed over tp with the norms under SP).
  Tensor dh = A.alloc({R, d.C}, dt);
  {
    // Output projection and attention.
    Tensor d_attn = A.alloc({d.B, d.T, H, d_.v}, dt);
    Tensor d_attn2 = d_attn.view({N, H * d_.v});
    parallel::row_parallel_linear_backward(ctx, env.tp, A, &d_attn2, p_.proj->grad, dres,
                                           a.attn.view({N, H * d_.v}), p_.proj->value, acc, fp8_of(env, p_.proj));
    parallel::lora_row_backward(ctx, env.tp, A, d_attn2, dres, a.attn.view({N, H * d_.v}), p_.proj_lora, drop);
    Tensor dq = A.alloc(a.q.shape(), dt), dk = A.alloc(a.k.shape(), dt), dv = A.alloc(a.v.shape(), dt);
    attention_core_backward(env, dq, dk, dv, d_attn, a.q, a.k, a.v, a.attn, a.lse, scale_);
    Tensor dq_proj = A.alloc({N, H * d_.qk()}, dt), dkv_up = A.alloc({N, H * (d_.nope + d_.v)}, dt);
    Tensor dk_pe_all = A.alloc({N, d_.rope}, dt);  // this rank's heads' share, every token
    ops::mla_qkv_rope_backward(ctx, dq_proj, dkv_up, dk_pe_all, dq, dk, dv, env.rope_cos, env.rope_sin);
    Tensor dk_pe = env.tp.sp() ? A.alloc({R, d_.rope}, dt) : dk_pe_all;
    parallel::enter_tp_region_backward(env.tp, dk_pe, dk_pe_all);  // summed over every rank's heads

    // Key/value path: dkv_d = [RMSNorm^T(dkv_up W_kvu) | dk_pe]; dh = dkv_d W_kvd.
    Tensor dkvd = A.alloc({R, L + d_.rope}, dt);
    Tensor dckvn = A.alloc({R, L}, dt);
    parallel::column_parallel_linear_backward(ctx, env.tp, A, dckvn, p_.kv_up->grad, dkv_up, a.ckvn, p_.kv_up->value,
                                              acc, fp8_of(env, p_.kv_up));
    parallel::lora_column_backward(ctx, env.tp, A, dckvn, dkv_up, a.ckvn, p_.kv_up_lora, drop);
    if (p_.kv_norm) {
      Tensor dckv = A.alloc({R, L}, dt);
      ops::fill(ctx, dckv, 0.f);  // on the stream, like the kernels around it
      Tensor dw_kv_norm = norm_weight_grad(env, *p_.kv_norm);  // scratch when frozen (LoRA)
      ops::rmsnorm_backward(ctx, dckv, dw_kv_norm, dckvn, a.ckv, p_.kv_norm->value, a.ckv_rstd);
      ops::copy_columns(ctx, dkvd, 0, dckv, 0, L);
    } else {
      ops::copy_columns(ctx, dkvd, 0, dckvn, 0, L);
    }
    ops::copy_columns(ctx, dkvd, L, dk_pe, 0, d_.rope);
    ops::linear_backward(ctx, &dh, p_.kv_down->grad, dkvd, a.h, p_.kv_down->value, acc);
    parallel::lora_replicated_backward(ctx, env.tp, A, dh, dkvd, a.h, p_.kv_down_lora, drop);

    // Query path: dh += dq_proj W_q, or through W_qu, the q norm and W_qd.
    if (d_.q_lora > 0) {
      Tensor dcqn = A.alloc({R, d_.q_lora}, dt);
      parallel::column_parallel_linear_backward(ctx, env.tp, A, dcqn, p_.q_up->grad, dq_proj, a.cqn, p_.q_up->value,
                                                acc, fp8_of(env, p_.q_up));
      parallel::lora_column_backward(ctx, env.tp, A, dcqn, dq_proj, a.cqn, p_.q_up_lora, drop);
      Tensor dcq = dcqn;
      if (p_.q_norm) {
        dcq = A.alloc({R, d_.q_lora}, dt);
        ops::fill(ctx, dcq, 0.f);
        Tensor dw_q_norm = norm_weight_grad(env, *p_.q_norm);
        ops::rmsnorm_backward(ctx, dcq, dw_q_norm, dcqn, a.cq, p_.q_norm->value, a.cq_rstd);
      }
      ops::linear_backward(ctx, nullptr, p_.q_down->grad, dcq, a.h, p_.q_down->value, acc);
      ops::matmul(ctx, dh, dcq, ops::Transpose::No, p_.q_down->value, ops::Transpose::No, 1.f, 1.f);
      parallel::lora_replicated_backward(ctx, env.tp, A, dh, dcq, a.h, p_.q_down_lora, drop);
    } else {
      Tensor dh_q = A.alloc({R, d.C}, dt);
      parallel::column_parallel_linear_backward(ctx, env.tp, A, dh_q, p_.q->grad, dq_proj, a.h, p_.q->value, acc,
                                                fp8_of(env, p_.q));
      parallel::lora_column_backward(ctx, env.tp, A, dh_q, dq_proj, a.h, p_.q_lora, drop);
      ops::add(ctx, dh, dh, dh_q);
    }
  }
  Tensor dw_norm = norm_weight_grad(env, *p_.norm);
  ops::rmsnorm_backward(ctx, dres, dw_norm, dh, a.x, p_.norm->value, a.rstd);  // dres = d x
  A.release(start);
  if (kept == Recompute::Selective) a.attn = a.lse = Tensor();
}

// The latent cache: per position the normalised key/value latent c (L) and the rotated shared
// key k_pe (Dr), ops/mla_decode.h.
std::vector<Shape> MlaAttention::cache_entry_shapes() const { return {{d_.kv_lora}, {d_.rope}}; }

void MlaAttention::prefill(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache) {
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const Arena::Mark m = A.mark();
  std::unique_ptr<BlockActivations> base;
  forward(env, x, y, base, Recompute::None);  // the training forward over the prompts
  const Acts& a = static_cast<const Acts&>(*base);
  const int64_t L = d_.kv_lora, Dr = d_.rope, max_len = cache[0].size(1);
  const Tensor pe = rotated_k_pe(env, a, d.B, d.T);
  Tensor cc = cache[0].view({d.B * max_len, L}), cp = cache[1].view({d.B * max_len, Dr});
  for (int64_t b = 0; b < d.B; ++b) {
    Tensor dc = cc.rows(b * max_len, b * max_len + d.T), dp = cp.rows(b * max_len, b * max_len + d.T);
    ops::copy_cast(env.ctx, dc, a.ckvn.rows(b * d.T, (b + 1) * d.T));
    ops::copy_cast(env.ctx, dp, pe.rows(b * d.T, (b + 1) * d.T));
  }
  A.release(m);
}

void MlaAttention::decode(LayerEnv& env, const Tensor& x, Tensor& y, std::vector<Tensor>& cache,
                          const Tensor& positions) {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const int64_t B = x.size(0), H = d_.heads, L = d_.kv_lora, Dr = d_.rope, Dq = d_.qk();
  PRIMUS_CHECK(!p_.kv_up_lora.active() && !p_.proj_lora.active(),
               "MlaAttention::decode: the absorbed latent attention reads linear_kv_up_proj as is; merge the LoRA "
               "adapters first (model/lora_weights.h merge_lora_adapters)");
  const DType dt = x.dtype();
  const Arena::Mark m = A.mark();
  // The same latents as training, for one token per sequence.
  Acts a;
  alloc_latents(A, B, dt, a);
  Tensor q = A.alloc({B, H * Dq}, dt);
  project_latents(env, x, a, q);
  // RoPE on q_pe (the last Dr dims of each head) and on k_pe. The batch rides in the T dim of
  // the RoPE ops: row b of env.rope_* rotates sequence b.
  Tensor q_rows = q.view({B * H, Dq}), q_pe = A.alloc({B * H, Dr}, dt);
  ops::copy_columns(ctx, q_pe, 0, q_rows, d_.nope, Dr);
  Tensor q_pe4 = q_pe.view({1, B, H, Dr});
  ops::rope_forward(ctx, q_pe4, q_pe4, env.rope_cos, env.rope_sin);
  ops::copy_columns(ctx, q_rows, d_.nope, q_pe, 0, Dr);
  const Tensor k_pe = rotated_k_pe(env, a, 1, B);
  const Tensor& c = a.ckvn;
  // Attention in the latent space (ops/mla_decode.h), then W_uv and the output projection.
  const Tensor q3 = q.view({B, H, Dq});
  Tensor q_lat = A.alloc({B, H, L}, dt), o_lat = A.alloc({B, H, L}, dt);
  Tensor scores = A.alloc({B * H * cache[0].size(1)}, DType::F32);
  ops::mla_absorb_query(ctx, q_lat, q3, p_.kv_up->value, d_.nope);
  ops::mla_decode_attention(ctx, o_lat, scores, q_lat, q3, c, k_pe, cache[0], cache[1], positions, scale_);
  Tensor attn = A.alloc({B, H, d_.v}, dt);
  ops::mla_absorb_output(ctx, attn, o_lat, p_.kv_up->value, d_.nope);
  parallel::row_parallel_linear_forward(ctx, env.tp, A, y, attn.view({B, H * d_.v}), p_.proj->value, &x);
  A.release(m);
}

}  // namespace primus
