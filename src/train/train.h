// The training entry point that `primus train` calls after the experiment config has been
// loaded and validated. The training loop (issue #4) implements it in train.cpp.
#pragma once

#include "config/config.h"

namespace primus::train {

// Runs the experiment described by `cfg` (resolved and validated by config::load_experiment).
// Returns the process exit code: 0 on success.
int run(const primus::config::Config& cfg);

}  // namespace primus::train
