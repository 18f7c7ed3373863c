#include "convert/hf_model.h"

#include <algorithm>
#include <type_traits>
#include <limits>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/decoder_spec.h"

namespace primus::convert {

namespace {

// The value of `key` as T. Integers must be JSON integers (or integral numbers) within T's
// range: nlohmann's own conversion of 1e72 to int64 is undefined behaviour (found by fuzz_hf_config).
template <typename T>
T value_as(const nlohmann::json& v, const char* key, const std::string& source) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // As an int64 first: a JSON integer, or a float that is a whole number below 2^53.
    int64_t i = 0;
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("{}: key '{}' = {} is out of range", source, key, v.dump());
      i = static_cast<int64_t>(v.get<uint64_t>());
    } else if (v.is_number_integer()) {
      i = v.get<int64_t>();
    } else {
      const double d = v.is_number_float() ? v.get<double>() : NAN;
      if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) >= 9.0e15)
        fail("{}: key '{}' must be an integer, got {}", source, key, v.dump());
      i = static_cast<int64_t>(d);
    }
    const bool below = i < 0 && (std::is_unsigned_v<T> || i < static_cast<int64_t>(std::numeric_limits<T>::min()));
    const bool above = i > 0 && static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (below || above)
      fail("{}: key '{}' = {} is out of range", source, key, v.dump());
    return static_cast<T>(i);
  } else {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      fail("{}: key '{}' has the wrong type (value {})", source, key, v.dump());
    }
  }
}

template <typename T>
T required(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j[key].is_null())
    fail("{}: missing required key '{}' in the HuggingFace config", source, key);
  return value_as<T>(j[key], key, source);
}

template <typename T>
T optional(const nlohmann::json& j, const char* key, T fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return value_as<T>(j[key], key, "HuggingFace config");
}

// Concatenate CPU tensors of shape (r_i, C) along rows.
Tensor concat_rows(const std::vector<Tensor>& parts, const std::string& what) {
  PRIMUS_CHECK(!parts.empty(), "{}: nothing to concatenate", what);
  const int64_t cols = parts[0].size(1);
  int64_t rows = 0;
  for (const auto& p : parts) {
    PRIMUS_CHECK(p.ndim() == 2 && p.size(1) == cols && p.dtype() == parts[0].dtype(),
                 "{}: part {} does not match {} (same dtype and columns expected)", what, p.describe(),
                 parts[0].describe());
    rows += p.size(0);
  }
  Tensor out = Tensor::empty({rows, cols}, parts[0].dtype());
  int64_t r = 0;
  for (const auto& p : parts) {
    Tensor dst = out.rows(r, r + p.size(0));
    dst.copy_from(p);
    r += p.size(0);
  }
  return out;
}

void expect_shape(const Tensor& t, const Shape& s, const std::string& name) {
  PRIMUS_CHECK(t.shape() == s, "tensor '{}' has shape {} but the config implies {}", name,
               shape_str(t.shape()), shape_str(s));
}

std::string hf_layer(int64_t i, const char* rest) { return fmt::format("model.layers.{}.{}", i, rest); }

