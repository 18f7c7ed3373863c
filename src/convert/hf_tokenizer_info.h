// What an HF export needs to know about a tokenizer.json: its vocabulary size and the
// ids of its begin/end-of-text tokens, and which sibling files go along with it.
//
// vocab_size = 1 + the largest id in model.vocab (BPE/WordPiece/WordLevel: {token: id};
// Unigram: a list whose index is the id) and added_tokens[].id.
// bos/eos: the tokens named by tokenizer_config.json's "bos_token"/"eos_token" (a string
// or {"content": ...}) when that file sits next to tokenizer.json, else the first of the
// well-known names present: bos <|begin_of_text|>, <s>, <|startoftext|>; eos
// <|end_of_text|>, </s>, <|endoftext|>.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace primus::convert {

struct HfTokenizerInfo {
  std::string tokenizer_json;      // the file itself
  std::vector<std::string> siblings;  // tokenizer_config.json / special_tokens_map.json found next to it
  int64_t vocab_size = 0;
  std::optional<int64_t> bos_token_id, eos_token_id;
  std::string bos_token, eos_token;  // their text, for messages
};

// `path` is a tokenizer.json file or a directory holding one. Errors name the file and
// what is wrong (not JSON, no model.vocab, a sentencepiece .model given instead).
HfTokenizerInfo inspect_hf_tokenizer(const std::string& path);

// Llama 3's ids, used when no tokenizer is given: <|begin_of_text|> and <|end_of_text|>.
constexpr int64_t kLlama3BosTokenId = 128000;
constexpr int64_t kLlama3EosTokenId = 128001;

}  // namespace primus::convert
