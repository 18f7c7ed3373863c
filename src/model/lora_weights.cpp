#include "model/lora_weights.h"

#include <map>

#include "core/error.h"
#include "model/decoder_spec.h"
#include "ops/ops.h"

namespace primus {

bool is_lora_tensor(const std::string& name) {
  return name.find(".lora_A.weight") != std::string::npos || name.find(".lora_B.weight") != std::string::npos;
}

std::vector<std::string> lora_adapted_weights(const SafetensorsFile& file) {
  std::vector<std::string> out;
  const std::string a = ".lora_A.weight";
  for (const auto& e : file.entries()) {
    if (e.name.size() <= a.size() || e.name.compare(e.name.size() - a.size(), a.size(), a) != 0) continue;
    const std::string base = e.name.substr(0, e.name.size() - a.size()) + ".weight";
    PRIMUS_CHECK(file.contains(base) && file.contains(lora_b_name(base)),
                 "{}: adapter '{}' has no base weight '{}' or no lora_B beside it", file.path(), e.name, base);
    out.push_back(base);
  }
  return out;
}

LoraConfig lora_config_of(const nlohmann::json& config, const std::string& where) {
  // A checkpoint's config.json keeps the experiment's options under "options".
  const nlohmann::json& c = config.is_object() && config.contains("options") ? config.at("options") : config;
  PRIMUS_CHECK(c.is_object() && c.value("peft", std::string("none")) == "lora" && c.contains("lora_dim") &&
                   c.contains("lora_alpha"),
               "{}: the checkpoint holds LoRA adapters but its config has no peft: lora with lora_dim and lora_alpha "
               "(needed for the scaling lora_alpha / lora_dim)", where);
  LoraConfig l;
  l.rank = c.at("lora_dim").get<int64_t>();
  l.alpha = c.at("lora_alpha").get<double>();
  PRIMUS_CHECK(l.rank > 0 && l.alpha > 0, "{}: lora_dim {} and lora_alpha {} must be > 0", where, l.rank, l.alpha);
  if (c.contains("lora_target_modules") && c["lora_target_modules"].is_array())
    l.targets = c["lora_target_modules"].get<std::vector<std::string>>();
  else
    l.targets = LoraSpec{}.targets;
  return l;
}

Tensor load_f32(const SafetensorsFile& file, const std::string& name) {
  const Tensor v = file.view(name);
  return Tensor::from_floats(v.to_float_vector(), v.shape());
}

namespace {

// W (out, in) or stacked experts (E, out, in) += s B A per matrix (B (out, r), A (r, in), or
// stacked (E, out, r), (E, r, in)); false when the shapes do not fit.
bool add_lora_product(ops::Context& ctx, Tensor& w, const Tensor& a, const Tensor& b, float scaling) {
  if (w.ndim() == 2) {
    if (a.ndim() != 2 || b.ndim() != 2 || b.size(0) != w.size(0) || a.size(1) != w.size(1) || a.size(0) != b.size(1))
      return false;
    ops::matmul(ctx, w, b, ops::Transpose::No, a, ops::Transpose::No, scaling, 1.f);
    return true;
  }
  if (w.ndim() != 3 || a.ndim() != 3 || b.ndim() != 3 || a.size(0) != w.size(0) || b.size(0) != w.size(0) ||
      b.size(1) != w.size(1) || a.size(2) != w.size(2) || a.size(1) != b.size(2))
    return false;
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2), r = a.size(1);
  for (int64_t e = 0; e < E; ++e) {  // one routed expert at a time
    Tensor we = w.rows(e, e + 1).view({out, in});
    ops::matmul(ctx, we, b.rows(e, e + 1).view({out, r}), ops::Transpose::No, a.rows(e, e + 1).view({r, in}),
                ops::Transpose::No, scaling, 1.f);
  }
  return true;
}

}  // namespace

Tensor merged_lora_weight(const SafetensorsFile& file, const std::string& base, float scaling) {
  Tensor w = load_f32(file, base);
  const Tensor a = load_f32(file, lora_a_name(base)), b = load_f32(file, lora_b_name(base));
  ops::Context cpu = ops::Context::cpu();
  PRIMUS_CHECK(add_lora_product(cpu, w, a, b, scaling),  // W += s B A
               "{}: LoRA shapes of '{}' do not fit: W {}, A {}, B {}", file.path(), base, w.describe(), a.describe(),
               b.describe());
  return w;
}

NamedTensorList merge_lora_adapters(ops::Context& ctx, const NamedTensorList& weights, float scaling) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : weights) by_name[name] = &t;
  NamedTensorList out;
  for (const auto& [name, t] : weights) {
    if (is_lora_tensor(name)) continue;
    const auto a = by_name.find(lora_a_name(name)), b = by_name.find(lora_b_name(name));
    if (a == by_name.end() && b == by_name.end()) {
      out.emplace_back(name, t);
      continue;
    }
    PRIMUS_CHECK(a != by_name.end() && b != by_name.end(), "merge_lora_adapters: '{}' has {} but not {}", name,
                 a != by_name.end() ? lora_a_name(name) : lora_b_name(name),
                 a != by_name.end() ? lora_b_name(name) : lora_a_name(name));
    const Tensor& A = *a->second;  // (r, in)
    const Tensor& B = *b->second;  // (out, r)
    Tensor merged = Tensor::empty(t.shape(), t.dtype(), t.device());
    ops::copy_cast(ctx, merged, t);
    PRIMUS_CHECK(add_lora_product(ctx, merged, A, B, scaling),  // += s B A (per expert when stacked)
                 "merge_lora_adapters: '{}' {} does not fit lora_B {} x lora_A {}", name, shape_str(t.shape()),
                 shape_str(B.shape()), shape_str(A.shape()));
    out.emplace_back(name, merged);
  }
  return out;
}

}  // namespace primus