// DeepseekV2Config / DeepseekV3Config (transformers; DeepSeek's published config.json files)
// -> ModelConfig. The router: V3's noaux_tc = sigmoid scores, an expert bias for selection,
// groups scored by their top-2 experts (Megatron's top-(k / group_topk) sum); V2's greedy =
// softmax over all experts, top-k, not renormalised (pre-softmax), n_group ignored as the HF
// gate ignores it; V2's group_limited_greedy = the same within the best topk_group of n_group
// groups, a group scored by its best expert (moe_router_group_score: max).
ModelConfig deepseek_config_from_hf(const nlohmann::json& hf, const std::string& source, bool v3) {
  ModelConfig mc;
  mc.name = optional<std::string>(hf, "_name_or_path", v3 ? "deepseek-v3-import" : "deepseek-v2-import");
  if (optional<bool>(hf, "attention_bias", false))
    fail("{}: attention_bias is set; DeepSeek's attention has no biases in Primus", source);
  const std::string act = optional<std::string>(hf, "hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act '{}' is not supported (expected silu / SwiGLU)", source, act);
  mc.num_layers = required<int64_t>(hf, "num_hidden_layers", source);
  mc.hidden_size = required<int64_t>(hf, "hidden_size", source);
  mc.ffn_hidden_size = required<int64_t>(hf, "intermediate_size", source);
  mc.num_attention_heads = required<int64_t>(hf, "num_attention_heads", source);
  mc.num_query_groups = mc.num_attention_heads;
  mc.padded_vocab_size = required<int64_t>(hf, "vocab_size", source);
  mc.vocab_size = mc.padded_vocab_size;
  mc.max_position_embeddings = optional<int64_t>(hf, "max_position_embeddings", 163840);
  mc.norm_epsilon = optional<double>(hf, "rms_norm_eps", 1e-6);
  mc.untie_embeddings_and_output_weights = !optional<bool>(hf, "tie_word_embeddings", false);
  mc.init_method_std = optional<double>(hf, "initializer_range", 0.02);
  mc.multi_latent_attention = true;
  mc.qk_layernorm = true;  // q_a_layernorm (with a query latent) and kv_a_layernorm
  mc.q_lora_rank = optional<int64_t>(hf, "q_lora_rank", 0);
  mc.kv_lora_rank = required<int64_t>(hf, "kv_lora_rank", source);
  mc.qk_head_dim = required<int64_t>(hf, "qk_nope_head_dim", source);
  mc.qk_pos_emb_head_dim = required<int64_t>(hf, "qk_rope_head_dim", source);
  mc.v_head_dim = required<int64_t>(hf, "v_head_dim", source);
  // RoPE: rope_theta top level (4.x) or in rope_parameters (5.x); YaRN from rope_scaling /
  // rope_parameters.
  const bool v5_rope = hf.contains("rope_parameters") && hf["rope_parameters"].is_object();
  mc.rotary_base = optional<double>(hf, "rope_theta", 10000.0);
  if (v5_rope) mc.rotary_base = optional<double>(hf["rope_parameters"], "rope_theta", mc.rotary_base);
  const std::string rope_key = v5_rope ? "rope_parameters" : "rope_scaling";
  if (hf.contains(rope_key) && hf[rope_key].is_object()) {
    const auto& rs = hf[rope_key];
    const std::string rt = rs.contains("rope_type") ? rs["rope_type"].get<std::string>()
                                                    : optional<std::string>(rs, "type", "default");
    if (rt == "yarn") {
      mc.rotary_scaling_factor = required<double>(rs, "factor", source + " " + rope_key);
      mc.original_max_position_embeddings = optional<int64_t>(rs, "original_max_position_embeddings", 4096);
      mc.beta_fast = optional<double>(rs, "beta_fast", 32.0);
      mc.beta_slow = optional<double>(rs, "beta_slow", 1.0);
      mc.mscale = optional<double>(rs, "mscale", 1.0);
      mc.mscale_all_dim = optional<double>(rs, "mscale_all_dim", 0.0);
    } else if (rt != "default") {
      fail("{}: {} type '{}' is not supported for DeepSeek (supported: yarn, default)", source, rope_key, rt);
    }
  }
  // MoE.
  mc.num_experts = required<int64_t>(hf, "n_routed_experts", source);
  mc.moe_router_topk = required<int64_t>(hf, "num_experts_per_tok", source);
  mc.moe_ffn_hidden_size = required<int64_t>(hf, "moe_intermediate_size", source);
  mc.moe_shared_expert_intermediate_size = optional<int64_t>(hf, "n_shared_experts", 0) * mc.moe_ffn_hidden_size;
  mc.moe_first_k_dense_replace = optional<int64_t>(hf, "first_k_dense_replace", 0);
  mc.moe_layer_freq = optional<int64_t>(hf, "moe_layer_freq", 1);
  mc.moe_router_topk_scaling_factor = optional<double>(hf, "routed_scaling_factor", 1.0);
  const std::string method = optional<std::string>(hf, "topk_method", v3 ? "noaux_tc" : "greedy");
  const std::string scoring = optional<std::string>(hf, "scoring_func", v3 ? "sigmoid" : "softmax");
  const bool norm_topk = optional<bool>(hf, "norm_topk_prob", v3);
  const int64_t groups = optional<int64_t>(hf, "n_group", 1), group_topk = optional<int64_t>(hf, "topk_group", 1);
  mc.moe_router_score_function = scoring;
  if (scoring == "sigmoid") {
    PRIMUS_CHECK(norm_topk || mc.moe_router_topk == 1,
                 "{}: scoring_func sigmoid with norm_topk_prob false is not supported (Megatron normalises sigmoid "
                 "top-k weights)", source);
    mc.moe_router_enable_expert_bias = method == "noaux_tc";
  } else if (scoring == "softmax") {
    mc.moe_router_pre_softmax = !norm_topk;  // renormalised top-k of a softmax = softmax of the top-k
  } else {
    fail("{}: scoring_func '{}' is not supported (softmax or sigmoid)", source, scoring);
  }
  if (groups > 1 && method != "greedy") {  // greedy: HF's gate ignores the groups
    // DeepSeek-V3 scores a group by its two best (biased) experts; Megatron's router by its top
    // moe_router_topk / moe_router_group_topk: the same only when that ratio is 2 (V3: 8 / 4).
    if (method == "noaux_tc" && (group_topk <= 0 || mc.moe_router_topk != 2 * group_topk))
      fail("{}: n_group {} with num_experts_per_tok {} and topk_group {}: DeepSeek-V3 scores a group by its top 2 "
           "experts, Primus's router by its top num_experts_per_tok / topk_group; they agree only when that is 2",
           source, groups, mc.moe_router_topk, group_topk);
    // V2's group_limited_greedy scores a group by its best expert.
    if (method == "group_limited_greedy") {
      if (group_topk < 1 || group_topk > groups || mc.num_experts % groups != 0 ||
          mc.moe_router_topk > group_topk * (mc.num_experts / groups))
        fail("{}: topk_method group_limited_greedy with n_group {}, topk_group {}, n_routed_experts {} and "
             "num_experts_per_tok {}: n_group must divide the experts and topk_group groups must hold at least "
             "num_experts_per_tok of them", source, groups, group_topk, mc.num_experts, mc.moe_router_topk);
      mc.moe_router_group_score = "max";
    }
    mc.moe_router_num_groups = groups;
    mc.moe_router_group_topk = group_topk;
  }
  if (method != "greedy" && method != "noaux_tc" && method != "group_limited_greedy")
    fail("{}: topk_method '{}' is not supported (greedy, group_limited_greedy, noaux_tc)", source, method);
  // Multi-token prediction (V3): the import keeps it only where the weights hold it
  // (checkpoint_convert.cpp; transformers' own saves drop the layer).
  mc.mtp_num_layers = optional<int64_t>(hf, "num_nextn_predict_layers", 0);
  PRIMUS_CHECK(mc.mtp_num_layers >= 0, "{}: num_nextn_predict_layers {} must be >= 0", source, mc.mtp_num_layers);
  mc.moe_router_load_balancing_type = optional<bool>(hf, "seq_aux", v3) ? "seq_aux_loss" : "aux_loss";
  mc.moe_aux_loss_coeff = optional<double>(hf, "aux_loss_alpha", 0.001);
  return mc;
}

}  // namespace

