// Helpers shared by the config tests: load a fixture from tests/data/config with a
// private environment (no setenv), and find a fixture line by its text.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/error.h"

namespace primus::config::testing {

inline std::string fixture(const std::string& name) { return std::string(PRIMUS_TEST_DATA_DIR) + "/config/" + name; }

inline EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// Loads tests/data/config/<name> against the fixture configs dir.
inline Config load_fixture(const std::string& name, std::vector<std::string> sets = {},
                           std::map<std::string, std::string> env = {}, int world_size = 1) {
  LoadOptions o;
  o.sets = std::move(sets);
  o.world_size = world_size;
  o.configs_dir = fixture("configs");
  o.env = env_of(std::move(env));
  return load_experiment(fixture(name), o);
}

// The message of the primus::Error that loading throws ("" when it loads).
inline std::string load_error(const std::string& name, std::vector<std::string> sets = {},
                              std::map<std::string, std::string> env = {}, int world_size = 1) {
  try {
    load_fixture(name, std::move(sets), std::move(env), world_size);
  } catch (const primus::Error& e) {
    return e.what();
  }
  return "";
}

// 1-based number of the first line of `path` that contains `text` (0 when none).
inline int line_of(const std::string& path, const std::string& text) {
  std::ifstream in(path);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.find(text) != std::string::npos) return n;
  return 0;
}

// "config/<name>:<line of text>": a suffix of the path messages print for a fixture
// (absolute, or relative to the working directory), with the line.
inline std::string at_line(const std::string& name, const std::string& text) {
  const int n = line_of(fixture(name), text);
  EXPECT_GT(n, 0) << text << " not in " << name;
  return "config/" + name + ":" + std::to_string(n);
}

// A regex matching "<key_value> (<...><at>)", e.g. key_value "bf16 = true" and at
// "config/x.yaml:12": the message shows the value with its source, whatever the path prefix.
inline std::string shown_with_source(const std::string& key_value, const std::string& at) {
  auto escape = [](const std::string& s) {
    std::string out;
    for (char c : s) {
      if (std::string("\\.^$|()[]{}*+?").find(c) != std::string::npos) out += '\\';
      out += c;
    }
    return out;
  };
  return escape(key_value) + " \\([^)]*" + escape(at) + "\\)";
}

}  // namespace primus::config::testing
