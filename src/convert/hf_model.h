// HuggingFace (Llama, Mistral, Mixtral; DeepSeek-V2/V3 import) <-> Primus: config.json fields
// and parameter names/layouts, the latter derived from decoder_spec's parameter table
// (hf_sources).
//
// DeepSeek (DeepseekV2ForCausalLM / DeepseekV3ForCausalLM, both ways), l = layer:
//   self_attn.q_a_proj, q_a_layernorm, q_b_proj (or q_proj)   -> linear_q_down_proj, q_layernorm,
//                                                                linear_q_up_proj (linear_q_proj)
//   self_attn.kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj   -> linear_kv_down_proj, kv_layernorm,
//                                                                linear_kv_up_proj
//   self_attn.o_proj                                          -> linear_proj
//   mlp.gate.weight, mlp.gate.e_score_correction_bias         -> mlp.router.weight, expert_bias
//   mlp.experts.e.{gate,up,down}_proj (or fused gate_up_proj / down_proj), mlp.shared_experts.*
// DeepSeek's checkpoints hold each rotary block (the last qk_rope_head_dim rows of every
// q_b_proj head and of kv_a_proj_with_mqa) in interleaved pairs (x0, x1), (x2, x3), ...;
// transformers de-interleaves them before its rotate-half RoPE, so the import permutes those
// rows once (HfPiece::rows) and the model rotates halves as everywhere else.
// V3's multi-token-prediction depth k (num_nextn_predict_layers of them) is HF layer
// m = num_hidden_layers + k, DeepSeek's names:
//   model.layers.m.enorm, hnorm, eh_proj                      -> mtp.layers.k.enorm, hnorm, eh_proj
//   model.layers.m.{input_layernorm, self_attn.*, post_attention_layernorm, mlp.*}
//                                                             -> mtp.layers.k.transformer_layer.* (as above)
//   model.layers.m.shared_head.norm                           -> mtp.layers.k.final_layernorm
//   model.layers.m.embed_tokens, shared_head.head             copies of model.embed_tokens and
//                                                             lm_head (Primus shares those): the
//                                                             import checks them, the export writes them
// (eh_proj's input is [enorm(embedding) | hnorm(hidden)] on both sides).
//
// Primus keeps Megatron's fused layouts: linear_qkv rows are [q heads | k heads | v heads]
// and linear_fc1 rows are [gate | up]. HF keeps q/k/v and gate/up as separate matrices.
// Both use the rotate-half RoPE convention (HF's checkpoints already carry the q/k row
// permutation that Meta's original interleaved checkpoints need), so converting between
// HF and Primus is a pure split/concatenate: no rotary permutation is applied, and the
// logits-match check against `transformers` is what proves it.
//
// Mixtral (MixtralForCausalLM, every layer MoE; l = layer, e = expert, F = intermediate_size)
// comes in two HF layouts (HfMoeLayout):
//   PerExpert  what Mistral published and every transformers version loads:
//              model.layers.l.block_sparse_moe.gate.weight            (E, C)   router
//              model.layers.l.block_sparse_moe.experts.e.w1.weight    (F, C)   gate
//              model.layers.l.block_sparse_moe.experts.e.w3.weight    (F, C)   up
//              model.layers.l.block_sparse_moe.experts.e.w2.weight    (C, F)   down
//   Fused      transformers >= 5's in-memory layout (what its modules hold after loading):
//              model.layers.l.mlp.gate.weight                         (E, C)
//              model.layers.l.mlp.experts.gate_up_proj                (E, 2F, C) rows [w1 | w3]
//              model.layers.l.mlp.experts.down_proj                   (E, C, F)
// The fused tensors have exactly Primus's shapes (mlp.router.weight, mlp.experts.linear_fc1
// / linear_fc2.weight). hf-to-primus reads either (detect_hf_moe_layout); primus-to-hf
// writes PerExpert, which every transformers version loads.
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

// config.json (LlamaForCausalLM / MistralForCausalLM with no sliding window, or
// MixtralForCausalLM: num_local_experts, num_experts_per_tok, router_aux_loss_coef; softmax
// over all experts, top-k, renormalised = Megatron's top-k then softmax) -> ModelConfig.
// Errors name the key and the file given in `source`.
ModelConfig model_config_from_hf(const nlohmann::json& hf, const std::string& source);
// ModelConfig -> config.json that transformers loads: LlamaForCausalLM for a dense model,
// MixtralForCausalLM when mc.num_experts > 0 (check_mixtral_exportable first), DeepseekV3/V2
// with multi-latent attention (check_deepseek_exportable).
nlohmann::json hf_config_from_model(const ModelConfig& mc, const std::string& torch_dtype,
                                    int64_t bos_token_id, int64_t eos_token_id);
