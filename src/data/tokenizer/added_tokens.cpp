#include "data/tokenizer/added_tokens.h"

#include <algorithm>
#include <map>

#include "data/tokenizer/utf8.h"

namespace primus::data {

bool is_unicode_whitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

namespace {

// Code point ending at byte `end` (exclusive), or 0 at the start.
uint32_t codepoint_before(std::string_view s, size_t end, size_t& len) {
  if (end == 0) {
    len = 0;
    return 0;
  }
  size_t b = end - 1;
  while (b > 0 && (static_cast<uint8_t>(s[b]) & 0xC0) == 0x80 && end - b < 4) --b;
  return utf8_decode(s, b, len);
}

bool is_word_char(uint32_t c) {
  // \w approximated for single_word boundaries: ASCII alnum, '_', and any non-ASCII letter
  // or digit is taken as a word character.
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return !is_unicode_whitespace(c);
}

}  // namespace

AddedTokenSplitter::AddedTokenSplitter(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& t : tokens)
    if (!t.content.empty()) tokens_.push_back(t);
  // Build a byte trie with std::map, then flatten it into sorted edge arrays.
  struct BuildNode {
    std::map<uint8_t, int32_t> children;
    int32_t token = -1;
  };
  std::vector<BuildNode> build(1);
  for (size_t k = 0; k < tokens_.size(); ++k) {
    int32_t n = 0;
    for (unsigned char c : tokens_[k].content) {
      auto it = build[n].children.find(c);
      if (it == build[n].children.end()) {
        build.push_back({});
        const int32_t child = static_cast<int32_t>(build.size() - 1);
        build[n].children.emplace(c, child);
        n = child;
      } else {
        n = it->second;
      }
    }
    if (build[n].token < 0) build[n].token = static_cast<int32_t>(k);
    first_byte_[static_cast<uint8_t>(tokens_[k].content[0])] = true;
  }
  nodes_.resize(build.size());
  for (size_t n = 0; n < build.size(); ++n) {
    nodes_[n].token = build[n].token;
    nodes_[n].child_begin = static_cast<int32_t>(edges_.size());
    nodes_[n].child_count = static_cast<int32_t>(build[n].children.size());
    for (const auto& [byte, child] : build[n].children) edges_.push_back({byte, child});
  }
}

int32_t AddedTokenSplitter::longest_at(std::string_view text, size_t i, size_t& len) const {
  int32_t node = 0, best = -1;
  for (size_t k = i; k < text.size(); ++k) {
    const Node& n = nodes_[node];
    const Edge* b = edges_.data() + n.child_begin;
    const Edge* e = b + n.child_count;
    const auto c = static_cast<uint8_t>(text[k]);
    const Edge* it = std::lower_bound(b, e, c, [](const Edge& x, uint8_t v) { return x.byte < v; });
    if (it == e || it->byte != c) break;
    node = it->node;
    if (nodes_[node].token >= 0) {
      best = nodes_[node].token;
      len = k + 1 - i;
    }
  }
  return best;
}

void AddedTokenSplitter::split(std::string_view text, std::vector<TextSegment>& out) const {
  size_t text_begin = 0;  // start of the pending plain-text segment
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    size_t len = 0;
    const int32_t k = longest_at(text, i, len);
    if (k < 0) {
      ++i;
      continue;
    }
    const AddedToken& t = tokens_[k];
    size_t start = i, stop = i + len;
    if (t.single_word) {
      size_t l = 0;
      const uint32_t before = codepoint_before(text, start, l);
      size_t al = 0;
      const uint32_t after = stop < text.size() && utf8_valid_length(text, stop) ? utf8_decode(text, stop, al) : 0;
      if ((l > 0 && is_word_char(before)) || (al > 0 && is_word_char(after))) {
        ++i;
        continue;
      }
    }
    if (t.lstrip) {
      while (start > text_begin) {
        size_t l = 0;
        const uint32_t c = codepoint_before(text, start, l);
        if (l == 0 || !is_unicode_whitespace(c)) break;
        start -= l;
      }
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        const size_t n = utf8_valid_length(text, stop);
        if (n == 0) break;
        size_t l = 0;
        if (!is_unicode_whitespace(utf8_decode(text, stop, l))) break;
        stop += n;
      }
    }
    if (start > text_begin) out.push_back({text_begin, start, -1});
    out.push_back({start, stop, t.id});
    text_begin = i = stop;
  }
  if (text_begin < text.size()) out.push_back({text_begin, text.size(), -1});
}

}  // namespace primus::data
