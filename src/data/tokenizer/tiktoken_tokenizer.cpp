#include "data/tokenizer/tiktoken_tokenizer.h"

#include <fmt/format.h>

#include <charconv>
#include <fstream>

#include "core/error.h"
#include "data/tokenizer/bpe.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/utf8.h"

namespace primus::data {

namespace {

constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr int32_t kLlama3BaseTokens = 128000;
constexpr int32_t kLlama3SpecialTokens = 256;
constexpr int64_t kMaxRank = int64_t{1} << 24;  // as tokenizer.json ids (hf_tokenizer.cpp)

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = base64_value(c);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return true;
}

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> s = {"<|begin_of_text|>", "<|end_of_text|>"};
  for (int i = 0; i < 4; ++i) s.push_back(fmt::format("<|reserved_special_token_{}|>", i));
  s.push_back("<|start_header_id|>");
  s.push_back("<|end_header_id|>");
  s.push_back("<|reserved_special_token_4|>");
  s.push_back("<|eot_id|>");
  for (int i = 5; static_cast<int>(s.size()) < kLlama3SpecialTokens; ++i)
    s.push_back(fmt::format("<|reserved_special_token_{}|>", i));
  return s;
}

struct TikSpec {
  std::string path;
  std::shared_ptr<const BpeTables> bpe;
  std::shared_ptr<const RegexPattern> pattern;
  std::vector<std::string> specials;  // ids base_tokens + k
  int32_t base_tokens = 0;
  int32_t eod = -1, bos = -1;
};

class TikTokenizer final : public Tokenizer {
 public:
  explicit TikTokenizer(std::shared_ptr<const TikSpec> spec)
      : spec_(std::move(spec)), encoder_(spec_->bpe), matcher_(spec_->pattern) {}

  void encode_append(std::string_view text, std::vector<int32_t>& out, SpecialTokens) override {
    std::string_view t = text;
    if (!utf8_is_valid(text)) {
      clean_ = utf8_sanitize(text);
      t = clean_;
    }
    size_t from = 0, b = 0, e = 0;
    while (from < t.size() && matcher_.find(t, from, b, e)) {
      if (b > from) encoder_.encode_word(t.substr(from, b - from), out);  // unmatched gap
      if (e == b) {
        from = b + 1;
        continue;
      }
      encoder_.encode_word(t.substr(b, e - b), out);
      from = e;
    }
    if (from < t.size()) encoder_.encode_word(t.substr(from), out);
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string bytes;
    for (int32_t id : ids) {
      if (id >= spec_->base_tokens && id < spec_->base_tokens + static_cast<int32_t>(spec_->specials.size())) {
        if (!skip_special) bytes.append(spec_->specials[id - spec_->base_tokens]);
        continue;
      }
      PRIMUS_CHECK(id >= 0 && id < spec_->base_tokens, "{}: decode got id {} outside the vocabulary [0, {})",
                   spec_->path, id, vocab_size());
      bytes.append(spec_->bpe->id_to_piece[id]);
    }
    return utf8_sanitize(bytes);
  }

  int64_t vocab_size() const override { return spec_->base_tokens + static_cast<int64_t>(spec_->specials.size()); }
  int32_t eod() const override { return spec_->eod; }
  int32_t bos() const override { return spec_->bos; }
  int32_t token_to_id(std::string_view token) const override {
    for (size_t k = 0; k < spec_->specials.size(); ++k)
      if (spec_->specials[k] == token) return spec_->base_tokens + static_cast<int32_t>(k);
    return spec_->bpe->find(token);
  }
  std::vector<int32_t> special_ids() const override {
    std::vector<int32_t> ids;
    for (size_t k = 0; k < spec_->specials.size(); ++k) ids.push_back(spec_->base_tokens + static_cast<int32_t>(k));
    return ids;
  }
  std::string type_name() const override { return "TikTokenizer"; }
  std::unique_ptr<Tokenizer> clone() const override { return std::make_unique<TikTokenizer>(spec_); }

 private:
  std::shared_ptr<const TikSpec> spec_;
  BpeEncoder encoder_;
  RegexMatcher matcher_;
  std::string clean_;
};

}  // namespace

