#include "config/interpolate.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdlib>

#include "core/error.h"

namespace primus::config {

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

bool has_interpolation(const std::string& text) { return text.find("${") != std::string::npos; }

namespace {
bool valid_name(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}
}  // namespace

std::string expand_env(const std::string& text, const Source& where, const EnvLookup& env) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = text.find("${", pos);
    if (open == std::string::npos) {
      out.append(text, pos, std::string::npos);
      return out;
    }
    out.append(text, pos, open - pos);
    const size_t close = text.find('}', open + 2);
    if (close == std::string::npos)
      throw Error(fmt::format("{}: unterminated '${{' in \"{}\": write ${{VAR}} or ${{VAR:default}}", where.str(), text));
    const std::string inner = text.substr(open + 2, close - open - 2);
    const size_t colon = inner.find(':');
    const std::string name = colon == std::string::npos ? inner : inner.substr(0, colon);
    if (!valid_name(name))
      throw Error(fmt::format("{}: '${{{}}}' in \"{}\" is not a variable reference: the name must be letters, digits "
                              "and '_' (write ${{VAR}} or ${{VAR:default}})",
                              where.str(), inner, text));
    if (auto value = env(name)) {
      out += *value;
    } else if (colon != std::string::npos) {
      out += inner.substr(colon + 1);
    } else {
      throw Error(fmt::format("{}: environment variable {} is not set (used as ${{{}}} in \"{}\"); set it or give a "
                              "default: ${{{}:value}}",
                              where.str(), name, name, text, name));
    }
    pos = close + 1;
  }
}

}  // namespace primus::config
