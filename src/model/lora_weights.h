// LoRA adapters in a checkpoint (a `peft: lora` run saves "<base>.lora_A.weight" (r, in) and
// "<base>.lora_B.weight" (out, r) beside each adapted "<base>.weight", decoder_spec.h), and
// their merge into the base weights for generation and export:
//
//   W' = W + (lora_alpha / lora_dim) B A
//
// convert/lora_adapters.h writes them alone in PEFT's layout.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "ops/ops.h"

namespace primus {

bool is_lora_tensor(const std::string& name);
// Base weights of `file` that have adapters ("...linear_qkv.weight"), in file order.
std::vector<std::string> lora_adapted_weights(const SafetensorsFile& file);

struct LoraConfig {
  int64_t rank = 0;
  double alpha = 0;
  std::vector<std::string> targets;  // Megatron module names
  float scaling() const { return static_cast<float>(alpha / static_cast<double>(rank)); }
};
// From a checkpoint's config.json (peft: lora, lora_dim, lora_alpha, lora_target_modules; the
// options may sit under "options"); `where` names it in errors.
LoraConfig lora_config_of(const nlohmann::json& config, const std::string& where);

// A tensor of `file` as fp32 on the host (any float dtype stored).
Tensor load_f32(const SafetensorsFile& file, const std::string& name);
// fp32 (out, in) on the host: base + scaling * B A, from `file`'s tensors.
Tensor merged_lora_weight(const SafetensorsFile& file, const std::string& base_weight, float scaling);

// A model's whole tensors with adapters (e.g. a LoRA run's parameters and frozen base, on ctx's
// device) -> the same list without the lora_A / lora_B tensors, each adapted base weight replaced
// by a new tensor base + scaling * B A (computed on ctx, in the base's dtype); the other tensors
// are passed through (no copy). What generation reads from a model being trained with LoRA.
NamedTensorList merge_lora_adapters(ops::Context& ctx, const NamedTensorList& weights, float scaling);

}  // namespace primus
