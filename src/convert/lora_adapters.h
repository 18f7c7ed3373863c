// LoRA adapters in a Primus checkpoint (a `peft: lora` run saves
// "<base>.lora_A.weight" (r, in) and "<base>.lora_B.weight" (out, r) beside each adapted
// "<base>.weight", decoder_spec.h): merged into the base weights for generation and HF export,
//
//   W' = W + (lora_alpha / lora_dim) B A
//
// or written alone in PEFT's layout (adapter_model.safetensors + adapter_config.json), for
// transformers + peft to load onto the exported base model. Megatron's fused projections map to
// PEFT's per-module adapters exactly: linear_qkv's A is shared by q_proj, k_proj and v_proj,
// each taking its rows of B ([q | k | v]); linear_fc1's by gate_proj and up_proj ([gate | up]).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "model/model_config.h"

namespace primus::convert {

bool is_lora_tensor(const std::string& name);
// Base weights of `file` that have adapters ("...linear_qkv.weight"), in file order.
std::vector<std::string> lora_adapted_weights(const SafetensorsFile& file);

struct LoraConfig {
  int64_t rank = 0;
  double alpha = 0;
  std::vector<std::string> targets;  // Megatron module names
  float scaling() const { return static_cast<float>(alpha / static_cast<double>(rank)); }
};
// From a checkpoint's config.json (peft: lora, lora_dim, lora_alpha, lora_target_modules);
// `where` names it in errors.
LoraConfig lora_config_of(const nlohmann::json& config, const std::string& where);

// fp32 (out, in) on the host: base + scaling * B A, from `file`'s tensors.
Tensor merged_lora_weight(const SafetensorsFile& file, const std::string& base_weight, float scaling);

// Writes <dir>/adapter_model.safetensors (fp32) and adapter_config.json for the model `mc`
// whose checkpoint `file` holds the adapters. Returns the files written.
std::vector<std::string> write_peft_adapter(const std::string& dir, const ModelConfig& mc,
                                            const SafetensorsFile& file, const LoraConfig& lora);

}  // namespace primus::convert
