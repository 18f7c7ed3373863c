#include "rl/stop_strings.h"

#include <algorithm>
#include <span>
#include <string_view>

namespace primus::rl {

namespace {

// Tokens of context decoded with each new token: enough for the text of a token to come out
// as in the whole sequence (a UTF-8 character takes at most 4 byte tokens; a dropped leading
// space or a tokenizer's clean-up looks one or two tokens back).
constexpr size_t kWindow = 8;

std::string decode_range(const data::Tokenizer& tok, const std::vector<int32_t>& ids, size_t begin, size_t end) {
  return tok.decode(std::span<const int32_t>(ids.data() + begin, end - begin));
}

// Whether `text` holds a stop string that ends after byte `changed` (all of text before it was
// searched already): a new occurrence of s starts at changed - |s| + 1 or later.
bool holds_new_stop(std::string_view text, size_t changed, const std::vector<std::string>& stops) {
  for (const std::string& s : stops) {
    const size_t from = std::min(changed + 1 > s.size() ? changed + 1 - s.size() : 0, text.size());
    if (text.find(s, from) != std::string_view::npos) return true;
  }
  return false;
}

// Whether decode(ids[0, k)) holds a stop string.
bool prefix_holds_stop(const data::Tokenizer& tok, const std::vector<int32_t>& ids, size_t k,
                       const std::vector<std::string>& stops) {
  return holds_new_stop(decode_range(tok, ids, 0, k), 0, stops);
}

// The fewest leading tokens whose text holds a stop string, by decoding every prefix whole
// (quadratic in the completion; the fallback when the windowed search cannot be confirmed).
size_t first_stopping_prefix_exact(const data::Tokenizer& tok, const std::vector<int32_t>& ids,
                                   const std::vector<std::string>& stops) {
  for (size_t k = 1; k <= ids.size(); ++k)
    if (prefix_holds_stop(tok, ids, k, stops)) return k;
  return std::string::npos;
}

// The same, in one pass: text = decode(ids[0, k)) is kept up to date from the window's text
// before and after token k - 1 (they differ after their common prefix: the new token's text,
// and an end that it rewrites, such as an incomplete UTF-8 character it completes).
size_t first_stopping_prefix_windowed(const data::Tokenizer& tok, const std::vector<int32_t>& ids,
                                      const std::vector<std::string>& stops) {
  std::string text;
  for (size_t k = 1; k <= ids.size(); ++k) {
    const size_t begin = k > kWindow ? k - kWindow : 0;
    const std::string before = decode_range(tok, ids, begin, k - 1), after = decode_range(tok, ids, begin, k);
    size_t common = 0;
    while (common < before.size() && common < after.size() && before[common] == after[common]) ++common;
    const size_t rewritten = before.size() - common;  // bytes at the end of text that token k - 1 rewrites
    if (rewritten > text.size()) return std::string::npos;  // the window does not line up with the text
    const size_t changed = text.size() - rewritten;
    text.resize(changed);
    text.append(after, common, std::string::npos);
    if (holds_new_stop(text, changed, stops)) return k;
  }
  return std::string::npos;
}

}  // namespace

StopCut cut_at_stop_string(const data::Tokenizer& tok, const std::vector<int32_t>& ids,
                           const std::vector<std::string>& stops) {
  if (stops.empty()) return {};
  const std::string full = tok.decode(ids);
  size_t first = std::string::npos;
  for (const std::string& s : stops) first = std::min(first, full.find(s));
  if (first == std::string::npos) return {};
  size_t k = first_stopping_prefix_windowed(tok, ids, stops);
  // Confirmed when decode() of the whole prefix k holds a stop string and that of prefix k - 1
  // does not; otherwise (a tokenizer whose text depends on tokens beyond the window) the exact
  // search decides.
  const bool confirmed = k != std::string::npos && prefix_holds_stop(tok, ids, k, stops) &&
                         (k == 1 || !prefix_holds_stop(tok, ids, k - 1, stops));
  if (!confirmed) k = first_stopping_prefix_exact(tok, ids, stops);
  if (k == std::string::npos) return {};
  return {k, full.substr(0, first)};
}

}  // namespace primus::rl
