// make_tokenizer: Megatron's --tokenizer-type names -> our implementations.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "data/tokenizer/hf_tokenizer.h"
#include "data/tokenizer/null_tokenizer.h"
#include "data/tokenizer/sentencepiece_tokenizer.h"
#include "data/tokenizer/tiktoken_tokenizer.h"
#include "data/tokenizer/tokenizer.h"

namespace primus::data {

const std::vector<std::string>& tokenizer_type_names() {
  static const std::vector<std::string> kNames = {
      "HuggingFaceTokenizer", "SentencePieceTokenizer", "GPT2BPETokenizer",   "TikTokenizer",
      "NullTokenizer",        "Llama2Tokenizer",        "GPTSentencePieceTokenizer", "Llama3Tokenizer",
      "MixtralTokenizer",     "DeepSeekV2Tokenizer",    "DeepSeekV3Tokenizer"};
  return kNames;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& type, const std::string& model_path, int64_t vocab_size,
                                          const std::string& vocab_file, const std::string& merge_file) {
  auto need_model = [&] {
    PRIMUS_CHECK(!model_path.empty(), "--tokenizer-type {} needs --tokenizer-model (the tokenizer file)", type);
    PRIMUS_CHECK(std::filesystem::exists(model_path), "--tokenizer-model {} does not exist", model_path);
  };
  // Upstream Primus's model-family names: each model's Hugging Face tokenizer (a tokenizer.json,
  // or the folder holding one); Llama 3 also ships Meta's original tiktoken tokenizer.model.
  if (type == "Llama3Tokenizer" || type == "MixtralTokenizer" || type == "DeepSeekV2Tokenizer" ||
      type == "DeepSeekV3Tokenizer") {
    need_model();
    if (!std::filesystem::is_directory(model_path) && looks_like_tiktoken_file(model_path)) {
      if (type == "Llama3Tokenizer") return load_tiktoken_tokenizer(model_path);
      fail("{} is a tiktoken BPE file; --tokenizer-type {} reads the model's Hugging Face tokenizer.json (or its "
           "folder)",
           model_path, type);
    }
    return load_hf_tokenizer(model_path);
  }
  if (type == "HuggingFaceTokenizer") {
    need_model();
    if (!std::filesystem::is_directory(model_path) && looks_like_tiktoken_file(model_path))
      fail("{} is a tiktoken BPE file, not a tokenizer.json; use --tokenizer-type TikTokenizer", model_path);
    return load_hf_tokenizer(model_path);
  }
  if (type == "SentencePieceTokenizer" || type == "Llama2Tokenizer" || type == "GPTSentencePieceTokenizer") {
    need_model();
    if (looks_like_tiktoken_file(model_path)) {
      // Llama 3's tokenizer.model has the SentencePiece name but is a tiktoken file.
      fmt::print(stderr,
                 "note: {} is a tiktoken BPE file (as Llama 3's tokenizer.model is), not a SentencePiece model; "
                 "reading it as TikTokenizer (pass --tokenizer-type TikTokenizer to silence this note)\n",
                 model_path);
      return load_tiktoken_tokenizer(model_path);
    }
    if (std::filesystem::path(model_path).extension() == ".json")
      fail("{} is a JSON file, not a SentencePiece model; for a tokenizer.json use --tokenizer-type "
           "HuggingFaceTokenizer",
           model_path);
    return load_sentencepiece_tokenizer(model_path);
  }
  if (type == "TikTokenizer") {
    need_model();
    return load_tiktoken_tokenizer(model_path);
  }
  if (type == "GPT2BPETokenizer") {
    std::string vocab = vocab_file, merges = merge_file;
    if (vocab.empty() && !model_path.empty() && std::filesystem::is_directory(model_path)) {
      vocab = (std::filesystem::path(model_path) / "vocab.json").string();
      merges = (std::filesystem::path(model_path) / "merges.txt").string();
    }
    return load_gpt2_bpe_tokenizer(vocab, merges);
  }
  if (type == "NullTokenizer") return make_null_tokenizer(vocab_size);
  fail("unknown --tokenizer-type '{}'{} (known: {})", type, did_you_mean(type, tokenizer_type_names()),
       fmt::join(tokenizer_type_names(), ", "));
}

}  // namespace primus::data
