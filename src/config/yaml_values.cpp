#include "config/yaml_values.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

#include "core/error.h"

namespace primus::config {

namespace {

std::string syntax_error(const std::string& where, const YAML::ParserException& e) {
  return fmt::format("{}:{}:{}: YAML syntax error: {}", where, e.mark.line + 1, e.mark.column + 1, e.msg);
}

// The line (1-based) of a quote that a YAML text opens and never closes, or 0. yaml-cpp
// accepts a quoted scalar left open at the end of the stream; PyYAML (and the YAML spec) do
// not. Quotes count where a scalar starts (after indentation, "- ", ": ", "[", "{", ",", "?");
// comments and block scalars (| and >) are skipped; '' and \" are escapes.
int unclosed_quote_line(const std::string& text) {
  char open = 0;  // the quote we are inside, or 0
  int open_line = 0, line = 0, block_parent = -1;
  std::istringstream lines(text);
  std::string l;
  while (std::getline(lines, l)) {
    ++line;
    const size_t indent = l.find_first_not_of(' ');
    if (open == 0 && block_parent >= 0) {  // inside a block scalar: lines indented past its key
      if (indent == std::string::npos || static_cast<int>(indent) > block_parent) continue;
      block_parent = -1;
    }
    char prev = ' ';  // the last character outside a quote (' ' at a line start)
    for (size_t i = 0; i < l.size(); ++i) {
      const char c = l[i];
      if (open == '"') {
        if (c == '\\') ++i;
        else if (c == '"') open = 0;
        continue;
      }
      if (open == '\'') {
        if (c == '\'' && i + 1 < l.size() && l[i + 1] == '\'') ++i;
        else if (c == '\'') open = 0;
        continue;
      }
      if (c == '#' && (i == 0 || l[i - 1] == ' ' || l[i - 1] == '\t')) break;
      if ((c == '"' || c == '\'') && (prev == ' ' || prev == '[' || prev == '{' || prev == ',' || prev == '?') &&
          (i == 0 || l[i - 1] == ' ' || l[i - 1] == '[' || l[i - 1] == '{' || l[i - 1] == ',')) {
        open = c;
        open_line = line;
        continue;
      }
      if ((c == '|' || c == '>') && (prev == ' ') && (i == 0 || l[i - 1] == ' ')) {
        // A block scalar indicator ends the line (chomping / indentation indicators, a comment).
        const size_t rest = l.find_first_not_of("+-0123456789 \t", i + 1);
        if (rest == std::string::npos || l[rest] == '#') {
          block_parent = indent == std::string::npos ? 0 : static_cast<int>(indent);
          break;
        }
      }
      if (c != ' ' && c != '\t') prev = c == ':' || c == '-' ? ' ' : c;
    }
  }
  return open != 0 ? open_line : 0;
}

}  // namespace

YAML::Node load_yaml_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read config file '{}'", path));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  if (text.size() > kMaxYamlFileBytes)
    throw Error(fmt::format("{}: {} bytes; a config file is at most {} MiB (is this the right file?)", path,
                            text.size(), kMaxYamlFileBytes >> 20));
  if (const int open = unclosed_quote_line(text); open > 0)
    throw Error(fmt::format("{}:{}: YAML syntax error: a quoted value opened on this line is never closed; add the "
                            "closing quote",
                            path, open));
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(syntax_error(path, e));
  }
}

YAML::Node load_yaml_text(const std::string& text, const Source& where) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(fmt::format("{}: YAML syntax error in \"{}\" at column {}: {}", where.str(), text, e.mark.column + 1,
                            e.msg));
  }
}

Source source_of(const std::string& path, const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  return Source{path, m.line >= 0 ? m.line + 1 : 0};
}

std::vector<MapEntry> map_entries(const YAML::Node& map, const std::string& path, const std::string& what) {
  std::vector<MapEntry> out;
  if (!map || map.IsNull()) return out;
  if (!map.IsMap())
    throw Error(fmt::format("{}: {} must be a map of `key: value` lines", source_of(path, map).str(), what));
  for (auto it = map.begin(); it != map.end(); ++it) {
    const Source src = source_of(path, it->first);
    if (!it->first.IsScalar()) throw Error(fmt::format("{}: keys in {} must be plain names", src.str(), what));
    std::string key = it->first.Scalar();
    for (const auto& prev : out)
      if (prev.key == key)
        throw Error(fmt::format("{}: '{}' is set twice in {} (first at line {}); keep one", src.str(), key, what,
                                prev.source.line));
    out.push_back(MapEntry{std::move(key), it->second, src});
  }
  return out;
}

nlohmann::json type_plain_scalar(const std::string& s) {
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  static const char* kTrue[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const char* kFalse[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  for (const char* t : kTrue)
    if (s == t) return true;
  for (const char* f : kFalse)
    if (s == f) return false;

  static const std::regex kInt(R"([-+]?[0-9][0-9_]*)");
  static const std::regex kHex(R"(0x[0-9a-fA-F]+)");
  static const std::regex kOct(R"(0o[0-7]+)");
  static const std::regex kFloat(R"([-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?)");
  if (std::regex_match(s, kInt)) {
    std::string digits;
    for (char c : s)
      if (c != '_' && c != '+') digits += c;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec == std::errc() && p == digits.data() + digits.size()) return v;
    return std::strtod(digits.c_str(), nullptr);  // too large for int64: keep it as a float
  }
  if (std::regex_match(s, kHex)) return static_cast<int64_t>(std::strtoll(s.c_str() + 2, nullptr, 16));
  if (std::regex_match(s, kOct)) return static_cast<int64_t>(std::strtoll(s.c_str() + 2, nullptr, 8));
  if (std::regex_match(s, kFloat)) {
    std::string digits;
    for (char c : s)
      if (c != '_') digits += c;
    return std::strtod(digits.c_str(), nullptr);
  }
  if (s == ".inf" || s == ".Inf" || s == ".INF" || s == "+.inf") return std::numeric_limits<double>::infinity();
  if (s == "-.inf" || s == "-.Inf" || s == "-.INF") return -std::numeric_limits<double>::infinity();
  if (s == ".nan" || s == ".NaN" || s == ".NAN") return std::numeric_limits<double>::quiet_NaN();
  return s;
}

Value read_value(const YAML::Node& node, const Source& where, const EnvLookup& env) {
  if (!node || node.IsNull()) return Value{nullptr, ""};
  if (node.IsMap())
    throw Error(fmt::format("{}: expected a value or a list, got a map (options are flat: `key: value`)", where.str()));
  if (node.IsSequence()) {
    Value out{nlohmann::json::array(), ""};
    for (const auto& item : node) {
      if (item.IsMap() || item.IsSequence())
        throw Error(fmt::format("{}: list items must be plain values, got a nested {}", where.str(),
                                item.IsMap() ? "map" : "list"));
      out.json.push_back(read_value(item, where, env).json);
    }
    return out;
  }
  const std::string& raw = node.Scalar();
  const bool quoted = node.Tag() == "!";
  if (has_interpolation(raw)) {
    std::string expanded = expand_env(raw, where, env);
    if (expanded.empty()) return Value{nullptr, ""};
    return Value{type_plain_scalar(expanded), expanded};
  }
  if (quoted) return Value{raw, raw};
  return Value{type_plain_scalar(raw), raw};
}

}  // namespace primus::config
