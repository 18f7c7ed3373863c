// The typed option schema: every key an experiment may set, with its type, default,
// allowed range or values, group and a one-line doc. Names are Megatron-LM's argument
// names (dest form, e.g. `tensor_model_parallel_size`), plus a few of Primus's own
// (marked "Primus" in their doc).
//
// There is exactly one schema; `primus config --list` prints it. Loading (config.h)
// rejects any key not listed here, coerces values to the listed type and checks ranges.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "config/source.h"

namespace primus::config {

enum class Type {
  Bool,
  Int,
  Float,
  String,
  Enum,        // a string from `choices`
  StringList,  // a YAML list, or one string split on whitespace (Megatron's nargs='*')
  NumberList,  // a YAML list of numbers, or one string of numbers split on whitespace
};

struct OptionSpec {
  std::string key;
  std::string group;  // e.g. "model", "moe", "optimizer": how --list groups keys
  Type type = Type::String;
  bool nullable = false;           // null is a legal value (Megatron's `None`)
  nlohmann::json default_value;    // already of `type` (or null when nullable)
  std::vector<std::string> choices;  // Enum only
  std::optional<double> min, max;    // numeric range (Int/Float), inclusive unless *_open
  bool min_open = false, max_open = false;
  std::string doc;

  // "int", "float or null", "one of constant|linear|cosine", "list of strings" ...
  std::string type_name() const;
  // "[0, 1)", "> 0", ">= 1" or "" when unbounded.
  std::string range_text() const;
};

class Schema {
 public:
  explicit Schema(std::vector<OptionSpec> options);

  // nullptr when the key is unknown.
  const OptionSpec* find(const std::string& key) const;
  // Like find() but throws primus::Error "unknown config key 'x' (where), did you mean 'y'?".
  const OptionSpec& at(const std::string& key, const Source& where) const;

  const std::vector<OptionSpec>& options() const { return options_; }
  std::vector<std::string> keys() const;
  std::vector<std::string> groups() const;  // in first-appearance order

  // Converts a parsed YAML/CLI value to the option's type, or throws primus::Error naming
  // the key, the source, the value seen and the type expected. `text` is the scalar as
  // written (after ${VAR} expansion); string options take it verbatim so that
  // `exp_name: 2024` stays "2024". Checks enums and numeric ranges too.
  nlohmann::json coerce(const OptionSpec& spec, const nlohmann::json& value, const std::string& text,
                        const Source& where) const;

 private:
  std::vector<OptionSpec> options_;
  std::vector<std::pair<std::string, size_t>> index_;  // sorted by key
};

// The one schema (built once, immutable).
const Schema& schema();

// ", did you mean 'x'?" or "": the closest candidate by edit distance when it is a
// plausible typo, else the shortest candidate containing `word` (or the longest one
// contained in it, at least 4 characters long).
std::string suggest(const std::string& word, const std::vector<std::string>& candidates);

// A value as it reads in a config file: strings bare, null as "null", floats shortest.
std::string format_value(const nlohmann::json& value);

}  // namespace primus::config
