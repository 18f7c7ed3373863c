#include "config/schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "config/schema_options.h"
#include "core/error.h"
#include "core/strings.h"

namespace primus::config {

namespace {

std::string join(const std::vector<std::string>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// `"abc" (a string)`, `3.5 (a float)`, `[1, 2] (a list)` — for "got ..." in messages.
std::string describe_seen(const nlohmann::json& v, const std::string& text) {
  const std::string shown = text.empty() ? format_value(v) : text;
  if (v.is_string()) return fmt::format("\"{}\" (a string)", shown);
  if (v.is_boolean()) return fmt::format("{} (a bool)", shown);
  if (v.is_number_integer() || v.is_number_unsigned()) return fmt::format("{} (an int)", shown);
  if (v.is_number_float()) return fmt::format("{} (a float)", shown);
  if (v.is_array()) return fmt::format("{} (a list)", format_value(v));
  if (v.is_object()) return "a map";
  return "null";
}

// Whitespace-separated words: Megatron's nargs='*' options written as one string.
std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    size_t j = i;
    while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::optional<double> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string OptionSpec::type_name() const {
  std::string t;
  switch (type) {
    case Type::Bool: t = "bool"; break;
    case Type::Int: t = "int"; break;
    case Type::Float: t = "float"; break;
    case Type::String: t = "string"; break;
    case Type::Enum: t = "one of " + join(choices, "|"); break;
    case Type::StringList: t = "list of strings"; break;
    case Type::NumberList: t = "list of numbers"; break;
  }
  return nullable ? t + " or null" : t;
}

std::string OptionSpec::range_text() const {
  auto num = [](double v) { return fmt::format("{}", v); };
  if (min && max) return fmt::format("{}{}, {}{}", min_open ? "(" : "[", num(*min), num(*max), max_open ? ")" : "]");
  if (min) return fmt::format("{} {}", min_open ? ">" : ">=", num(*min));
  if (max) return fmt::format("{} {}", max_open ? "<" : "<=", num(*max));
  return "";
}

Schema::Schema(std::vector<OptionSpec> options) : options_(std::move(options)) {
  for (size_t i = 0; i < options_.size(); ++i) index_.emplace_back(options_[i].key, i);
  std::sort(index_.begin(), index_.end());
  for (size_t i = 1; i < index_.size(); ++i)
    PRIMUS_CHECK(index_[i].first != index_[i - 1].first, "config schema lists '{}' twice", index_[i].first);
}

const OptionSpec* Schema::find(const std::string& key) const {
  auto it = std::lower_bound(index_.begin(), index_.end(), key,
                             [](const auto& entry, const std::string& k) { return entry.first < k; });
  if (it == index_.end() || it->first != key) return nullptr;
  return &options_[it->second];
}

const OptionSpec& Schema::at(const std::string& key, const Source& where) const {
  if (const OptionSpec* spec = find(key)) return *spec;
  throw Error(fmt::format("{}: unknown config key '{}'{} (`primus config --list` shows every key)", where.str(),
                          key, suggest(key, keys())));
}

std::vector<std::string> Schema::keys() const {
  std::vector<std::string> out;
  out.reserve(options_.size());
  for (const auto& o : options_) out.push_back(o.key);
  return out;
}

std::vector<std::string> Schema::groups() const {
  std::vector<std::string> out;
  for (const auto& o : options_)
    if (std::find(out.begin(), out.end(), o.group) == out.end()) out.push_back(o.group);
  return out;
}

nlohmann::json Schema::coerce(const OptionSpec& spec, const nlohmann::json& value, const std::string& text,
                              const Source& where) const {
  auto type_error = [&]() -> Error {
    return Error(fmt::format("{}: '{}' expects {}, got {}", where.str(), spec.key, spec.type_name(),
                             describe_seen(value, text)));
  };
  if (value.is_null()) {
    if (spec.nullable) return nullptr;
    throw Error(fmt::format("{}: '{}' must not be null (it expects {})", where.str(), spec.key, spec.type_name()));
  }
  if (value.is_object()) throw type_error();

  nlohmann::json out;
  switch (spec.type) {
    case Type::Bool:
      if (!value.is_boolean()) throw type_error();
      return value;
    case Type::Int:
      if (value.is_number_integer()) {
        out = value.get<int64_t>();
      } else if (value.is_number_float()) {
        // 1e9 in YAML is a float; accept it for an int key when it is a whole number.
        const double d = value.get<double>();
        if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9.007199254740992e15) throw type_error();
        out = static_cast<int64_t>(d);
      } else {
        throw type_error();
      }
      break;
    case Type::Float:
      if (!value.is_number()) throw type_error();
      out = value.get<double>();
      if (std::isnan(out.get<double>()))  // .nan passes every range check; no option means it
        throw Error(fmt::format("{}: '{}' = .nan is not a number; set a {} value{}", where.str(), spec.key,
                                spec.type_name(), spec.range_text().empty() ? "" : " " + spec.range_text()));
      break;
    case Type::String:
      if (value.is_string()) return value;
      if (value.is_array()) throw type_error();
      return text.empty() ? format_value(value) : text;
    case Type::Enum: {
      if (value.is_array()) throw type_error();
      const std::string s = value.is_string() ? value.get<std::string>() : (text.empty() ? format_value(value) : text);
      if (std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end())
        throw Error(fmt::format("{}: '{}' = '{}' is not allowed: expected {}{}", where.str(), spec.key, s,
                                spec.type_name(), suggest(s, spec.choices)));
      return s;
    }
    case Type::StringList: {
      out = nlohmann::json::array();
      if (value.is_array()) {
        for (const auto& item : value) {
          if (item.is_null() || item.is_array() || item.is_object()) throw type_error();
          out.push_back(item.is_string() ? item.get<std::string>() : format_value(item));
        }
      } else if (value.is_string()) {
        for (auto& w : words(value.get<std::string>())) out.push_back(w);
      } else {
        out.push_back(text.empty() ? format_value(value) : text);
      }
      return out;
    }
    case Type::NumberList: {
      out = nlohmann::json::array();
      if (value.is_array()) {
        for (const auto& item : value) {
          if (!item.is_number()) throw type_error();
          out.push_back(item);
        }
      } else if (value.is_string()) {
        for (auto& w : words(value.get<std::string>())) {
          auto n = parse_number(w);
          if (!n) throw type_error();
          if (std::floor(*n) == *n && std::fabs(*n) < 9.007199254740992e15)
            out.push_back(static_cast<int64_t>(*n));
          else
            out.push_back(*n);
        }
      } else if (value.is_number()) {
        out.push_back(value);
      } else {
        throw type_error();
      }
      return out;
    }
  }

  // Numeric range.
  const double v = out.get<double>();
  const bool below = spec.min && (spec.min_open ? v <= *spec.min : v < *spec.min);
  const bool above = spec.max && (spec.max_open ? v >= *spec.max : v > *spec.max);
  if (below || above)
    throw Error(fmt::format("{}: '{}' = {} is out of range: expected {}", where.str(), spec.key, format_value(out),
                            spec.range_text()));
  return out;
}

std::string suggest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  if (!best.empty() && best_d <= std::max<size_t>(2, word.size() / 4)) return ", did you mean '" + best + "'?";
  std::string containing, contained;
  for (const auto& c : candidates) {
    if (word.size() >= 4 && c.find(word) != std::string::npos && (containing.empty() || c.size() < containing.size()))
      containing = c;
    if (c.size() >= 4 && word.find(c) != std::string::npos && c.size() > contained.size()) contained = c;
  }
  if (!containing.empty()) return ", did you mean '" + containing + "'?";
  if (!contained.empty()) return ", did you mean '" + contained + "'?";
  return "";
}

const Schema& schema() {
  static const Schema kSchema = [] {
    std::vector<OptionSpec> all = model_options();
    for (auto& o : training_options()) all.push_back(std::move(o));
    return Schema(std::move(all));
  }();
  return kSchema;
}

std::string format_value(const nlohmann::json& v) {
  if (v.is_null()) return "null";
  if (v.is_string()) return v.get<std::string>().empty() ? "\"\"" : v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_float()) {
    std::string s = fmt::format("{}", v.get<double>());
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep floats visibly floats
    return s;
  }
  if (v.is_array()) {
    std::vector<std::string> items;
    for (const auto& item : v) items.push_back(format_value(item));
    return "[" + join(items, ", ") + "]";
  }
  return v.dump();
}

}  // namespace primus::config
