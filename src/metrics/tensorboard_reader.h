// Reads the scalars back out of TensorBoard event files (for `primus plot` and tests).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace primus::metrics {

struct ScalarPoint {
  int64_t step = 0;
  double wall_time = 0;
  double value = 0;
};

// Event files (names containing "tfevents") directly in `dir`, sorted by name (= by start time).
std::vector<std::string> find_event_files(const std::string& dir);

// tag -> points sorted by step. `path` is one event file or a directory of them (all files
// merged, in name order; a later file's point for the same step replaces the earlier one,
// as a resumed run rewrites the steps after its checkpoint). Verifies every record's CRCs.
std::map<std::string, std::vector<ScalarPoint>> read_tensorboard_scalars(const std::string& path);

}  // namespace primus::metrics
