// Tiny Llama checkpoints for the generation tests (unit tests and the PyTorch reference
// script): a DecoderModel saved with checkpoint::CheckpointWriter the way training saves
// (model.safetensors + config.json + meta.json, no optimizer or RNG state), its config.json
// the one `primus convert` writes for a model (convert::config_for_model).
#pragma once

#include <cstdint>
#include <string>

#include "../test_util.h"
#include "config/config.h"
#include "convert/primus_config.h"
#include "model/decoder.h"
#include "checkpoint/checkpoint.h"

namespace primus::test_generate {

// GQA (4 query heads, 2 kv heads), untied output layer, 50 real ids in 64 rows.
inline ModelConfig tiny_gqa() {
  ModelConfig c = test::tiny_llama({.name = "tiny_gqa", .hidden = 32, .ffn = 48, .vocab = 50, .padded_vocab = 64});
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

// Builds DecoderModel(model_config(config_for_model(m))) with `seed` on the CPU and saves
// it to `save_dir` at `iteration` (weights + config only). Returns the saved model's
// config as the loader will see it.
inline ModelConfig save_test_checkpoint(const std::string& save_dir, const ModelConfig& m, uint64_t seed,
                                        int64_t iteration = 7) {
  const config::Config cfg = convert::config_for_model(m);
  const ModelConfig mc = config::model_config(cfg);
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = seed;
  DecoderModel model(mc, ctx, opt);
  checkpoint::CheckpointContent content;
  content.iteration = iteration;
  for (NamedTensor* p : model.parameters()) content.model.emplace_back(p->name, p->value);
  content.config = cfg.to_json();
  checkpoint::CheckpointWriter writer(save_dir);
  writer.save(content);
  writer.wait();
  return mc;
}

}  // namespace primus::test_generate
