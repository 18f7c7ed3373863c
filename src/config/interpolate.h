// ${VAR} and ${VAR:default} expansion from the environment, as upstream Primus does it.
//
// `${VAR}` is replaced by the variable's value and is an error when VAR is unset;
// `${VAR:default}` falls back to `default` (everything after the first ':' up to '}').
// A variable that is set to the empty string counts as set. Expansion works anywhere
// inside a string ("${DATA:/data}/fineweb_text_document"); it does not nest.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "config/source.h"

namespace primus::config {

// Looks a variable up; nullopt when unset. Tests pass their own map instead of the process env.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// The process environment (std::getenv).
EnvLookup process_env();

bool has_interpolation(const std::string& text);

// Expands every ${...} in `text`. Throws primus::Error naming `where` (file:line) and the
// variable when it is unset without a default, or when the ${...} is malformed.
std::string expand_env(const std::string& text, const Source& where, const EnvLookup& env);

}  // namespace primus::config
