#include "convert/primus_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace primus::convert {

namespace {

// Smallest k in {1, 2, 4, ..., 1024} with ceil(V / k) * k == P; P itself when none is.
int64_t vocab_multiple(int64_t vocab, int64_t padded) {
  for (int64_t k = 1; k <= 1024; k *= 2)
    if ((vocab + k - 1) / k * k == padded) return k;
  return padded;
}

}  // namespace

config::Config config_for_model(const ModelConfig& mc) {
  PRIMUS_CHECK(mc.mtp_num_layers == 0 || mc.multi_latent_attention,
               "model '{}': multi-token prediction modules convert for DeepSeek models only (mtp_num_layers {})",
               mc.name, mc.mtp_num_layers);
  PRIMUS_CHECK(mc.num_layers > 0 && mc.hidden_size > 0 && mc.num_attention_heads > 0 && mc.padded_vocab_size > 0,
               "model '{}': num_layers, hidden_size, num_attention_heads and the vocabulary must be positive "
               "(got {}, {}, {}, {})", mc.name, mc.num_layers, mc.hidden_size, mc.num_attention_heads,
               mc.padded_vocab_size);
  const int64_t vocab = mc.vocab_size > 0 ? mc.vocab_size : mc.padded_vocab_size;
  PRIMUS_CHECK(vocab <= mc.padded_vocab_size, "model '{}': vocab_size {} exceeds the {} embedding rows", mc.name,
               vocab, mc.padded_vocab_size);

  config::Config c;
  const config::Source src{"derived (model of the converted checkpoint)", 0};
  auto set = [&](const char* key, const nlohmann::json& v) { c.set(key, v, src); };
  c.model_name = mc.name;
  set("num_layers", mc.num_layers);
  set("hidden_size", mc.hidden_size);
  set("ffn_hidden_size", mc.ffn_hidden_size);
  set("num_attention_heads", mc.num_attention_heads);
  const int64_t groups = mc.num_query_groups > 0 ? mc.num_query_groups : mc.num_attention_heads;
  set("group_query_attention", groups != mc.num_attention_heads);
  set("num_query_groups", groups);
  set("kv_channels", mc.head_dim());
  set("max_position_embeddings", mc.max_position_embeddings);
  set("vocab_size", vocab);
  set("make_vocab_size_divisible_by", vocab_multiple(vocab, mc.padded_vocab_size));
  set("swiglu", mc.swiglu);
  set("add_bias_linear", mc.add_bias_linear);
  set("add_qkv_bias", mc.add_qkv_bias);
  set("untie_embeddings_and_output_weights", mc.untie_embeddings_and_output_weights);
  set("normalization", mc.normalization);
  set("norm_epsilon", mc.norm_epsilon);
  set("position_embedding_type", mc.position_embedding_type);
  set("rotary_base", mc.rotary_base);
  set("rotary_percent", mc.rotary_percent);
  set("rotary_interleaved", mc.rotary_interleaved);
  set("use_rope_scaling", mc.use_rope_scaling);
  set("rope_scaling_factor", mc.rope_scaling_factor);
  set("rope_low_freq_factor", mc.rope_low_freq_factor);
  set("rope_high_freq_factor", mc.rope_high_freq_factor);
  set("original_max_position_embeddings", mc.original_max_position_embeddings);
  set("rotary_scaling_factor", mc.rotary_scaling_factor);
  set("mscale", mc.mscale);
  set("mscale_all_dim", mc.mscale_all_dim);
  set("beta_fast", mc.beta_fast);
  set("beta_slow", mc.beta_slow);
  set("init_method_std", mc.init_method_std);
  set("attention_dropout", mc.attention_dropout);
  set("hidden_dropout", mc.hidden_dropout);
  if (mc.multi_latent_attention) {
    set("multi_latent_attention", true);
    set("qk_layernorm", mc.qk_layernorm);
    set("q_lora_rank", mc.q_lora_rank > 0 ? nlohmann::json(mc.q_lora_rank) : nlohmann::json());
    set("kv_lora_rank", mc.kv_lora_rank);
    set("qk_head_dim", mc.qk_head_dim);
    set("qk_pos_emb_head_dim", mc.qk_pos_emb_head_dim);
    set("v_head_dim", mc.v_head_dim);
  }
  if (mc.mtp_num_layers > 0) {
    set("mtp_num_layers", mc.mtp_num_layers);
    set("mtp_loss_scaling_factor", mc.mtp_loss_scaling_factor);
  }
  if (mc.num_experts > 0) {
    // Every MoE field model_config() reads; optional keys stay null where the ModelConfig
    // value means "off" (no shared experts, no groups, no z-loss, dropless).
    set("num_experts", mc.num_experts);
    set("moe_router_topk", mc.moe_router_topk);
    set("moe_ffn_hidden_size", mc.moe_ffn_hidden_size);
    if (mc.moe_shared_expert_intermediate_size > 0)
      set("moe_shared_expert_intermediate_size", mc.moe_shared_expert_intermediate_size);
    set("moe_layer_freq", mc.moe_layer_pattern.empty() ? std::to_string(mc.moe_layer_freq)
                                                       : fmt::format("[{}]", fmt::join(mc.moe_layer_pattern, ",")));
    set("moe_first_k_dense_replace", mc.moe_first_k_dense_replace);
    set("moe_router_score_function", mc.moe_router_score_function);
    set("moe_router_pre_softmax", mc.moe_router_pre_softmax);
    set("moe_router_topk_scaling_factor", mc.moe_router_topk_scaling_factor);
    if (mc.moe_router_num_groups > 0) {
      set("moe_router_num_groups", mc.moe_router_num_groups);
      set("moe_router_group_topk", mc.moe_router_group_topk);
      set("moe_router_group_score", mc.moe_router_group_score);
    }
    set("moe_router_enable_expert_bias", mc.moe_router_enable_expert_bias);
    set("moe_router_bias_update_rate", mc.moe_router_bias_update_rate);
    set("moe_router_load_balancing_type", mc.moe_router_load_balancing_type);
    set("moe_aux_loss_coeff", mc.moe_aux_loss_coeff);
    if (mc.moe_z_loss_coeff > 0) set("moe_z_loss_coeff", mc.moe_z_loss_coeff);
    if (mc.moe_expert_capacity_factor > 0) set("moe_expert_capacity_factor", mc.moe_expert_capacity_factor);
    set("moe_token_drop_policy", mc.moe_token_drop_policy);
    set("moe_pad_expert_input_to_capacity", mc.moe_pad_expert_input_to_capacity);
  }
  return c;
}

}  // namespace primus::convert
