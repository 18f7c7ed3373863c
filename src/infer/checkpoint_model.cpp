#include "infer/checkpoint_model.h"

#include "config/config.h"
#include "model/lora_weights.h"
#include "core/error.h"
#include "infer/cached_decoder.h"
#include "checkpoint/checkpoint.h"

namespace primus::infer {

InferenceModel load_inference_model(const std::string& dir, std::optional<int64_t> iteration, Device device,
                                    DType dtype) {
  const checkpoint::CheckpointReader reader(dir, iteration);
  InferenceModel m;
  m.path = reader.path();
  m.iteration = reader.iteration();
  PRIMUS_CHECK(reader.parts().config,
               "checkpoint '{}' has no config.json: generation needs the model architecture it records (save the "
               "checkpoint with a config, or convert the HF model with `primus convert hf-to-primus`)",
               m.path);
  PRIMUS_CHECK(reader.parts().model, "checkpoint '{}' has no model.safetensors (no weights to generate with)", m.path);
  m.config_json = reader.config();
  try {
    m.config = config::model_config(config::from_json(m.config_json));
  } catch (const Error& e) {
    fail("checkpoint '{}/config.json': {}", m.path, e.what());
  }
  if (m.config.name.empty()) m.config.name = "checkpoint";
  const SafetensorsFile& file = reader.model_file();
  const std::string embedding = "embedding.word_embeddings.weight";
  if (file.contains(embedding)) {
    const Shape& s = file.entry(embedding).shape;
    if (s.size() == 2 && s[0] != m.config.padded_vocab_size) {
      PRIMUS_CHECK(s[0] >= m.config.vocab_size,
                   "checkpoint '{}': '{}' has {} rows, fewer than the config's vocab_size {}", m.path, embedding,
                   s[0], m.config.vocab_size);
      m.config.padded_vocab_size = s[0];
    }
  }
  check_buildable(m.config, "generate");
  for (const auto& [name, shape] : decoder_weight_shapes(m.config))
    m.weights.emplace_back(name, Tensor::empty(shape, dtype, device));
  // A LoRA run's checkpoint: the adapters are merged into their base weights (W + s B A).
  const std::vector<std::string> adapted = lora_adapted_weights(file);
  if (adapted.empty()) {
    checkpoint::load_tensors_into(file, m.weights, /*strict=*/true);
    return m;
  }
  for (const auto& e : file.entries()) {
    bool known = is_lora_tensor(e.name);
    for (const auto& [name, t] : m.weights) known = known || name == e.name;
    PRIMUS_CHECK(known, "{}: unknown tensor '{}' (not a parameter of this model or a LoRA adapter)", file.path(),
                 e.name);
  }
  checkpoint::load_tensors_into(file, m.weights, /*strict=*/false);
  const LoraConfig lora = lora_config_of(m.config_json, m.path + "/config.json");
  for (auto& [name, t] : m.weights)
    if (std::find(adapted.begin(), adapted.end(), name) != adapted.end()) {
      const Tensor merged = merged_lora_weight(file, name, lora.scaling());
      t.copy_from(Tensor::from_floats(merged.to_float_vector(), t.shape(), t.dtype(), t.device()));
    }
  m.lora_merged = static_cast<int64_t>(adapted.size());
  return m;
}

}  // namespace primus::infer
