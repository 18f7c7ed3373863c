#include "model/fp8_training.h"

#include "core/error.h"

namespace primus {

bool fp8_linear_name(const std::string& name) {
  static const char* kSuffixes[] = {
      "self_attention.linear_qkv.weight",        "self_attention.linear_proj.weight",
      "self_attention.linear_q_proj.weight",     "self_attention.linear_q_up_proj.weight",
      "self_attention.linear_kv_up_proj.weight", "mlp.linear_fc1.weight",
      "mlp.linear_fc2.weight",                   "mlp.shared_experts.linear_fc1.weight",
      "mlp.shared_experts.linear_fc2.weight",
  };
  for (const char* s : kSuffixes)
    if (name.ends_with(s)) return true;
  return false;
}

Fp8Training::Fp8Training(const ops::Fp8Options& options, const std::vector<NamedTensor*>& linears, Device device)
    : options_(options) {
  PRIMUS_CHECK(options_.amax_history_len >= 1, "fp8_amax_history_len = {} must be >= 1", options_.amax_history_len);
  PRIMUS_CHECK(options_.margin >= 0, "fp8_margin = {} must be >= 0", options_.margin);
  const int64_t L = static_cast<int64_t>(linears.size()), cols = options_.meta_cols();
  // Fresh state: no amax seen, scale 1 (Transformer Engine's start).
  std::vector<float> init(static_cast<size_t>(L * 3 * cols), 0.f);
  for (int64_t r = 0; r < L * 3; ++r) {
    init[static_cast<size_t>(r * cols + options_.scale_col())] = 1.f;
    init[static_cast<size_t>(r * cols + options_.scale_inv_col())] = 1.f;
  }
  metas_ = L > 0 ? Tensor::from_floats(init, {L, 3, cols}, DType::F32, Device::CPU)
                 : Tensor::zeros({0, 3, cols}, DType::F32, Device::CPU);
  metas_ = metas_.to(device);
  linears_.resize(static_cast<size_t>(L));
  states_.resize(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) {
    const NamedTensor* w = linears[static_cast<size_t>(i)];
    PRIMUS_CHECK(w->name.ends_with(".weight"), "Fp8Training: '{}' is not a weight", w->name);
    ops::Fp8Linear& l = linears_[static_cast<size_t>(i)];
    l.options = &options_;
    l.meta = metas_.rows(i, i + 1).view({3, cols});
    NamedTensor& s = states_[static_cast<size_t>(i)];
    s.name = w->name.substr(0, w->name.size() - 7) + kFp8StateSuffix;
    s.value = l.meta;
    index_[w] = static_cast<size_t>(i);
  }
}

ops::Fp8Linear* Fp8Training::find(const NamedTensor* w) {
  const auto it = index_.find(w);
  return it == index_.end() ? nullptr : &linears_[it->second];
}

std::vector<NamedTensor*> Fp8Training::state_tensors() {
  std::vector<NamedTensor*> out;
  for (NamedTensor& s : states_) out.push_back(&s);
  return out;
}

void Fp8Training::end_step(ops::Context& ctx, const std::vector<parallel::Communicator*>& groups) {
  if (!linears_.empty()) {
    if (options_.recipe == ops::Fp8Recipe::Delayed) {
      // Every entry is either equal across the group (scales, older history) or an amax:
      // a max over the whole state makes the replicas agree.
      for (parallel::Communicator* g : groups)
        if (g != nullptr && g->size() > 1) g->all_reduce(metas_, parallel::ReduceOp::Max);
    }
    ops::fp8_update_scales(ctx, options_, metas_);
  }
  weights_changed();
}

}  // namespace primus