ModelConfig model_config_from_hf(const nlohmann::json& hf, const std::string& source) {
  PRIMUS_CHECK(hf.is_object(), "{}: expected a JSON object (a HuggingFace config.json), got {}", source,
               hf.type_name());
  std::vector<std::string> archs;
  if (hf.contains("architectures") && hf["architectures"].is_array())
    for (const auto& a : hf["architectures"]) archs.push_back(a.is_string() ? a.get<std::string>() : a.dump());
  const bool mixtral_arch = std::find(archs.begin(), archs.end(), "MixtralForCausalLM") != archs.end();
  // transformers picks the config class by model_type; without one, the architecture decides.
  const bool deepseek_arch = std::find(archs.begin(), archs.end(), "DeepseekV3ForCausalLM") != archs.end() ||
                             std::find(archs.begin(), archs.end(), "DeepseekV2ForCausalLM") != archs.end();
  const std::string type = optional<std::string>(
      hf, "model_type",
      mixtral_arch ? "mixtral"
                   : deepseek_arch ? (std::find(archs.begin(), archs.end(), "DeepseekV3ForCausalLM") != archs.end()
                                          ? "deepseek_v3"
                                          : "deepseek_v2")
                                   : "llama");
  if (type == "deepseek_v2" || type == "deepseek_v3") return deepseek_config_from_hf(hf, source, type == "deepseek_v3");
  if (type != "llama" && type != "mistral" && type != "mixtral")
    fail("{}: model_type '{}' is not supported by the converter yet (supported: llama, mistral, mixtral, "
         "deepseek_v2, deepseek_v3)", source, type);
  const bool moe = type == "mixtral";
  for (const std::string& arch : archs) {
    if (moe && arch != "MixtralForCausalLM")
      fail("{}: architectures lists '{}' but model_type is 'mixtral' (expected MixtralForCausalLM)", source, arch);
    if (!moe && arch == "MixtralForCausalLM")
      fail("{}: architectures lists 'MixtralForCausalLM' but model_type is '{}'; set model_type to \"mixtral\"",
           source, type);
    if (!moe && arch != "LlamaForCausalLM" && arch != "MistralForCausalLM")
      fail("{}: architectures lists '{}'; the converter supports LlamaForCausalLM, MistralForCausalLM "
           "(dense decoder, RMSNorm, SwiGLU, rotate-half RoPE) and MixtralForCausalLM (the same with MoE MLPs)",
           source, arch);
  }
  // transformers' MixtralConfig defaults where they differ from LlamaConfig's.
  const int64_t default_max_positions = moe ? 4096 * 32 : 4096;
  const double default_rope_theta = moe ? 1e6 : 10000.0;
  // Mistral's and Mixtral's sliding-window attention changes the math once sequences exceed
  // the window.
  if (hf.contains("sliding_window") && hf["sliding_window"].is_number() &&
      hf["sliding_window"].get<double>() <
          optional<double>(hf, "max_position_embeddings", static_cast<double>(default_max_positions)))
    fail("{}: sliding_window {} is set; Primus has full causal attention only (set sliding_window to null "
         "if the model was trained without it)", source, hf["sliding_window"].dump());
  if (optional<bool>(hf, "attention_bias", false) || optional<bool>(hf, "mlp_bias", false))
    fail("{}: attention_bias/mlp_bias are not supported (Llama has no biases)", source);
  const std::string act = optional<std::string>(hf, "hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act '{}' is not supported (expected silu / SwiGLU)", source, act);
  ModelConfig mc;
  mc.name = optional<std::string>(hf, "_name_or_path", "hf-import");
  mc.num_layers = required<int64_t>(hf, "num_hidden_layers", source);
  mc.hidden_size = required<int64_t>(hf, "hidden_size", source);
  mc.ffn_hidden_size = required<int64_t>(hf, "intermediate_size", source);
  mc.num_attention_heads = required<int64_t>(hf, "num_attention_heads", source);
  PRIMUS_CHECK(mc.num_attention_heads > 0 && mc.hidden_size > 0,
               "{}: num_attention_heads {} and hidden_size {} must be positive", source, mc.num_attention_heads,
               mc.hidden_size);
  mc.num_query_groups = optional<int64_t>(hf, "num_key_value_heads", mc.num_attention_heads);
  mc.kv_channels = optional<int64_t>(hf, "head_dim", mc.hidden_size / mc.num_attention_heads);
  // HF's vocab_size is the embedding's row count; nothing is padded on import.
  mc.padded_vocab_size = required<int64_t>(hf, "vocab_size", source);
  mc.vocab_size = mc.padded_vocab_size;
  mc.max_position_embeddings = optional<int64_t>(hf, "max_position_embeddings", default_max_positions);
  mc.norm_epsilon = optional<double>(hf, "rms_norm_eps", 1e-5);
  mc.rotary_base = optional<double>(hf, "rope_theta", default_rope_theta);
  // transformers >= 5 writes RoPE as one `rope_parameters` object (rope_theta, rope_type and
  // the scaling fields); 4.x wrote top-level `rope_theta` plus `rope_scaling`. Read either.
  const bool v5_rope = hf.contains("rope_parameters") && !hf["rope_parameters"].is_null();
  if (v5_rope) {
    PRIMUS_CHECK(hf["rope_parameters"].is_object(), "{}: rope_parameters must be an object, got {}", source,
                 hf["rope_parameters"].dump());
    mc.rotary_base = optional<double>(hf["rope_parameters"], "rope_theta", mc.rotary_base);
  }
  const std::string rope_key = v5_rope ? "rope_parameters" : "rope_scaling";
  mc.untie_embeddings_and_output_weights = !optional<bool>(hf, "tie_word_embeddings", false);
  mc.init_method_std = optional<double>(hf, "initializer_range", 0.02);
  mc.swiglu = true;
  mc.add_bias_linear = false;
  if (hf.contains(rope_key) && !hf[rope_key].is_null()) {
    const auto& rs = hf[rope_key];
    PRIMUS_CHECK(rs.is_object(), "{}: {} must be an object or null, got {}", source, rope_key, rs.dump());
    const std::string rt = rs.contains("rope_type") ? rs["rope_type"].get<std::string>()
                                                    : optional<std::string>(rs, "type", "");
    if (rt == "llama3") {
      mc.use_rope_scaling = true;
      mc.rope_scaling_factor = required<double>(rs, "factor", source + " " + rope_key);
      mc.rope_low_freq_factor = optional<double>(rs, "low_freq_factor", 1.0);
      mc.rope_high_freq_factor = optional<double>(rs, "high_freq_factor", 4.0);
      mc.original_max_position_embeddings = optional<int64_t>(rs, "original_max_position_embeddings", 8192);
    } else if (rt != "default" && !(v5_rope && rt.empty())) {  // "default" = plain RoPE
      fail("{}: {} type '{}' is not supported (supported: llama3, default)", source, rope_key, rt);
    }
  }
  PRIMUS_CHECK(mc.num_query_groups > 0 && mc.num_attention_heads % mc.num_query_groups == 0,
               "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source,
               mc.num_attention_heads, mc.num_query_groups);
  if (moe) {
    // MixtralSparseMoeBlock: p = softmax(h W_gate^T) over all E experts, the top-k of p
    // renormalised to sum 1, y = sum_j p_j w2_j(silu(w1_j h) * w3_j h). Renormalised top-k
    // of a softmax = softmax of the top-k logits: Megatron's top-k then softmax, i.e. no
    // pre-softmax. Every layer is MoE; intermediate_size is each expert's inner size.
    const double jitter = optional<double>(hf, "router_jitter_noise", 0.0);
    if (jitter != 0.0)
      fail("{}: router_jitter_noise {} is set; Primus's router adds no training-time jitter noise (set "
           "router_jitter_noise to 0.0)", source, jitter);
    mc.num_experts = optional<int64_t>(hf, "num_local_experts", 8);
    mc.moe_router_topk = optional<int64_t>(hf, "num_experts_per_tok", 2);
    PRIMUS_CHECK(mc.num_experts >= 1, "{}: num_local_experts {} must be >= 1", source, mc.num_experts);
    PRIMUS_CHECK(mc.moe_router_topk >= 1 && mc.moe_router_topk <= mc.num_experts,
                 "{}: num_experts_per_tok {} must be in [1, num_local_experts = {}]", source, mc.moe_router_topk,
                 mc.num_experts);
    mc.moe_ffn_hidden_size = mc.ffn_hidden_size;
    mc.moe_aux_loss_coeff = optional<double>(hf, "router_aux_loss_coef", 0.001);
    mc.moe_router_score_function = "softmax";
    mc.moe_router_pre_softmax = false;
    mc.moe_router_load_balancing_type = "aux_loss";
    mc.moe_layer_freq = 1;
    mc.moe_first_k_dense_replace = 0;
  }
  return mc;
}

