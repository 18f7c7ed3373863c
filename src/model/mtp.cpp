#include "model/mtp.h"

#include <fmt/format.h>

#include "model/decoder_spec.h"
#include "parallel/layers.h"

namespace primus {

MtpModule::MtpModule(const ModelConfig& c, int64_t module, const ParamLookup& lookup, int tp_size)
    : enorm_(lookup(fmt::format("mtp.layers.{}.enorm.weight", module))),
      hnorm_(lookup(fmt::format("mtp.layers.{}.hnorm.weight", module))),
      eh_proj_(lookup(fmt::format("mtp.layers.{}.eh_proj.weight", module))),
      final_norm_(lookup(fmt::format("mtp.layers.{}.final_layernorm.weight", module))),
      layer_(make_decoder_layer(c, mtp_layer(c, module), lookup, tp_size)) {}

std::vector<NamedTensor*> MtpModule::params() const {
  std::vector<NamedTensor*> out{enorm_, hnorm_, eh_proj_};
  for (NamedTensor* p : layer_.params()) out.push_back(p);
  out.push_back(final_norm_);
  return out;
}

std::vector<NamedTensor*> MtpModule::overwritten_grads() const {
  std::vector<NamedTensor*> out{eh_proj_};
  for (NamedTensor* p : layer_.overwritten_grads()) out.push_back(p);
  return out;
}

void MtpModule::forward(LayerEnv& env, const Tensor& prev, const Tensor& emb, Acts& a) {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const int64_t R = env.dims.residual_rows(), C = env.dims.C;
  const DType dt = prev.dtype();
  a = Acts{};
  a.emb = emb;
  a.h_prev = prev;
  a.e_rstd = A.alloc({R}, DType::F32);
  a.h_rstd = A.alloc({R}, DType::F32);
  a.cat = A.alloc({R, 2 * C}, dt);
  {
    const Arena::Mark m = A.mark();
    Tensor en = A.alloc({R, C}, dt), hn = A.alloc({R, C}, dt);
    ops::rmsnorm_forward(ctx, en, a.e_rstd, emb, enorm_->value, env.norm_eps);
    ops::rmsnorm_forward(ctx, hn, a.h_rstd, prev, hnorm_->value, env.norm_eps);
    ops::copy_columns(ctx, a.cat, 0, en, 0, C);
    ops::copy_columns(ctx, a.cat, C, hn, 0, C);
    A.release(m);
  }
  a.u = A.alloc({R, C}, dt);
  parallel::column_parallel_linear_gathered_forward(ctx, env.tp, A, a.u, a.cat, eh_proj_->value);
  a.out = A.alloc({R, C}, dt);
  layer_.forward(env, a.u, a.out, a.layer, Recompute::None);
  a.f_rstd = A.alloc({R}, DType::F32);
  a.normed = A.alloc({R, C}, dt);
  ops::rmsnorm_forward(ctx, a.normed, a.f_rstd, a.out, final_norm_->value, env.norm_eps);
}

void MtpModule::backward(LayerEnv& env, Acts& a, const Tensor& dnormed, const Tensor* dout, Tensor& demb,
                         Tensor& dprev) {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const int64_t R = env.dims.residual_rows(), C = env.dims.C;
  const DType dt = a.out.dtype();
  const Arena::Mark m = A.mark();
  Tensor dres = A.zeros({R, C}, dt);
  ops::rmsnorm_backward(ctx, dres, final_norm_->grad, dnormed, a.out, final_norm_->value, a.f_rstd);
  if (dout != nullptr) ops::add(ctx, dres, dres, *dout);
  layer_.backward(env, a.layer, dres, Recompute::None);  // dres = d u
  Tensor dcat = A.alloc({R, 2 * C}, dt);
  parallel::column_parallel_linear_gathered_backward(ctx, env.tp, A, dcat, eh_proj_->grad, dres, a.cat,
                                                     eh_proj_->value, !env.overwrite_linear_grads);
  Tensor half = A.alloc({R, C}, dt);
  ops::copy_columns(ctx, half, 0, dcat, 0, C);
  ops::fill(ctx, demb, 0.f);
  ops::rmsnorm_backward(ctx, demb, enorm_->grad, half, a.emb, enorm_->value, a.e_rstd);
  ops::copy_columns(ctx, half, 0, dcat, C, C);
  ops::rmsnorm_backward(ctx, dprev, hnorm_->grad, half, a.h_prev, hnorm_->value, a.h_rstd);
  A.release(m);
}

}  // namespace primus
