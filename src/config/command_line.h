// Command-line pieces shared by `primus train` and `primus config`: the world size and
// bare `key=value` arguments.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/interpolate.h"

namespace primus::config {

// --world-size when given (> 0), else $WORLD_SIZE when set, else `fallback`
// (0 = the smallest world that fits the parallel layout). Throws on a malformed value.
int resolve_world_size(std::optional<int> flag, const EnvLookup& env, int fallback);

// Splits positional arguments into an optional leading mode word (one of `modes`) and
// key=value assignments; anything else is an error naming the argument.
struct PositionalArgs {
  std::string mode;
  std::vector<std::string> sets;
};
PositionalArgs split_positional(const std::vector<std::string>& args, const std::vector<std::string>& modes,
                                const std::string& command);

}  // namespace primus::config
