// model_config(): the architecture keys of a resolved Config -> ModelConfig.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "config/config.h"
#include "core/error.h"

namespace primus::config {

namespace {

int64_t int_or(const Config& c, const std::string& key, int64_t fallback) { return c.has(key) ? c.i(key) : fallback; }
double float_or(const Config& c, const std::string& key, double fallback) { return c.has(key) ? c.f(key) : fallback; }

int64_t required(const Config& c, const std::string& key) {
  if (!c.has(key))
    throw Error(fmt::format("{}: '{}' is not set: the model file (the experiment's `model:`) must set it",
                            c.experiment_path.empty() ? "config" : c.experiment_path, key));
  return c.i(key);
}

// Megatron's list expression: terms "[a, b, ...]" optionally times an integer, joined by "+",
// optionally in parentheses.
std::vector<int> parse_layer_list(const std::string& text) {
  std::string t;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) t += ch;
  while (t.size() >= 2 && t.front() == '(' && t.back() == ')') t = t.substr(1, t.size() - 2);
  std::vector<int> out;
  size_t i = 0;
  auto bad = [&](const char* why) {
    throw Error(fmt::format("'{}' is not a layer list: {} (write e.g. \"([0]*3+[1]*58)\" or \"[0,1,1]\")", text, why));
  };
  auto number = [&] {
    size_t j = i;
    while (j < t.size() && std::isdigit(static_cast<unsigned char>(t[j]))) ++j;
    if (j == i) bad("a number was expected");
    const int64_t v = std::stoll(t.substr(i, j - i));
    i = j;
    return v;
  };
  while (i < t.size()) {
    if (t[i] != '[') bad("a '[' was expected");
    ++i;
    std::vector<int> term;
    while (i < t.size() && t[i] != ']') {
      const int64_t v = number();
      if (v != 0 && v != 1) bad("entries are 0 (dense) or 1 (MoE)");
      term.push_back(static_cast<int>(v));
      if (i < t.size() && t[i] == ',') ++i;
    }
    if (i >= t.size()) bad("a ']' is missing");
    ++i;
    int64_t repeat = 1;
    if (i < t.size() && t[i] == '*') {
      ++i;
      repeat = number();
    }
    for (int64_t r = 0; r < repeat; ++r) out.insert(out.end(), term.begin(), term.end());
    if (i < t.size()) {
      if (t[i] != '+') bad("terms are joined by '+'");
      ++i;
    }
  }
  return out;
}

}  // namespace

MoeLayerFreq parse_moe_layer_freq(const std::string& text, int64_t num_layers) {
  MoeLayerFreq f;
  std::string t;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) t += ch;
  if (!t.empty() && std::all_of(t.begin(), t.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); })) {
    f.every = std::stoll(t);
    if (f.every < 1) throw Error(fmt::format("'{}' must be >= 1 (every k-th layer is an MoE layer)", text));
    return f;
  }
  f.pattern = parse_layer_list(text);
  if (static_cast<int64_t>(f.pattern.size()) != num_layers)
    throw Error(fmt::format("'{}' lists {} layers but the model has num_layers = {}", text, f.pattern.size(),
                            num_layers));
  return f;
}

