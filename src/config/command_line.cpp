#include "config/command_line.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "config/schema.h"
#include "core/error.h"
#include "core/strings.h"

namespace primus::config {

int resolve_world_size(std::optional<int> flag, const EnvLookup& env, int fallback) {
  if (flag) {
    if (*flag <= 0) throw Error(fmt::format("--world-size {} must be a positive number of processes", *flag));
    return *flag;
  }
  if (auto text = env("WORLD_SIZE")) {
    int v = 0;
    auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || p != text->data() + text->size() || v <= 0)
      throw Error(fmt::format("WORLD_SIZE={} is not a positive whole number", *text));
    return v;
  }
  return fallback;
}

PositionalArgs split_positional(const std::vector<std::string>& args, const std::vector<std::string>& modes,
                                const std::string& command) {
  PositionalArgs out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (i == 0 && std::find(modes.begin(), modes.end(), a) != modes.end()) {
      out.mode = a;
    } else if (a.find('=') != std::string::npos) {
      out.sets.push_back(a);
    } else {
      std::string expected = "key=value";
      if (!modes.empty()) {
        expected = "";
        for (const auto& m : modes) expected += m + "|";
        expected += "key=value";
      }
      throw Error(fmt::format("{}: unexpected argument '{}'{}: expected {}", command, a, suggest(a, modes), expected));
    }
  }
  return out;
}

}  // namespace primus::config