void check_mixtral_exportable(const ModelConfig& mc, const std::string& source) {
  if (mc.num_experts <= 0) return;
  auto need = [&](bool ok, const char* key, const std::string& value, const char* why) {
    PRIMUS_CHECK(ok, "{}: {} = {}: {} (the HF export writes MixtralForCausalLM: every layer MoE, a softmax "
                 "router with the top-k renormalised, SwiGLU experts, nothing else)", source, key, value, why);
  };
  need(mc.moe_shared_expert_intermediate_size == 0, "moe_shared_expert_intermediate_size",
       std::to_string(mc.moe_shared_expert_intermediate_size), "Mixtral has no shared experts");
  need(mc.moe_router_score_function == "softmax", "moe_router_score_function", mc.moe_router_score_function,
       "Mixtral's router scores are a softmax");
  need(!mc.moe_router_enable_expert_bias, "moe_router_enable_expert_bias", "true",
       "Mixtral's router has no expert bias");
  need(mc.moe_router_num_groups <= 0, "moe_router_num_groups", std::to_string(mc.moe_router_num_groups),
       "Mixtral has no group-limited routing");
  need(!mc.moe_router_pre_softmax, "moe_router_pre_softmax", "true",
       "Mixtral renormalises the top-k probabilities; pre-softmax routing does not");
  need(mc.moe_router_topk_scaling_factor == 1.0, "moe_router_topk_scaling_factor",
       fmt::format("{}", mc.moe_router_topk_scaling_factor), "Mixtral does not scale the routing weights");
  need(mc.moe_expert_capacity_factor <= 0.0, "moe_expert_capacity_factor",
       fmt::format("{}", mc.moe_expert_capacity_factor), "Mixtral is dropless (no expert capacity)");
  need(mc.moe_first_k_dense_replace == 0, "moe_first_k_dense_replace", std::to_string(mc.moe_first_k_dense_replace),
       "every Mixtral layer is MoE");
  for (int64_t l = 0; l < mc.num_layers; ++l) {
    if (mc.is_moe_layer(l)) continue;
    const std::string freq = mc.moe_layer_pattern.empty() ? std::to_string(mc.moe_layer_freq)
                                                          : fmt::format("[{}]", fmt::join(mc.moe_layer_pattern, ","));
    need(false, "moe_layer_freq", freq, "it makes dense layers; every Mixtral layer is MoE");
  }
}

