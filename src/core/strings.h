// Small string helpers shared by the CLI and the config: edit distance for "did you mean".
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace primus {

size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word` if it is plausibly a typo of it (else empty).
std::string nearest_name(std::string_view word, const std::vector<std::string>& candidates);
// ", did you mean 'x'?" or "" — ready to append to an error message.
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

std::string trim(std::string_view s);
std::vector<std::string> split(std::string_view s, char sep);
bool starts_with(std::string_view s, std::string_view prefix);
// `s` cut to `max_chars` characters with control bytes (NUL, newlines, ...) written as \xNN, so
// that file contents quoted in a message cannot cut or garble it.
std::string printable(std::string_view s, size_t max_chars = 80);

}  // namespace primus
