// Added tokens of a tokenizer.json ("<|begin_of_text|>", "<s>", ...): the text is cut at
// every occurrence before normalization and BPE, as HuggingFace does. At each position the
// longest token wins, and the leftmost position first (leftmost-longest); lstrip/rstrip
// swallow neighbouring whitespace, single_word requires word boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace primus::data {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A piece of text: either plain text [begin, end) or one added token.
struct TextSegment {
  size_t begin = 0, end = 0;
  int32_t token_id = -1;  // >= 0: this segment is the added token with this id
};

class AddedTokenSplitter {
 public:
  AddedTokenSplitter() = default;
  explicit AddedTokenSplitter(const std::vector<AddedToken>& tokens);
  bool empty() const { return tokens_.empty(); }
  // Appends the segments of `text` to `out` (offsets relative to text).
  void split(std::string_view text, std::vector<TextSegment>& out) const;

 private:
  struct Node {
    int32_t child_begin = 0, child_count = 0;  // into edges_, sorted by byte
    int32_t token = -1;                        // index into tokens_ ending here
  };
  struct Edge {
    uint8_t byte;
    int32_t node;
  };
  // Index of the longest token matching at text[i], or -1; sets len.
  int32_t longest_at(std::string_view text, size_t i, size_t& len) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  std::vector<Edge> edges_;
  bool first_byte_[256] = {};
};

// Unicode White_Space (Rust's char::is_whitespace), for lstrip/rstrip.
bool is_unicode_whitespace(uint32_t cp);

}  // namespace primus::data
