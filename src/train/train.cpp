// Placeholder until the training loop lands (issue #4): another engineer replaces this file.
#include "train/train.h"

#include <fmt/core.h>

namespace primus::train {

int run(const primus::config::Config& cfg) {
  (void)cfg;
  fmt::print(stderr, "primus train: the training loop is not built yet (issue #4)\n");
  return 3;
}

}  // namespace primus::train
