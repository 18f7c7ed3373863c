// `primus train` after the config is loaded: options from the config, then the loop.
#include "train/train.h"

#include "core/tensor.h"
#include "train/train_options.h"
#include "train/trainer.h"

namespace primus::train {

int run(const primus::config::Config& cfg) {
  const TrainOptions options = train_options(cfg, cuda_available());
  return train(options).exit_code;
}

}  // namespace primus::train
