#include "convert/primus_config.h"

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
  PRIMUS_CHECK(mc.num_experts == 0, "model '{}': num_experts {}: MoE models are not supported by the converter "
               "yet (dense Llama family only)", mc.name, mc.num_experts);
  PRIMUS_CHECK(!mc.multi_latent_attention && mc.mtp_num_layers == 0,
               "model '{}': multi-latent attention / multi-token prediction are not supported by the converter "
               "yet (dense Llama family only)", mc.name);
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
  return c;
}

}  // namespace primus::convert