// Throws, naming `source` and the key, for an MoE model that MixtralForCausalLM cannot express:
// shared experts, sigmoid scores, an expert bias, group-limited routing, pre-softmax (no
// renormalisation), a top-k scaling factor other than 1, a capacity factor (token dropping),
// or dense layers (moe_layer_freq / pattern / moe_first_k_dense_replace). No-op when dense.
void check_mixtral_exportable(const ModelConfig& mc, const std::string& source);
// Throws, naming `source` and the key, for a multi-latent-attention model that
// DeepseekV2ForCausalLM / DeepseekV3ForCausalLM cannot express (MTP modules of a softmax-routed
// V2 model, no latent norms, capacity, shared experts not a multiple of the expert size, sigmoid
// scores without the expert bias, softmax groups not scored by their best expert (V2's group_limited_greedy needs
// moe_router_group_score max), sigmoid groups scored by it, a V3 grouping with topk != 2 x group_topk).
void check_deepseek_exportable(const ModelConfig& mc, const std::string& source);

// Which HF names an MoE model's experts and router have (see the top of this file). Dense
// models have the same names either way.
enum class HfMoeLayout {
  PerExpert,  // block_sparse_moe.gate, block_sparse_moe.experts.e.{w1,w2,w3}: every transformers
  Fused,      // mlp.gate, mlp.experts.{gate_up_proj, down_proj}: transformers >= 5 in memory
};
const char* hf_moe_layout_name(HfMoeLayout layout);  // "per-expert" / "fused"
// The layout of the HF tensors `names` (from `source`) for model `mc`: Fused when they hold a
// name only the fused layout has, else PerExpert. Throws naming one tensor of each layout when
// they hold both.
HfMoeLayout detect_hf_moe_layout(const ModelConfig& mc, const std::vector<std::string>& names,
                                 const std::string& source);

// How one Primus tensor is made of HuggingFace tensors: every piece's rows, in order,
// concatenated along the rows of the Primus tensor seen as (rows, last dim). Fused layouts
// are several pieces (linear_qkv = [q_proj | k_proj | v_proj], linear_fc1 = [gate | up]);
// stacked routed experts (E, out, in) are expert 0's pieces, then expert 1's, ... in the
// per-expert layout, one piece of the same shape in the fused one.
struct HfPiece {
  std::string name;  // the HF tensor
  Shape shape;       // its shape
  // Row order: row r of the piece as Primus holds it is HF row rows[r] (empty: the same order).
  // DeepSeek's rotary rows are stored in interleaved pairs; Primus rotates halves.
  std::vector<int64_t> rows;
};
struct HfSource {
  std::string primus;  // the Primus tensor (decoder_spec's name)
  Shape shape;         // its full shape
  std::vector<HfPiece> pieces;
};
// One entry per tensor of parameter_table(mc), in that order. Throws naming a tensor that
// has no HuggingFace form (biases, MTP outside DeepSeek, ...).
std::vector<HfSource> hf_sources(const ModelConfig& mc, HfMoeLayout moe = HfMoeLayout::PerExpert);

// The names each side expects, in a stable order.
std::vector<std::string> primus_parameter_names(const ModelConfig& mc);
std::vector<std::string> hf_parameter_names(const ModelConfig& mc, HfMoeLayout moe = HfMoeLayout::PerExpert);

// DeepSeek's copies of the shared tensors in MTP layer m: {(HF name, the Primus tensor it
// copies)}, e.g. (model.layers.m.embed_tokens.weight, embedding.word_embeddings.weight); empty
// without MTP.
std::vector<std::pair<std::string, std::string>> hf_mtp_shared_copies(const ModelConfig& mc);

// Layout conversion (CPU tensors; dtype kept as found). hf_to_primus returns the lookup's
// tensors as given where a Primus tensor is one HF tensor, and new concatenations for the
// fused and stacked ones; primus_to_hf returns row views of the Primus tensors (no copies),
// so the looked-up tensors must outlive the result; it includes hf_mtp_shared_copies.
// `moe` is the layout of the HF side (primus-to-hf writes PerExpert).
NamedTensors hf_to_primus(const ModelConfig& mc, const TensorLookup& hf, HfMoeLayout moe = HfMoeLayout::PerExpert);
NamedTensors primus_to_hf(const ModelConfig& mc, const TensorLookup& primus,
                          HfMoeLayout moe = HfMoeLayout::PerExpert);

}  // namespace primus::convert
