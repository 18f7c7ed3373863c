// Tiny Llama checkpoints for the generation tests (unit tests and the PyTorch reference
// script): a Config whose model keys describe a ModelConfig, and a DecoderModel saved with
// train::CheckpointWriter the way training saves (model.safetensors + config.json +
// meta.json, no optimizer or RNG state).
#pragma once

#include <cstdint>
#include <string>

#include "config/config.h"
#include "model/decoder.h"
#include "train/checkpoint.h"

namespace primus::test_generate {

// GQA (4 query heads, 2 kv heads), untied output layer, 50 real ids in 64 rows.
inline ModelConfig tiny_gqa() {
  ModelConfig c;
  c.name = "tiny_gqa";
  c.num_layers = 2;
  c.hidden_size = 32;
  c.ffn_hidden_size = 48;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.vocab_size = 50;
  c.padded_vocab_size = 64;
  c.max_position_embeddings = 64;
  c.init_method_std = 0.1;
  c.untie_embeddings_and_output_weights = true;
  return c;
}

// Llama 3.1 RoPE scaling with original_max_position_embeddings = 16, so that positions of
// a few dozen tokens see frequencies in all three bands (kept / interpolated / divided);
// tied embeddings, MHA with 3 heads, base 500000.
inline ModelConfig tiny_rope_scaling_tied() {
  ModelConfig c = tiny_gqa();
  c.name = "tiny_rope_scaling_tied";
  c.hidden_size = 24;
  c.ffn_hidden_size = 40;
  c.num_attention_heads = 3;
  c.num_query_groups = 3;
  c.vocab_size = 37;
  c.padded_vocab_size = 40;
  c.untie_embeddings_and_output_weights = false;
  c.rotary_base = 500000;
  c.use_rope_scaling = true;
  c.rope_scaling_factor = 8;
  c.rope_low_freq_factor = 1;
  c.rope_high_freq_factor = 4;
  c.original_max_position_embeddings = 16;
  c.norm_epsilon = 1e-6;
  return c;
}

// One kv head (MQA), head dim 12 != hidden / heads, half of each head rotated, 3 layers.
inline ModelConfig tiny_mqa_partial_rotary() {
  ModelConfig c = tiny_gqa();
  c.name = "tiny_mqa_partial_rotary";
  c.num_layers = 3;
  c.num_query_groups = 1;
  c.kv_channels = 12;
  c.rotary_percent = 0.5;
  return c;
}

// A Config whose model keys give back `m` through config::model_config (vocabulary padded
// to a multiple of padded_vocab_size's divisor: make_vocab_size_divisible_by is chosen so
// that the padding lands exactly on m.padded_vocab_size).
inline config::Config config_with_model(const ModelConfig& m) {
  config::Config c;
  const config::Source src{"test_generate", 0};
  auto set = [&](const char* key, const nlohmann::json& v) { c.set(key, v, src); };
  c.model_name = m.name;
  set("num_layers", m.num_layers);
  set("hidden_size", m.hidden_size);
  set("ffn_hidden_size", m.ffn_hidden_size);
  set("num_attention_heads", m.num_attention_heads);
  set("group_query_attention", true);
  set("num_query_groups", m.num_query_groups > 0 ? m.num_query_groups : m.num_attention_heads);
  if (m.kv_channels > 0) set("kv_channels", m.kv_channels);
  set("max_position_embeddings", m.max_position_embeddings);
  set("seq_length", m.max_position_embeddings);
  set("vocab_size", m.vocab_size);
  set("make_vocab_size_divisible_by", m.padded_vocab_size);  // ceil(V / P) * P == P for V <= P
  set("normalization", "RMSNorm");
  set("norm_epsilon", m.norm_epsilon);
  set("swiglu", true);
  set("add_bias_linear", false);
  set("add_qkv_bias", false);
  set("untie_embeddings_and_output_weights", m.untie_embeddings_and_output_weights);
  set("init_method_std", m.init_method_std);
  set("attention_dropout", 0.0);
  set("hidden_dropout", 0.0);
  set("position_embedding_type", "rope");
  set("rotary_base", m.rotary_base);
  set("rotary_percent", m.rotary_percent);
  set("use_rope_scaling", m.use_rope_scaling);
  set("rope_scaling_factor", m.rope_scaling_factor);
  set("rope_low_freq_factor", m.rope_low_freq_factor);
  set("rope_high_freq_factor", m.rope_high_freq_factor);
  set("original_max_position_embeddings", m.original_max_position_embeddings);
  return c;
}

// Builds DecoderModel(model_config(config_with_model(m))) with `seed` on the CPU and saves
// it to `save_dir` at `iteration` (weights + config only). Returns the saved model's
// config as the loader will see it.
inline ModelConfig save_test_checkpoint(const std::string& save_dir, const ModelConfig& m, uint64_t seed,
                                        int64_t iteration = 7) {
  const config::Config cfg = config_with_model(m);
  const ModelConfig mc = config::model_config(cfg);
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = seed;
  DecoderModel model(mc, ctx, opt);
  train::CheckpointContent content;
  content.iteration = iteration;
  for (NamedTensor* p : model.parameters()) content.model.emplace_back(p->name, p->value);
  content.config = cfg.to_json();
  train::CheckpointWriter writer(save_dir);
  writer.save(content);
  writer.wait();
  return mc;
}

}  // namespace primus::test_generate
