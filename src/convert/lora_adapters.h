// PEFT's layout for the LoRA adapters of a Primus checkpoint (model/lora_weights.h): Megatron's
// fused projections map to PEFT's per-module adapters exactly: linear_qkv's A is shared by
// q_proj, k_proj and v_proj, each taking its rows of B ([q | k | v]); linear_fc1's by gate_proj
// and up_proj ([gate | up]).
#pragma once

#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/lora_weights.h"
#include "model/model_config.h"

namespace primus::convert {

// Writes <dir>/adapter_model.safetensors (fp32) and adapter_config.json for the model `mc`
// whose checkpoint `file` holds the adapters. Returns the files written.
std::vector<std::string> write_peft_adapter(const std::string& dir, const ModelConfig& mc,
                                            const SafetensorsFile& file, const LoraConfig& lora);

}  // namespace primus::convert