ModelConfig model_config(const Config& c) {
  ModelConfig m;
  m.name = c.model_name;
  m.num_layers = required(c, "num_layers");
  m.hidden_size = required(c, "hidden_size");
  m.num_attention_heads = required(c, "num_attention_heads");
  m.vocab_size = required(c, "vocab_size");
  // Megatron pads the vocabulary so each tensor-parallel shard is a multiple of
  // make_vocab_size_divisible_by: ceil(V / (k*tp)) * (k*tp).
  const int64_t multiple = c.i("make_vocab_size_divisible_by") * c.i("tensor_model_parallel_size");
  m.padded_vocab_size = (m.vocab_size + multiple - 1) / multiple * multiple;

  m.num_query_groups = c.b("group_query_attention") ? int_or(c, "num_query_groups", m.num_attention_heads)
                                                    : m.num_attention_heads;
  m.kv_channels = int_or(c, "kv_channels", 0);
  m.ffn_hidden_size = int_or(c, "ffn_hidden_size", c.b("swiglu") ? (8 * m.hidden_size / 3) / 64 * 64 : 4 * m.hidden_size);
  m.max_position_embeddings = int_or(c, "max_position_embeddings", c.i("seq_length"));
  m.swiglu = c.b("swiglu");
  m.add_bias_linear = c.b("add_bias_linear");
  m.add_qkv_bias = c.b("add_qkv_bias");
  m.untie_embeddings_and_output_weights = c.b("untie_embeddings_and_output_weights");
  m.normalization = c.s("normalization");
  m.norm_epsilon = c.f("norm_epsilon");
  m.position_embedding_type = c.s("position_embedding_type");
  m.rotary_base = c.f("rotary_base");
  m.rotary_percent = c.f("rotary_percent");
  m.rotary_interleaved = c.b("rotary_interleaved");
  m.use_rope_scaling = c.b("use_rope_scaling");
  m.rope_scaling_factor = c.f("rope_scaling_factor");
  m.rope_low_freq_factor = c.f("rope_low_freq_factor");
  m.rope_high_freq_factor = c.f("rope_high_freq_factor");
  m.original_max_position_embeddings = c.i("original_max_position_embeddings");
  m.rotary_scaling_factor = c.f("rotary_scaling_factor");
  m.mscale = c.f("mscale");
  m.mscale_all_dim = c.f("mscale_all_dim");
  m.beta_fast = c.f("beta_fast");
  m.beta_slow = c.f("beta_slow");
  m.init_method_std = c.f("init_method_std");
  m.attention_dropout = c.f("attention_dropout");
  m.hidden_dropout = c.f("hidden_dropout");

  m.num_experts = int_or(c, "num_experts", 0);
  m.moe_router_topk = c.i("moe_router_topk");
  m.moe_ffn_hidden_size = m.num_experts > 0 ? int_or(c, "moe_ffn_hidden_size", m.ffn_hidden_size) : 0;
  m.moe_shared_expert_intermediate_size = int_or(c, "moe_shared_expert_intermediate_size", 0);
  const MoeLayerFreq freq = parse_moe_layer_freq(c.s("moe_layer_freq"), m.num_layers);
  m.moe_layer_freq = freq.every;
  m.moe_layer_pattern = freq.pattern;
  m.moe_first_k_dense_replace = c.i("moe_first_k_dense_replace");
  m.moe_router_score_function = c.s("moe_router_score_function");
  m.moe_router_enable_expert_bias = c.b("moe_router_enable_expert_bias");
  m.moe_router_num_groups = int_or(c, "moe_router_num_groups", 0);
  m.moe_router_group_topk = int_or(c, "moe_router_group_topk", 0);
  if (c.has("moe_router_group_score")) m.moe_router_group_score = c.s("moe_router_group_score");
  m.moe_router_topk_scaling_factor = float_or(c, "moe_router_topk_scaling_factor", 1.0);
  m.moe_aux_loss_coeff = c.f("moe_aux_loss_coeff");
  m.moe_router_pre_softmax = c.b("moe_router_pre_softmax");
  m.moe_router_load_balancing_type = c.s("moe_router_load_balancing_type");
  m.moe_router_bias_update_rate = c.f("moe_router_bias_update_rate");
  m.moe_z_loss_coeff = float_or(c, "moe_z_loss_coeff", 0.0);
  m.moe_expert_capacity_factor = float_or(c, "moe_expert_capacity_factor", 0.0);
  m.moe_token_drop_policy = c.s("moe_token_drop_policy");
  m.moe_pad_expert_input_to_capacity = c.b("moe_pad_expert_input_to_capacity");

  m.multi_latent_attention = c.b("multi_latent_attention");
  m.q_lora_rank = int_or(c, "q_lora_rank", 0);
  m.kv_lora_rank = c.i("kv_lora_rank");
  m.qk_head_dim = c.i("qk_head_dim");
  m.qk_pos_emb_head_dim = c.i("qk_pos_emb_head_dim");
  m.v_head_dim = c.i("v_head_dim");
  m.qk_layernorm = c.b("qk_layernorm");

  m.mtp_num_layers = int_or(c, "mtp_num_layers", 0);
  m.mtp_loss_scaling_factor = c.f("mtp_loss_scaling_factor");
  return m;
}

}  // namespace primus::config
