#include "model/mlp_dense.h"

#include "parallel/layers.h"

namespace primus {

void SwigluMlp::forward(LayerEnv& env, const Tensor& h, Tensor& g, Tensor& act, Tensor& y,
                        const Tensor* residual) const {
  parallel::column_parallel_linear_forward(env.ctx, env.tp, env.arena, g, h, fc1->value, fp8_of(env, fc1));
  parallel::lora_column_forward(env.ctx, env.tp, env.arena, g, h, fc1_lora, lora_dropout_of(env));
  ops::swiglu_forward(env.ctx, act, g);
  parallel::row_parallel_linear_forward(env.ctx, env.tp, env.arena, y, act, fc2->value, residual, fp8_of(env, fc2));
  parallel::lora_row_forward(env.ctx, env.tp, env.arena, y, act, fc2_lora, lora_dropout_of(env));
}

void SwigluMlp::backward(LayerEnv& env, const Tensor& h, const Tensor& g, const Tensor& act, const Tensor& dy,
                         Tensor& dh) const {
  Arena& A = env.arena;
  const bool acc = !env.overwrite_linear_grads;
  const Arena::Mark m = A.mark();
  const int64_t N = g.size(0);
  Tensor d_act = A.alloc({N, F}, g.dtype());
  Tensor d_g = A.alloc({N, 2 * F}, g.dtype());
  parallel::row_parallel_linear_backward(env.ctx, env.tp, A, &d_act, fc2->grad, dy, act, fc2->value, acc, fp8_of(env, fc2));
  parallel::lora_row_backward(env.ctx, env.tp, A, d_act, dy, act, fc2_lora, lora_dropout_of(env));
  ops::swiglu_backward(env.ctx, d_g, d_act, g);
  parallel::column_parallel_linear_backward(env.ctx, env.tp, A, dh, fc1->grad, d_g, h, fc1->value, acc, fp8_of(env, fc1));
  parallel::lora_column_backward(env.ctx, env.tp, A, dh, d_g, h, fc1_lora, lora_dropout_of(env));
  A.release(m);
}

std::vector<NamedTensor*> DenseMlp::params() const {
  std::vector<NamedTensor*> out{norm_, mlp_.fc1, mlp_.fc2};
  parallel::append_lora_params({&mlp_.fc1_lora, &mlp_.fc2_lora}, out);
  return out;
}

std::vector<NamedTensor*> DenseMlp::lora_partial_grads(const parallel::TensorParallel& tp) const {
  std::vector<NamedTensor*> out;
  parallel::lora_partial_grads(tp, mlp_.fc1_lora, true, out);
  parallel::lora_partial_grads(tp, mlp_.fc2_lora, false, out);
  return out;
}

struct DenseMlp::Acts : BlockActivations {
  Tensor h, rstd;  // (R,C), (R) fp32
  Tensor g, act;   // (N,2F), (N,F)   [act not kept under Selective]
};

void DenseMlp::forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts_out,
                       Recompute keep) {
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const DType dt = x.dtype();
  auto acts = std::make_unique<Acts>();
  Acts& a = *acts;
  a.x = x;
  const Arena::Mark start = A.mark();  // Full: everything is scratch
  a.h = A.alloc({d.residual_rows(), d.C}, dt);
  a.rstd = A.alloc({d.residual_rows()}, DType::F32);
  a.g = A.alloc({d.N(), 2 * mlp_.F}, dt);
  if (keep == Recompute::None) a.act = A.alloc({d.N(), mlp_.F}, dt);
  const Arena::Mark scratch = keep == Recompute::Full ? start : A.mark();
  if (keep != Recompute::None) a.act = A.alloc({d.N(), mlp_.F}, dt);

  ops::rmsnorm_forward(env.ctx, a.h, a.rstd, x, norm_->value, env.norm_eps);
  mlp_.forward(env, a.h, a.g, a.act, y, &x);

  A.release(scratch);
  if (keep == Recompute::Full) {
    acts = std::make_unique<Acts>();
    acts->x = x;
  } else if (keep == Recompute::Selective) {
    a.act = Tensor();
  }
  acts_out = std::move(acts);
}

void DenseMlp::backward(LayerEnv& env, BlockActivations& base, Tensor& dres, Recompute kept) {
  Acts& a = static_cast<Acts&>(base);
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const Arena::Mark start = A.mark();
  if (kept == Recompute::Selective) {
    a.act = A.alloc({d.N(), mlp_.F}, a.g.dtype());
    ops::swiglu_forward(env.ctx, a.act, a.g);
  }
  // The residual passes d y to x as is; the MLP adds its path.
  Tensor dh = A.alloc({d.residual_rows(), d.C}, a.x.dtype());
  mlp_.backward(env, a.h, a.g, a.act, dres, dh);
  Tensor dw_norm = norm_weight_grad(env, *norm_);
  ops::rmsnorm_backward(env.ctx, dres, dw_norm, dh, a.x, norm_->value, a.rstd);  // dres = d x
  A.release(start);
  if (kept == Recompute::Selective) a.act = Tensor();
}

}  // namespace primus