void check_deepseek_exportable(const ModelConfig& mc, const std::string& source) {
  auto need = [&](bool ok, const char* key, const std::string& value, const char* why) {
    PRIMUS_CHECK(ok, "{}: {} = {}: {} (the HF export writes DeepseekV3ForCausalLM for sigmoid routing with the "
                 "expert bias, DeepseekV2ForCausalLM for softmax routing)", source, key, value, why);
  };
  need(mc.mtp_num_layers == 0 || mc.moe_router_score_function == "sigmoid", "mtp_num_layers",
       std::to_string(mc.mtp_num_layers),
       "MTP layers are DeepSeek-V3's (num_nextn_predict_layers); this softmax-routed model exports as "
       "DeepseekV2ForCausalLM, which has none");
  need(mc.qk_layernorm, "qk_layernorm", "false", "DeepSeek always normalises its latents");
  need(mc.num_experts > 0, "num_experts", "0", "the DeepSeek classes are MoE models");
  need(mc.moe_layer_pattern.empty(), "moe_layer_freq", "a pattern", "DeepSeek's MoE layers follow "
       "first_k_dense_replace and moe_layer_freq");
  need(mc.moe_expert_capacity_factor <= 0.0, "moe_expert_capacity_factor",
       fmt::format("{}", mc.moe_expert_capacity_factor), "DeepSeek is dropless");
  const int64_t Fe = mc.moe_ffn_hidden_size, Fs = mc.moe_shared_expert_intermediate_size;
  need(Fe > 0 && Fs % Fe == 0, "moe_shared_expert_intermediate_size", std::to_string(Fs),
       "DeepSeek's shared experts are n_shared_experts x moe_intermediate_size");
  const bool sigmoid = mc.moe_router_score_function == "sigmoid";
  need(!sigmoid || mc.moe_router_enable_expert_bias, "moe_router_enable_expert_bias", "false",
       "DeepSeek-V3's sigmoid router carries e_score_correction_bias");
  const bool group_max = mc.moe_router_group_score == "max";
  need(sigmoid || mc.moe_router_num_groups <= 1 || group_max, "moe_router_group_score", mc.moe_router_group_score,
       "DeepSeek-V2's group_limited_greedy scores a group by its best expert: set moe_router_group_score: max");
  need(!sigmoid || mc.moe_router_num_groups <= 1 || !group_max, "moe_router_group_score", mc.moe_router_group_score,
       "DeepSeek-V3's noaux_tc scores a group by the sum of its top 2 experts: set moe_router_group_score: topk_sum");
  need(!sigmoid || mc.moe_router_num_groups <= 1 || mc.moe_router_topk == 2 * mc.moe_router_group_topk,
       "moe_router_group_topk", std::to_string(mc.moe_router_group_topk),
       "DeepSeek-V3 scores a group by its top 2 experts: moe_router_topk must be twice it");
}

