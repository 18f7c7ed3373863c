#include "optim/adamw.h"

#include <cmath>
#include <map>

namespace primus {

AdamW::AdamW(ops::Context& ctx, std::vector<NamedTensor*> params, const AdamWConfig& config)
    : ctx_(ctx), config_(config) {
  PRIMUS_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
               "adam betas must be in [0, 1), got adam_beta1 = {}, adam_beta2 = {}", config.beta1, config.beta2);
  PRIMUS_CHECK(config.eps > 0, "adam_eps must be > 0, got {}", config.eps);
  for (NamedTensor* p : params) {
    PRIMUS_CHECK(p != nullptr && p->value.defined() && p->grad.defined(), "AdamW: parameter without value/grad");
    // bf16 gradients (grad_reduce_in_bf16) are read as such by the CUDA update; the backend
    // refuses them where it cannot (ops::adamw_step).
    PRIMUS_CHECK((p->grad.dtype() == DType::F32 || p->grad.dtype() == DType::BF16) &&
                     p->grad.shape() == p->value.shape(),
                 "AdamW: grad of '{}' must be fp32 or bf16 {}, got {}", p->name, shape_str(p->value.shape()),
                 p->grad.describe());
    Slot s;
    s.param = p;
    const Device dev = p->value.device();
    if (p->value.dtype() == DType::F32) {
      s.master = p->value;
    } else {  // fp32 master from the model copy, as Megatron's mixed-precision optimizer does
      s.master = Tensor::empty(p->value.shape(), DType::F32, dev);
      ops::copy_cast(ctx_, s.master, p->value);
    }
    s.exp_avg = Tensor::zeros(p->value.shape(), DType::F32, dev);
    s.exp_avg_sq = Tensor::zeros(p->value.shape(), DType::F32, dev);
    slots_.push_back(std::move(s));
  }
}

std::vector<Tensor> AdamW::grads() const {
  std::vector<Tensor> out;
  out.reserve(slots_.size());
  for (const Slot& s : slots_) out.push_back(s.param->grad);
  return out;
}

double AdamW::grad_norm(float grad_scale) {
  if (grad_sum_of_squares_) {
    std::vector<NamedTensor*> params;
    params.reserve(slots_.size());
    for (const Slot& s : slots_) params.push_back(s.param);
    return std::sqrt(grad_sum_of_squares_(ctx_, params)) * grad_scale;
  }
  return std::sqrt(ops::sum_of_squares(ctx_, grads())) * grad_scale;
}

void AdamW::reset_masters_from_params() {
  for (Slot& s : slots_)
    if (s.master.raw() != s.param->value.raw()) ops::copy_cast(ctx_, s.master, s.param->value);
}

int64_t AdamW::count_zero_grads() { return ops::count_zeros(ctx_, grads()); }

AdamW::StepInfo AdamW::step(double lr, double weight_decay, float grad_scale) {
  StepInfo info;
  info.grad_norm = grad_norm(grad_scale);
  if (!std::isfinite(info.grad_norm)) {
    info.skipped = true;
    return info;
  }
  if (config_.clip_grad > 0) {
    const double coeff = config_.clip_grad / (info.grad_norm + 1e-6);
    if (coeff < 1.0) info.clip_coeff = coeff;
  }
  std::vector<ops::AdamWTensor> tensors;
  tensors.reserve(slots_.size());
  for (const Slot& s : slots_) {
    ops::AdamWTensor t;
    t.master = s.master;
    t.grad = s.param->grad;
    t.exp_avg = s.exp_avg;
    t.exp_avg_sq = s.exp_avg_sq;
    if (s.master.raw() != s.param->value.raw()) t.model = s.param->value;
    t.weight_decay_mult = s.param->no_weight_decay ? 0.f : 1.f;
    tensors.push_back(std::move(t));
  }
  ops::AdamWParams p;
  p.lr = static_cast<float>(lr);
  p.beta1 = config_.beta1;
  p.beta2 = config_.beta2;
  p.eps = config_.eps;
  p.weight_decay = static_cast<float>(weight_decay);
  p.step = steps_ + 1;
  p.grad_scale = static_cast<float>(grad_scale * info.clip_coeff);
  ops::adamw_step(ctx_, tensors, p);
  ++steps_;
  return info;
}

NamedTensorList AdamW::state_tensors() const {
  NamedTensorList out;
  for (const Slot& s : slots_) {
    out.emplace_back(s.param->name + ".exp_avg", s.exp_avg);
    out.emplace_back(s.param->name + ".exp_avg_sq", s.exp_avg_sq);
    if (s.master.raw() != s.param->value.raw()) out.emplace_back(s.param->name + ".master", s.master);
  }
  Tensor step = Tensor::empty({}, DType::I64);
  *step.data<int64_t>() = steps_;
  out.emplace_back("step", step);
  return out;
}

void AdamW::load_state_tensors(const NamedTensorList& state) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : state) by_name[name] = &t;
  auto get = [&](const std::string& name, const Tensor& like) -> const Tensor& {
    auto it = by_name.find(name);
    PRIMUS_CHECK(it != by_name.end(), "optimizer state has no tensor '{}' (was it saved by a different model "
                 "or with fp32 params?)", name);
    PRIMUS_CHECK(it->second->shape() == like.shape() && it->second->dtype() == like.dtype(),
                 "optimizer state tensor '{}' is {}, expected {} {}", name, it->second->describe(),
                 dtype_name(like.dtype()), shape_str(like.shape()));
    return *it->second;
  };
  // Check everything before changing anything: a failed load leaves the state as it was.
  Tensor step = Tensor::empty({}, DType::I64);
  std::vector<std::pair<Tensor, const Tensor*>> copies{{step, &get("step", step)}};
  for (Slot& s : slots_) {
    copies.emplace_back(s.exp_avg, &get(s.param->name + ".exp_avg", s.exp_avg));
    copies.emplace_back(s.exp_avg_sq, &get(s.param->name + ".exp_avg_sq", s.exp_avg_sq));
    if (s.master.raw() != s.param->value.raw())
      copies.emplace_back(s.master, &get(s.param->name + ".master", s.master));
  }
  for (auto& [dst, src] : copies) dst.copy_from(*src);
  for (Slot& s : slots_)
    if (s.master.raw() != s.param->value.raw()) ops::copy_cast(ctx_, s.param->value, s.master);
  steps_ = *step.data<int64_t>();
}

}  // namespace primus
