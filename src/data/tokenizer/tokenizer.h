// The tokenizer interface every data path uses (preprocess, datasets, generation).
//
// Types are named as Megatron names them (--tokenizer-type):
//   HuggingFaceTokenizer   tokenizer.json (byte-level BPE: GPT-2, Llama 3, Qwen, DeepSeek;
//                          Metaspace / byte-fallback BPE: Llama 2, Mistral, Mixtral)
//   SentencePieceTokenizer a SentencePiece .model (a tiktoken file given here, as Llama 3's
//                          tokenizer.model is, is detected and read as TikTokenizer)
//   GPT2BPETokenizer       vocab.json + merges.txt
//   TikTokenizer           a tiktoken BPE file ("base64 rank" lines)
//   NullTokenizer          ids written as decimal numbers separated by spaces
//
// An instance keeps a cache of encoded words, so encode() is not const and one instance
// must not be shared by threads: give each thread its own clone() (the tables are shared,
// read-only, between clones).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace primus::data {

// Whether encode() applies the tokenizer's template of special tokens (for a Llama 3
// tokenizer.json: <|begin_of_text|> first). Megatron's HuggingFaceTokenizer applies it when
// preprocessing; the other Megatron types add nothing.
enum class SpecialTokens { kNone, kAdd };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Appends the ids of `text` to `out`. Invalid UTF-8 is first replaced by U+FFFD (one per
  // maximal invalid subpart), which is what HuggingFace sees after a lossy decode.
  virtual void encode_append(std::string_view text, std::vector<int32_t>& out,
                             SpecialTokens special = SpecialTokens::kNone) = 0;

  std::vector<int32_t> encode(std::string_view text, SpecialTokens special = SpecialTokens::kNone) {
    std::vector<int32_t> ids;
    encode_append(text, ids, special);
    return ids;
  }

  // Text of `ids`; with skip_special, special tokens are left out. Bytes that do not form
  // valid UTF-8 become U+FFFD, as HuggingFace's decoders do.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;

  // Ids are in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;
  // End of document (appended by preprocess --append-eod), beginning of sequence, padding;
  // -1 where the tokenizer has none.
  virtual int32_t eod() const = 0;
  virtual int32_t bos() const { return -1; }
  virtual int32_t pad() const { return -1; }
  // Id of a token string (a special token such as "<|eot_id|>"), or -1.
  virtual int32_t token_to_id(std::string_view token) const = 0;
  // Ids of every special token (added tokens marked special, <s>, </s>, ...).
  virtual std::vector<int32_t> special_ids() const = 0;

  // Megatron's type name ("HuggingFaceTokenizer", ...).
  virtual std::string type_name() const = 0;

  // A new instance sharing the read-only tables, with its own cache: one per thread.
  virtual std::unique_ptr<Tokenizer> clone() const = 0;
};

// Builds a tokenizer from Megatron's type name and --tokenizer-model (a file, or for
// HuggingFaceTokenizer a directory holding tokenizer.json). vocab_size is used only by
// NullTokenizer; vocab_file/merge_file only by GPT2BPETokenizer. Errors name the file, the
// type and the fix; an unknown type gets "did you mean".
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model_path,
                                          int64_t vocab_size = 0, const std::string& vocab_file = "",
                                          const std::string& merge_file = "");

// The type names make_tokenizer accepts.
const std::vector<std::string>& tokenizer_type_names();

}  // namespace primus::data
