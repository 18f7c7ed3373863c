// HuggingFace (Llama, Mistral, Mixtral) <-> Primus: config.json fields and parameter
// names/layouts, the latter derived from decoder_spec's parameter table (hf_sources).
//
// Primus keeps Megatron's fused layouts: linear_qkv rows are [q heads | k heads | v heads]
// and linear_fc1 rows are [gate | up]. HF keeps q/k/v and gate/up as separate matrices.
// Both use the rotate-half RoPE convention (HF's checkpoints already carry the q/k row
// permutation that Meta's original interleaved checkpoints need), so converting between
// HF and Primus is a pure split/concatenate: no rotary permutation is applied, and the
// logits-match check against `transformers` is what proves it.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "model/model_config.h"

namespace primus::convert {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
// Finds a tensor by name in the source checkpoint; throws naming the missing tensor.
using TensorLookup = std::function<Tensor(const std::string& name)>;

// config.json (LlamaForCausalLM / MistralForCausalLM with no sliding window) -> ModelConfig.
// Errors name the key and the file given in `source`.
ModelConfig model_config_from_hf(const nlohmann::json& hf, const std::string& source);
// ModelConfig -> config.json that transformers' LlamaForCausalLM loads.
nlohmann::json hf_config_from_model(const ModelConfig& mc, const std::string& torch_dtype,
                                    int64_t bos_token_id, int64_t eos_token_id);

// How one Primus tensor is made of HuggingFace tensors: every piece's rows, in order,
// concatenated along the rows of the Primus tensor seen as (rows, last dim). Fused layouts
// are several pieces (linear_qkv = [q_proj | k_proj | v_proj], linear_fc1 = [gate | up]);
// stacked routed experts (E, out, in) are expert 0's pieces, then expert 1's, ...
struct HfPiece {
  std::string name;  // the HF tensor
  Shape shape;       // its shape
};
struct HfSource {
  std::string primus;  // the Primus tensor (decoder_spec's name)
  Shape shape;         // its full shape
  std::vector<HfPiece> pieces;
};
// One entry per tensor of parameter_table(mc), in that order. Throws naming a tensor that
// has no HuggingFace form (MLA, MTP, biases: not exported yet).
std::vector<HfSource> hf_sources(const ModelConfig& mc);

// The names each side expects, in a stable order.
std::vector<std::string> primus_parameter_names(const ModelConfig& mc);
std::vector<std::string> hf_parameter_names(const ModelConfig& mc);

// Layout conversion (CPU tensors; dtype kept as found). hf_to_primus returns the lookup's
// tensors as given where a Primus tensor is one HF tensor, and new concatenations for the
// fused and stacked ones; primus_to_hf returns row views of the Primus tensors (no copies),
// so the looked-up tensors must outlive the result.
NamedTensors hf_to_primus(const ModelConfig& mc, const TensorLookup& hf);
NamedTensors primus_to_hf(const ModelConfig& mc, const TensorLookup& primus);

}  // namespace primus::convert