nlohmann::json hf_config_from_model(const ModelConfig& mc, const std::string& torch_dtype,
                                    int64_t bos_token_id, int64_t eos_token_id) {
  if (mc.multi_latent_attention) {
    check_deepseek_exportable(mc, fmt::format("model '{}'", mc.name));
    const bool v3 = mc.moe_router_score_function == "sigmoid";
    nlohmann::json j = {
        {"architectures", {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"}},
        {"model_type", v3 ? "deepseek_v3" : "deepseek_v2"},
        {"hidden_act", "silu"},
        {"hidden_size", mc.hidden_size},
        {"intermediate_size", mc.ffn_hidden_size},
        {"moe_intermediate_size", mc.moe_ffn_hidden_size},
        {"num_hidden_layers", mc.num_layers},
        {"num_attention_heads", mc.num_attention_heads},
        {"num_key_value_heads", mc.num_attention_heads},
        {"n_routed_experts", mc.num_experts},
        {"n_shared_experts", mc.moe_shared_expert_intermediate_size / mc.moe_ffn_hidden_size},
        {"num_experts_per_tok", mc.moe_router_topk},
        {"routed_scaling_factor", mc.moe_router_topk_scaling_factor},
        {"first_k_dense_replace", mc.moe_first_k_dense_replace},
        {"moe_layer_freq", mc.moe_layer_freq},
        {"kv_lora_rank", mc.kv_lora_rank},
        {"q_lora_rank", mc.q_lora_rank > 0 ? nlohmann::json(mc.q_lora_rank) : nlohmann::json()},
        {"qk_nope_head_dim", mc.qk_head_dim},
        {"qk_rope_head_dim", mc.qk_pos_emb_head_dim},
        {"v_head_dim", mc.v_head_dim},
        {"topk_method", v3 ? "noaux_tc" : mc.moe_router_num_groups > 1 ? "group_limited_greedy" : "greedy"},
        {"scoring_func", mc.moe_router_score_function},
        {"norm_topk_prob", v3 || !mc.moe_router_pre_softmax},
        {"n_group", std::max<int64_t>(1, mc.moe_router_num_groups)},
        {"topk_group", std::max<int64_t>(1, mc.moe_router_group_topk)},
        {"aux_loss_alpha", mc.moe_aux_loss_coeff},
        {"seq_aux", mc.moe_router_load_balancing_type == "seq_aux_loss"},
        {"vocab_size", mc.padded_vocab_size},
        {"max_position_embeddings", mc.max_position_embeddings},
        {"rms_norm_eps", mc.norm_epsilon},
        {"rope_theta", mc.rotary_base},
        {"tie_word_embeddings", !mc.untie_embeddings_and_output_weights},
        {"attention_bias", false},
        {"initializer_range", mc.init_method_std},
        {"bos_token_id", bos_token_id},
        {"eos_token_id", eos_token_id},
        {"torch_dtype", torch_dtype},
        {"num_nextn_predict_layers", mc.mtp_num_layers},
        {"use_cache", true},
    };
    j["rope_scaling"] = mc.rotary_scaling_factor > 1.0
                            ? nlohmann::json{{"type", "yarn"},
                                             {"rope_type", "yarn"},
                                             {"factor", mc.rotary_scaling_factor},
                                             {"original_max_position_embeddings", mc.original_max_position_embeddings},
                                             {"beta_fast", mc.beta_fast},
                                             {"beta_slow", mc.beta_slow},
                                             {"mscale", mc.mscale},
                                             {"mscale_all_dim", mc.mscale_all_dim}}
                            : nlohmann::json();
    return j;
  }
  PRIMUS_CHECK(mc.mtp_num_layers == 0, "HF export: model '{}' has MTP layers (mtp_num_layers {}), which only the "
               "DeepSeek-V3 export writes", mc.name, mc.mtp_num_layers);
  check_mixtral_exportable(mc, fmt::format("model '{}'", mc.name));
  // The fields LlamaConfig and MixtralConfig share.
  nlohmann::json j = {
      {"hidden_act", "silu"},
      {"hidden_size", mc.hidden_size},
      {"num_hidden_layers", mc.num_layers},
      {"num_attention_heads", mc.num_attention_heads},
      {"num_key_value_heads", mc.num_query_groups},
      {"head_dim", mc.head_dim()},
      {"vocab_size", mc.padded_vocab_size},
      {"max_position_embeddings", mc.max_position_embeddings},
      {"rms_norm_eps", mc.norm_epsilon},
      {"rope_theta", mc.rotary_base},
      {"tie_word_embeddings", !mc.untie_embeddings_and_output_weights},
      {"initializer_range", mc.init_method_std},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"torch_dtype", torch_dtype},
      {"use_cache", true},
  };
  if (mc.num_experts > 0) {
    j["architectures"] = {"MixtralForCausalLM"};
    j["model_type"] = "mixtral";
    j["intermediate_size"] = mc.moe_ffn_hidden_size;  // each expert's inner size
    j["num_local_experts"] = mc.num_experts;
    j["num_experts_per_tok"] = mc.moe_router_topk;
    j["router_aux_loss_coef"] = mc.moe_aux_loss_coeff;
    j["output_router_logits"] = false;
    j["router_jitter_noise"] = 0.0;
    j["sliding_window"] = nullptr;
    j["attention_dropout"] = 0.0;
  } else {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["intermediate_size"] = mc.ffn_hidden_size;
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
  }
  if (mc.use_rope_scaling) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", mc.rope_scaling_factor},
                         {"low_freq_factor", mc.rope_low_freq_factor},
                         {"high_freq_factor", mc.rope_high_freq_factor},
                         {"original_max_position_embeddings", mc.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

namespace {

// Primus's row order of a block of `count` rows made of heads of `head` rows whose last `rope`
// rows are rotary: within each rotary block, rows (0, 2, 4, ..., 1, 3, 5, ...) of the HF tensor.
std::vector<int64_t> deinterleaved_rotary_rows(int64_t count, int64_t head, int64_t rope) {
  std::vector<int64_t> rows(static_cast<size_t>(count));
  for (int64_t r = 0; r < count; ++r) {
    const int64_t h = r / head, j = r % head, first = head - rope;
    if (j < first) {
      rows[static_cast<size_t>(r)] = r;
    } else {
      const int64_t k = j - first, half = rope / 2;
      rows[static_cast<size_t>(r)] = h * head + first + (k < half ? 2 * k : 2 * (k - half) + 1);
    }
  }
  return rows;
}

// DeepSeek's names of a layer tensor (hf_model.h).
std::vector<HfPiece> deepseek_layer_pieces(const ModelConfig& mc, const std::string& local, int64_t i,
                                           HfMoeLayout moe) {
  const int64_t C = mc.hidden_size, H = mc.num_attention_heads, F = mc.ffn_hidden_size, E = mc.num_experts;
  const int64_t Fe = mc.moe_ffn_hidden_size, Fs = mc.moe_shared_expert_intermediate_size;
  const int64_t Dn = mc.qk_head_dim, Dr = mc.qk_pos_emb_head_dim, Dv = mc.v_head_dim, Dq = Dn + Dr;
  const int64_t Lq = mc.q_lora_rank, L = mc.kv_lora_rank;
  auto hf = [&](const std::string& rest, Shape shape, std::vector<int64_t> rows = {}) {
    return HfPiece{hf_layer(i, rest.c_str()), std::move(shape), std::move(rows)};
  };
  if (local == "input_layernorm.weight") return {hf("input_layernorm.weight", {C})};
  if (local == "pre_mlp_layernorm.weight") return {hf("post_attention_layernorm.weight", {C})};
  const std::string a = "self_attention.";
  if (local == a + "linear_q_down_proj.weight") return {hf("self_attn.q_a_proj.weight", {Lq, C})};
  if (local == a + "q_layernorm.weight") return {hf("self_attn.q_a_layernorm.weight", {Lq})};
  if (local == a + "linear_q_up_proj.weight")
    return {hf("self_attn.q_b_proj.weight", {H * Dq, Lq}, deinterleaved_rotary_rows(H * Dq, Dq, Dr))};
  if (local == a + "linear_q_proj.weight")
    return {hf("self_attn.q_proj.weight", {H * Dq, C}, deinterleaved_rotary_rows(H * Dq, Dq, Dr))};
  if (local == a + "linear_kv_down_proj.weight")
    return {hf("self_attn.kv_a_proj_with_mqa.weight", {L + Dr, C}, deinterleaved_rotary_rows(L + Dr, L + Dr, Dr))};
  if (local == a + "kv_layernorm.weight") return {hf("self_attn.kv_a_layernorm.weight", {L})};
  if (local == a + "linear_kv_up_proj.weight") return {hf("self_attn.kv_b_proj.weight", {H * (Dn + Dv), L})};
  if (local == a + "linear_proj.weight") return {hf("self_attn.o_proj.weight", {C, H * Dv})};
  if (local == "mlp.linear_fc1.weight") return {hf("mlp.gate_proj.weight", {F, C}), hf("mlp.up_proj.weight", {F, C})};
  if (local == "mlp.linear_fc2.weight") return {hf("mlp.down_proj.weight", {C, F})};
  if (local == "mlp.router.weight") return {hf("mlp.gate.weight", {E, C})};
  if (local == "mlp.router.expert_bias") return {hf("mlp.gate.e_score_correction_bias", {E})};
  if (local == "mlp.shared_experts.linear_fc1.weight")
    return {hf("mlp.shared_experts.gate_proj.weight", {Fs, C}), hf("mlp.shared_experts.up_proj.weight", {Fs, C})};
  if (local == "mlp.shared_experts.linear_fc2.weight") return {hf("mlp.shared_experts.down_proj.weight", {C, Fs})};
  if (moe == HfMoeLayout::Fused) {
    if (local == "mlp.experts.linear_fc1.weight") return {hf("mlp.experts.gate_up_proj", {E, 2 * Fe, C})};
    if (local == "mlp.experts.linear_fc2.weight") return {hf("mlp.experts.down_proj", {E, C, Fe})};
    return {};
  }
  std::vector<HfPiece> out;
  if (local == "mlp.experts.linear_fc1.weight")
    for (int64_t e = 0; e < E; ++e) {
      out.push_back(hf(fmt::format("mlp.experts.{}.gate_proj.weight", e), {Fe, C}));
      out.push_back(hf(fmt::format("mlp.experts.{}.up_proj.weight", e), {Fe, C}));
    }
  if (local == "mlp.experts.linear_fc2.weight")
    for (int64_t e = 0; e < E; ++e) out.push_back(hf(fmt::format("mlp.experts.{}.down_proj.weight", e), {C, Fe}));
  return out;
}

// The HF name(s) of a layer tensor, by its name within the layer (decoder_spec.h).
std::vector<HfPiece> hf_layer_pieces(const ModelConfig& mc, const std::string& local, int64_t i, HfMoeLayout moe) {
  if (mc.multi_latent_attention) return deepseek_layer_pieces(mc, local, i, moe);
  const int64_t C = mc.hidden_size, D = mc.head_dim(), Hq = mc.num_attention_heads, Hkv = mc.query_groups();
  const int64_t F = mc.ffn_hidden_size, E = mc.num_experts, Fe = mc.moe_ffn_hidden_size;
  auto hf = [&](const std::string& rest, Shape shape) { return HfPiece{hf_layer(i, rest.c_str()), std::move(shape), {}}; };
  if (local == "input_layernorm.weight") return {hf("input_layernorm.weight", {C})};
  if (local == "self_attention.linear_qkv.weight")
    return {hf("self_attn.q_proj.weight", {Hq * D, C}), hf("self_attn.k_proj.weight", {Hkv * D, C}),
            hf("self_attn.v_proj.weight", {Hkv * D, C})};
  if (local == "self_attention.linear_proj.weight") return {hf("self_attn.o_proj.weight", {C, Hq * D})};
  if (local == "pre_mlp_layernorm.weight") return {hf("post_attention_layernorm.weight", {C})};
  if (local == "mlp.linear_fc1.weight") return {hf("mlp.gate_proj.weight", {F, C}), hf("mlp.up_proj.weight", {F, C})};
  if (local == "mlp.linear_fc2.weight") return {hf("mlp.down_proj.weight", {C, F})};
  // Mixtral's sparse MoE block (hf_model.h). Fused (transformers >= 5): Primus's own shapes.
  if (moe == HfMoeLayout::Fused) {
    if (local == "mlp.router.weight") return {hf("mlp.gate.weight", {E, C})};
    if (local == "mlp.experts.linear_fc1.weight") return {hf("mlp.experts.gate_up_proj", {E, 2 * Fe, C})};
    if (local == "mlp.experts.linear_fc2.weight") return {hf("mlp.experts.down_proj", {E, C, Fe})};
    return {};  // none: the caller names the tensor
  }
  // Per expert: router `gate`, experts w1 (gate), w3 (up), w2 (down).
  if (local == "mlp.router.weight") return {hf("block_sparse_moe.gate.weight", {E, C})};
  std::vector<HfPiece> out;
  if (local == "mlp.experts.linear_fc1.weight") {
    for (int64_t e = 0; e < E; ++e) {
      out.push_back(hf(fmt::format("block_sparse_moe.experts.{}.w1.weight", e), {Fe, C}));
      out.push_back(hf(fmt::format("block_sparse_moe.experts.{}.w3.weight", e), {Fe, C}));
    }
    return out;
  }
  if (local == "mlp.experts.linear_fc2.weight") {
    for (int64_t e = 0; e < E; ++e)
      out.push_back(hf(fmt::format("block_sparse_moe.experts.{}.w2.weight", e), {C, Fe}));
    return out;
  }
  return out;  // none: the caller names the tensor
}

}  // namespace

std::vector<HfSource> hf_sources(const ModelConfig& mc, HfMoeLayout moe) {
  std::vector<HfSource> out;
  for (const ParamSpec& p : parameter_table(mc)) {
    HfSource s{p.name, p.shape, {}};
    if (p.name == "embedding.word_embeddings.weight") {
      s.pieces = {{"model.embed_tokens.weight", p.shape, {}}};
    } else if (p.name == "decoder.final_layernorm.weight") {
      s.pieces = {{"model.norm.weight", p.shape, {}}};
    } else if (p.name == "output_layer.weight") {
      s.pieces = {{"lm_head.weight", p.shape, {}}};
    } else if (p.layer >= 0 && p.layer < mc.num_layers) {
      const std::string prefix = fmt::format("decoder.layers.{}.", p.layer);
      s.pieces = hf_layer_pieces(mc, p.name.substr(prefix.size()), p.layer, moe);
    } else if (mc.multi_latent_attention && p.layer >= mc.num_layers) {  // V3's MTP depth k = HF layer p.layer
      const std::string pre = fmt::format("mtp.layers.{}.", p.layer - mc.num_layers), block = "transformer_layer.";
      const std::string local = p.name.substr(pre.size());
      if (local == "enorm.weight" || local == "hnorm.weight" || local == "eh_proj.weight")
        s.pieces = {{hf_layer(p.layer, local.c_str()), p.shape, {}}};
      else if (local == "final_layernorm.weight")
        s.pieces = {{hf_layer(p.layer, "shared_head.norm.weight"), p.shape, {}}};
      else if (local.rfind(block, 0) == 0)
        s.pieces = deepseek_layer_pieces(mc, local.substr(block.size()), p.layer, moe);
    }
    PRIMUS_CHECK(!s.pieces.empty(), "model '{}': tensor '{}' {} has no HuggingFace form in the converter (supported: "
                 "the Llama, Mistral, Mixtral and DeepSeek-V2/V3 layouts)", mc.name, p.name, shape_str(p.shape));
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> hf_mtp_shared_copies(const ModelConfig& mc) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!mc.multi_latent_attention) return out;
  const std::string head = mc.untie_embeddings_and_output_weights ? "output_layer.weight"
                                                                  : "embedding.word_embeddings.weight";
  for (int64_t k = 0; k < mc.mtp_num_layers; ++k) {
    out.emplace_back(hf_layer(mc.num_layers + k, "embed_tokens.weight"), "embedding.word_embeddings.weight");
    out.emplace_back(hf_layer(mc.num_layers + k, "shared_head.head.weight"), head);
  }
  return out;
}

std::vector<std::string> primus_parameter_names(const ModelConfig& mc) {
  std::vector<std::string> n;
  for (const ParamSpec& p : parameter_table(mc)) n.push_back(p.name);
  return n;
}

std::vector<std::string> hf_parameter_names(const ModelConfig& mc, HfMoeLayout moe) {
  std::vector<std::string> n;
  for (const HfSource& s : hf_sources(mc, moe))
    for (const HfPiece& piece : s.pieces) n.push_back(piece.name);
  return n;
}

const char* hf_moe_layout_name(HfMoeLayout layout) {
  return layout == HfMoeLayout::Fused ? "fused" : "per-expert";
}

HfMoeLayout detect_hf_moe_layout(const ModelConfig& mc, const std::vector<std::string>& names,
                                 const std::string& source) {
  if (mc.num_experts <= 0) return HfMoeLayout::PerExpert;
  // The names only one layout has (the routers and experts), from the two tables.
  const std::vector<std::string> per = hf_parameter_names(mc, HfMoeLayout::PerExpert);
  const std::vector<std::string> fused = hf_parameter_names(mc, HfMoeLayout::Fused);
  std::set<std::string> per_only(per.begin(), per.end()), fused_only(fused.begin(), fused.end());
  for (const std::string& n : per) fused_only.erase(n);
  for (const std::string& n : fused) per_only.erase(n);
  const std::string* per_seen = nullptr;
  const std::string* fused_seen = nullptr;
  for (const std::string& n : names) {
    if (!per_seen && per_only.count(n)) per_seen = &n;
    if (!fused_seen && fused_only.count(n)) fused_seen = &n;
  }
  if (per_seen && fused_seen)
    fail("{}: the weights mix HuggingFace's two Mixtral layouts: '{}' is the per-expert one "
         "(block_sparse_moe.experts.N.w1/w2/w3) and '{}' the fused one of transformers >= 5 "
         "(mlp.experts.gate_up_proj / down_proj); re-save the model so that it holds one of them",
         source, *per_seen, *fused_seen);
  return fused_seen ? HfMoeLayout::Fused : HfMoeLayout::PerExpert;
}

namespace {

// Rows of a tensor seen as (rows, last dim).
int64_t rows_of(const Shape& s) { return s.size() <= 1 ? 1 : shape_numel(s) / s.back(); }

// A new (rows.size(), cols) tensor whose row r is row rows[r] of t (a CPU matrix).
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  const Tensor m = t.view({rows_of(t.shape()), t.shape().back()});
  Tensor out = Tensor::empty(t.shape(), t.dtype());
  const size_t row_bytes = static_cast<size_t>(m.size(1)) * dtype_size(m.dtype());
  for (size_t r = 0; r < rows.size(); ++r)
    std::memcpy(static_cast<char*>(out.raw()) + r * row_bytes,
                static_cast<const char*>(m.raw()) + static_cast<size_t>(rows[r]) * row_bytes, row_bytes);
  return out;
}

}  // namespace

NamedTensors hf_to_primus(const ModelConfig& mc, const TensorLookup& hf, HfMoeLayout moe) {
  NamedTensors out;
  for (const HfSource& s : hf_sources(mc, moe)) {
    std::vector<Tensor> parts;
    for (const HfPiece& piece : s.pieces) {
      Tensor t = hf(piece.name);
      expect_shape(t, piece.shape, piece.name);
      if (!piece.rows.empty()) t = gather_rows(t, piece.rows);
      parts.push_back(std::move(t));
    }
    if (parts.size() == 1 && s.pieces[0].shape == s.shape) {  // the HF tensor as it is
      out.emplace_back(s.primus, parts[0]);
      continue;
    }
    for (Tensor& t : parts) t = t.view({rows_of(t.shape()), t.shape().back()});
    out.emplace_back(s.primus, concat_rows(parts, s.primus).view(s.shape));
  }
  return out;
}

NamedTensors primus_to_hf(const ModelConfig& mc, const TensorLookup& primus, HfMoeLayout moe) {
  NamedTensors out;
  // Pieces are row views of the Primus tensors (contiguous, no copy): they stay valid while the
  // source tensors do, e.g. while a mapped checkpoint is open.
  for (const HfSource& s : hf_sources(mc, moe)) {
    Tensor t = primus(s.primus);
    expect_shape(t, s.shape, s.primus);
    if (s.pieces.size() == 1 && !s.pieces[0].rows.empty()) {  // HF row rows[r] = Primus row r (a copy)
      std::vector<int64_t> inverse(s.pieces[0].rows.size());
      for (size_t r = 0; r < inverse.size(); ++r) inverse[static_cast<size_t>(s.pieces[0].rows[r])] = static_cast<int64_t>(r);
      out.emplace_back(s.pieces[0].name, gather_rows(t.view(s.pieces[0].shape), inverse));
      continue;
    }
    if (s.pieces.size() == 1) {
      out.emplace_back(s.pieces[0].name, t.view(s.pieces[0].shape));
      continue;
    }
    const Tensor rows = t.view({rows_of(s.shape), s.shape.back()});
    int64_t r = 0;
    for (const HfPiece& piece : s.pieces) {
      const int64_t n = rows_of(piece.shape);
      out.emplace_back(piece.name, rows.rows(r, r + n).view(piece.shape));
      r += n;
    }
  }
  for (const auto& [name, shared] : hf_mtp_shared_copies(mc)) out.emplace_back(name, primus(shared));
  return out;
}

}  // namespace primus::convert
