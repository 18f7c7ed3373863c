// The model part of a Primus checkpoint, loaded for inference: the architecture from its
// config.json (config::from_json + config::model_config, the same path training takes)
// and the weights from model.safetensors, converted to the compute dtype on the device.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "model/model_config.h"

namespace primus::infer {

struct InferenceModel {
  ModelConfig config;
  NamedTensorList weights;    // decoder_weight_shapes(config) order, on `device`, in `dtype`
  std::string path;           // the iter_XXXXXXX directory read
  int64_t iteration = 0;
  nlohmann::json config_json; // the checkpoint's config.json as stored
  int64_t lora_merged = 0;    // weights with LoRA adapters merged in (W + lora_alpha / lora_dim B A)
};

// `dir`: a save directory (the tracker's iteration, or `iteration`) or an iter_XXXXXXX
// directory. Errors name the checkpoint path, the missing part or key and the fix.
// padded_vocab_size follows the stored embedding's rows when they differ from the
// config's padding (e.g. a checkpoint padded for another tensor-parallel size). A LoRA run's
// checkpoint is loaded with its adapters merged (convert/lora_adapters.h).
InferenceModel load_inference_model(const std::string& dir, std::optional<int64_t> iteration, Device device,
                                    DType dtype);

}  // namespace primus::infer
