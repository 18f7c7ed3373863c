// Reading YAML for configs: files with syntax errors reported as file:line:column, map
// entries with their line numbers (duplicate keys rejected), and scalars typed the way
// YAML's core schema (and PyYAML, for yes/no/on/off) types them — after ${VAR} expansion.
#pragma once

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "config/interpolate.h"
#include "config/source.h"

namespace primus::config {

// Parses a YAML file. Throws primus::Error "path:line:column: YAML syntax error: ..." on a
// syntax error (a quote left open at the end of the file included, which yaml-cpp alone
// accepts), "cannot read path" when the file is missing, and names the size of a file over
// kMaxYamlFileBytes.
constexpr size_t kMaxYamlFileBytes = size_t{16} << 20;
YAML::Node load_yaml_file(const std::string& path);
// A YAML value expands to at most this many nodes when aliases are followed (a "billion
// laughs" file names a few aliases that expand to billions).
constexpr int64_t kMaxYamlNodes = 1'000'000;

// Parses YAML text (for --set values). Throws primus::Error naming `where`.
YAML::Node load_yaml_text(const std::string& text, const Source& where);

// Where `node` sits in `path` (1-based line).
Source source_of(const std::string& path, const YAML::Node& node);

// The entries of a YAML map in file order, each key with its source. Throws on a
// non-map, non-scalar keys and duplicate keys (both lines named).
struct MapEntry {
  std::string key;
  YAML::Node value;
  Source source;  // the key's line
};
std::vector<MapEntry> map_entries(const YAML::Node& map, const std::string& path, const std::string& what);

// A config value: a typed scalar or a list of them, with the scalar's text as written
// (after expansion) so string options can keep "2024" or "3.10" verbatim.
struct Value {
  nlohmann::json json;
  std::string text;
};

// Types a plain (unquoted) scalar: null/~, true/false (and yes/no/on/off), ints (with
// optional _ separators, 0x, 0o), floats (1e-4, .5, .inf, .nan); anything else is a string.
nlohmann::json type_plain_scalar(const std::string& text);

// Reads a scalar, null or a list of scalars. ${VAR} is expanded in every string; a scalar
// that contained ${...} is typed after expansion (a quoted one too), and one that expands
// to "" becomes null. Quoted scalars without ${...} stay strings. Maps are rejected.
Value read_value(const YAML::Node& node, const Source& where, const EnvLookup& env);

}  // namespace primus::config
