#include "optim/adamw.h"

#include <cmath>
#include <map>

#include "core/master_bits.h"
#include "ops/copy_into.h"

namespace primus {

AdamW::AdamW(ops::Context& ctx, std::vector<NamedTensor*> params, const AdamWConfig& config)
    : ctx_(ctx), config_(config) {
  PRIMUS_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
               "adam betas must be in [0, 1), got adam_beta1 = {}, adam_beta2 = {}", config.beta1, config.beta2);
  PRIMUS_CHECK(config.eps > 0, "adam_eps must be > 0, got {}", config.eps);
  for (auto [d, key] : {std::pair{config.exp_avg_dtype, "exp_avg_dtype"}, {config.exp_avg_sq_dtype, "exp_avg_sq_dtype"}})
    PRIMUS_CHECK(d == DType::F32 || d == DType::BF16, "AdamW: {} must be fp32 or bf16, got {}", key, dtype_name(d));
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
    } else if (config.store_param_remainders && p->value.dtype() == DType::BF16) {
      // The master's high half is the bf16 weight itself; its low half starts at zero.
      s.remainder = Tensor::zeros(p->value.shape(), DType::I16, dev);
    } else {  // fp32 master from the model copy, as Megatron's mixed-precision optimizer does
      s.master = Tensor::empty(p->value.shape(), DType::F32, dev);
      ops::copy_cast(ctx_, s.master, p->value);
    }
    s.exp_avg = Tensor::zeros(p->value.shape(), config.exp_avg_dtype, dev);
    s.exp_avg_sq = Tensor::zeros(p->value.shape(), config.exp_avg_sq_dtype, dev);
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
  for (Slot& s : slots_) {
    if (s.split()) s.remainder = Tensor::zeros(s.remainder.shape(), DType::I16, s.remainder.device());
    else if (s.own_master()) ops::copy_cast(ctx_, s.master, s.param->value);
  }
}

namespace {

// store_param_remainders: the fp32 master of a bf16 weight and its int16 remainder, and back
// (core/master_bits.h). On the host: this runs at checkpoint save and load only.
Tensor joined_master(const Tensor& model, const Tensor& remainder) {
  const Tensor m = model.to(Device::CPU), r = remainder.to(Device::CPU);
  Tensor out = Tensor::empty(model.shape(), DType::F32, Device::CPU);
  const auto* mb = static_cast<const uint16_t*>(m.raw());
  const int16_t* rb = r.data<int16_t>();
  auto* ob = static_cast<uint32_t*>(out.raw());
  for (int64_t i = 0; i < out.numel(); ++i) ob[i] = join_master_bits(mb[i], rb[i]);
  return model.device() == Device::CPU ? out : out.to(model.device());
}

void split_master(Tensor& model, Tensor& remainder, const Tensor& master) {
  const Tensor f = master.to(Device::CPU);
  Tensor m = Tensor::empty(model.shape(), DType::BF16, Device::CPU), r = Tensor::empty(model.shape(), DType::I16, Device::CPU);
  const auto* fb = static_cast<const uint32_t*>(f.raw());
  auto* mb = static_cast<uint16_t*>(m.raw());
  int16_t* rb = r.data<int16_t>();
  for (int64_t i = 0; i < f.numel(); ++i) split_master_bits(fb[i], mb[i], rb[i]);
  model.copy_from(m);
  remainder.copy_from(r);
}

}  // namespace

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
    t.master_remainder = s.remainder;
    t.grad = s.param->grad;
    t.exp_avg = s.exp_avg;
    t.exp_avg_sq = s.exp_avg_sq;
    if (s.low_precision()) t.model = s.param->value;
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
    if (s.split()) out.emplace_back(s.param->name + ".master", joined_master(s.param->value, s.remainder));
    else if (s.own_master()) out.emplace_back(s.param->name + ".master", s.master);
  }
  Tensor step = Tensor::empty({}, DType::I64);
  *step.data<int64_t>() = steps_;
  out.emplace_back("step", step);
  return out;
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const Slot& s : slots_) {
    bytes += static_cast<int64_t>(s.exp_avg.nbytes() + s.exp_avg_sq.nbytes());
    if (s.split()) bytes += static_cast<int64_t>(s.remainder.nbytes());
    else if (s.own_master()) bytes += static_cast<int64_t>(s.master.nbytes());
  }
  return bytes;
}

std::vector<std::string> AdamW::state_names() const {
  std::vector<std::string> out;
  for (const Slot& s : slots_) {
    out.push_back(s.param->name + ".exp_avg");
    out.push_back(s.param->name + ".exp_avg_sq");
    if (s.low_precision()) out.push_back(s.param->name + ".master");
  }
  out.push_back("step");
  return out;
}

void AdamW::load_state_tensors(const NamedTensorList& state) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : state) by_name[name] = &t;
  // Moments may have been saved in fp32 or bf16 whatever this run holds (exp_avg_dtype /
  // exp_avg_sq_dtype); masters are always fp32 in the file.
  auto get = [&](const std::string& name, const Shape& shape, DType dtype, bool any_float) -> const Tensor& {
    auto it = by_name.find(name);
    PRIMUS_CHECK(it != by_name.end(), "optimizer state has no tensor '{}' (was it saved by a different model "
                 "or with fp32 params?)", name);
    const DType d = it->second->dtype();
    PRIMUS_CHECK(it->second->shape() == shape && (d == dtype || (any_float && (d == DType::F32 || d == DType::BF16))),
                 "optimizer state tensor '{}' is {}, expected {} {}", name, it->second->describe(),
                 any_float ? "fp32 or bf16" : std::string(dtype_name(dtype)), shape_str(shape));
    return *it->second;
  };
  // Check everything before changing anything: a failed load leaves the state as it was.
  Tensor step = Tensor::empty({}, DType::I64);
  std::vector<std::pair<Tensor, const Tensor*>> copies{{step, &get("step", {}, DType::I64, false)}};
  std::vector<std::pair<Slot*, const Tensor*>> split_masters;
  for (Slot& s : slots_) {
    copies.emplace_back(s.exp_avg, &get(s.param->name + ".exp_avg", s.exp_avg.shape(), s.exp_avg.dtype(), true));
    copies.emplace_back(s.exp_avg_sq,
                        &get(s.param->name + ".exp_avg_sq", s.exp_avg_sq.shape(), s.exp_avg_sq.dtype(), true));
    if (s.split())
      split_masters.emplace_back(&s, &get(s.param->name + ".master", s.param->value.shape(), DType::F32, false));
    else if (s.own_master())
      copies.emplace_back(s.master, &get(s.param->name + ".master", s.master.shape(), DType::F32, false));
  }
  for (auto& [dst, src] : copies) ops::copy_into(ctx_, dst, *src);  // a moment may be in the other float dtype
  // The model's low-precision copy must match the restored masters exactly.
  for (Slot& s : slots_)
    if (s.own_master()) ops::copy_cast(ctx_, s.param->value, s.master);
  for (auto& [slot, master] : split_masters) split_master(slot->param->value, slot->remainder, *master);
  steps_ = *step.data<int64_t>();
}

}  // namespace primus