bool looks_like_tiktoken_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  if (!in.good() || !std::getline(in, line)) return false;
  const size_t sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size()) return false;
  for (size_t i = 0; i < sp; ++i)
    if (base64_value(line[i]) < 0 && line[i] != '=') return false;
  for (size_t i = sp + 1; i < line.size(); ++i)
    if (!(line[i] >= '0' && line[i] <= '9') && line[i] != '\r') return false;
  return true;
}

std::unique_ptr<Tokenizer> load_tiktoken_tokenizer(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMUS_CHECK(in.good(), "TikTokenizer: cannot open {}", path);
  auto spec = std::make_shared<TikSpec>();
  spec->path = path;
  auto t = std::make_shared<BpeTables>();
  t->byte_level = true;
  t->ignore_merges = true;  // tiktoken looks a whole piece up first
  std::string line, bytes;
  size_t line_no = 0;
  int32_t max_rank = -1;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    // The rank: a decimal integer, blanks around it allowed (tiktoken splits on whitespace).
    std::string_view num = sp == std::string::npos ? std::string_view() : std::string_view(line).substr(sp + 1);
    while (!num.empty() && (num.front() == ' ' || num.front() == '\t')) num.remove_prefix(1);
    while (!num.empty() && (num.back() == ' ' || num.back() == '\t')) num.remove_suffix(1);
    int64_t rank = -1;
    const auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), rank);
    if (sp == std::string::npos || !base64_decode(std::string_view(line).substr(0, sp), bytes) ||
        ec == std::errc::invalid_argument || end != num.data() + num.size()) {
      fail("{}:{}: expected 'base64 rank' (a tiktoken BPE file), got '{}'{}", path, line_no, line.substr(0, 80),
           line.rfind("{", 0) == 0 ? "; Megatron's JSON TikTokenizer vocabulary is not supported yet" : "");
    }
    // A rank is a token id and sizes the vocabulary: unchecked, 687777777777 (found by fuzz_tiktoken;
    // sscanf's %d made it 583010417) asked for 18 GB. Real vocabularies have a few hundred thousand.
    PRIMUS_CHECK(ec == std::errc() && rank >= 0 && rank < kMaxRank,
                 "{}:{}: rank {} is not a token id in [0, {}) (a tiktoken file holds 'base64 rank' lines, rank = id)",
                 path, line_no, num.substr(0, 40), kMaxRank);
    const auto id = static_cast<int32_t>(rank);
    if (static_cast<size_t>(id) >= t->id_to_piece.size()) t->id_to_piece.resize(static_cast<size_t>(id) + 1);
    t->id_to_piece[id] = bytes;
    t->piece_to_id.emplace(bytes, id);
    max_rank = std::max(max_rank, id);
  }
  PRIMUS_CHECK(max_rank >= 255, "{}: only {} ranks; not a tiktoken BPE file", path, max_rank + 1);
  for (int b = 0; b < 256; ++b) {
    t->byte_ids[b] = t->find(std::string(1, static_cast<char>(b)));
    PRIMUS_CHECK(t->byte_ids[b] >= 0, "{}: has no token for byte 0x{:02X}; every byte needs one", path, b);
  }
  // tiktoken merges the adjacent pair whose concatenation has the lowest rank: register
  // every split of every token into two tokens as a merge with the token's rank.
  t->merges.reserve(t->piece_to_id.size() * 4);
  for (int32_t id = 0; id <= max_rank; ++id) {
    const std::string& piece = t->id_to_piece[id];
    for (size_t k = 1; k < piece.size(); ++k) {
      const int32_t l = t->find(std::string_view(piece).substr(0, k));
      const int32_t r = t->find(std::string_view(piece).substr(k));
      if (l >= 0 && r >= 0) t->merges.insert(l, r, {id, id});
    }
  }
  spec->bpe = t;
  spec->base_tokens = max_rank + 1;
  spec->pattern = RegexPattern::compile(kLlama3Pattern, path);
  if (spec->base_tokens == kLlama3BaseTokens) {
    spec->specials = llama3_special_tokens();
    spec->bos = kLlama3BaseTokens;      // <|begin_of_text|>
    spec->eod = kLlama3BaseTokens + 1;  // <|end_of_text|>
  }
  return std::make_unique<TikTokenizer>(spec);
}

}  // namespace primus::data
