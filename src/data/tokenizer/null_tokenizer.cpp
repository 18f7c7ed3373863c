#include "data/tokenizer/null_tokenizer.h"

#include <fmt/format.h>

#include <charconv>

#include "core/error.h"

namespace primus::data {

namespace {

class NullTokenizer final : public Tokenizer {
 public:
  explicit NullTokenizer(int64_t vocab) : vocab_(vocab) {}

  void encode_append(std::string_view text, std::vector<int32_t>& out, SpecialTokens) override {
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')) ++i;
      if (i >= text.size()) break;
      size_t j = i;
      while (j < text.size() && !(text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) ++j;
      int64_t v = -1;
      const auto [p, ec] = std::from_chars(text.data() + i, text.data() + j, v);
      PRIMUS_CHECK(ec == std::errc() && p == text.data() + j && v >= 0 && v <= vocab_,
                   "NullTokenizer: '{}' is not an id in [0, {}] (the text must be ids separated by spaces; "
                   "--vocab-size is {})",
                   std::string(text.substr(i, j - i)), vocab_, vocab_);
      out.push_back(static_cast<int32_t>(v));
      i = j;
    }
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string s;
    for (int32_t id : ids) {
      if (skip_special && id == eod()) continue;
      if (!s.empty()) s.push_back(' ');
      s += fmt::format("{}", id);
    }
    return s;
  }
  int64_t vocab_size() const override { return vocab_ + 1; }
  int32_t eod() const override { return static_cast<int32_t>(vocab_); }
  int32_t token_to_id(std::string_view) const override { return -1; }
  std::vector<int32_t> special_ids() const override { return {eod()}; }
  std::string type_name() const override { return "NullTokenizer"; }
  std::unique_ptr<Tokenizer> clone() const override { return std::make_unique<NullTokenizer>(vocab_); }

 private:
  int64_t vocab_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_null_tokenizer(int64_t vocab_size) {
  PRIMUS_CHECK(vocab_size > 0 && vocab_size < (int64_t{1} << 31) - 1,
               "NullTokenizer needs --vocab-size > 0 (got {})", vocab_size);
  return std::make_unique<NullTokenizer>(vocab_size);
}

}  // namespace primus::data
