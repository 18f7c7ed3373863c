// HF config.json import (Llama, Mistral, Mixtral, DeepSeek-V2/V3) and the buildability check
// of the model it describes.
#include <nlohmann/json.hpp>

#include "convert/hf_model.h"
#include "core/error.h"
#include "model/decoder_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const primus::ModelConfig mc = primus::convert::model_config_from_hf(j, "config.json");
    primus::check_buildable(mc);
  } catch (const primus::Error&) {
  }
  return 0;
}
