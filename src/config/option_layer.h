// A layer of option assignments: one option file with its `extends:` chain, the
// experiment's `overrides:` map, or the command line's --set key=value list.
//
// `extends:` lists files relative to the file that names them. They load recursively;
// later entries override earlier ones and the file itself overrides all of them. A file
// that (indirectly) extends itself is an error that prints the chain.
#pragma once

#include <string>
#include <vector>

#include "config/interpolate.h"
#include "config/source.h"
#include "config/yaml_values.h"

namespace primus::config {

struct Assignment {
  std::string key;
  Value value;
  Source source;
};

// In order of increasing precedence: a later assignment of a key wins.
using Layer = std::vector<Assignment>;

// Loads an option file (flat `key: value` lines plus optional `extends:`).
Layer load_option_file(const std::string& path, const EnvLookup& env);

// Reads a YAML map of options already parsed from `path` (the experiment's overrides).
Layer read_option_map(const YAML::Node& map, const std::string& path, const std::string& what, const EnvLookup& env);

// Parses command-line assignments "key=value". The value is read as YAML ("1e-4" is a
// float, "[a, b]" a list, "null" null); text YAML cannot read as a value stays a string.
Layer parse_assignments(const std::vector<std::string>& sets, const EnvLookup& env);

}  // namespace primus::config
