// The experiment YAML loader: `extends` (the repository's configs/ through PRIMUS_CONFIGS_DIR),
// ${VAR:default} interpolation, `modules.pre_trainer.overrides`, then validation.
#include "config/config.h"
#include "core/error.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = primus::fuzz::write_input("experiment.yaml", data, size);
  try {
    primus::config::Config c = primus::config::load_experiment(path, std::vector<std::string>{});
    (void)primus::config::model_config(c);
  } catch (const primus::Error&) {
  }
  return 0;
}
