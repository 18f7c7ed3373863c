#include "data/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <exception>
#include <filesystem>

#include "core/error.h"
#include "data/tokenizer/utf8.h"

namespace primus::data {

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp, std::string path)
      : sp_(std::move(sp)), path_(std::move(path)) {}

  void encode_append(std::string_view text, std::vector<int32_t>& out, SpecialTokens) override {
    std::vector<int> ids;
    const std::string clean = utf8_is_valid(text) ? std::string() : utf8_sanitize(text);
    const auto status = sp_->Encode(clean.empty() ? text : std::string_view(clean), &ids);
    PRIMUS_CHECK(status.ok(), "{}: SentencePiece encode failed: {}", path_, status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<int> v;
    for (int32_t id : ids) {
      PRIMUS_CHECK(id >= 0 && id < sp_->GetPieceSize(), "{}: decode got id {} outside the vocabulary [0, {})", path_,
                   id, sp_->GetPieceSize());
      if (skip_special && (sp_->IsControl(id) || sp_->IsUnknown(id))) continue;
      v.push_back(id);
    }
    std::string text;
    const auto status = sp_->Decode(v, &text);
    PRIMUS_CHECK(status.ok(), "{}: SentencePiece decode failed: {}", path_, status.ToString());
    return text;
  }

  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  int32_t eod() const override { return sp_->eos_id(); }
  int32_t bos() const override { return sp_->bos_id(); }
  int32_t pad() const override { return sp_->pad_id(); }
  int32_t token_to_id(std::string_view token) const override {
    const int id = sp_->PieceToId(token);
    return (id == sp_->unk_id() && token != sp_->IdToPiece(id)) ? -1 : id;
  }
  std::vector<int32_t> special_ids() const override {
    std::vector<int32_t> ids;
    for (int id = 0; id < sp_->GetPieceSize(); ++id)
      if (sp_->IsControl(id) || sp_->IsUnknown(id)) ids.push_back(id);
    return ids;
  }
  std::string type_name() const override { return "SentencePieceTokenizer"; }
  std::unique_ptr<Tokenizer> clone() const override { return std::make_unique<SentencePieceTokenizer>(sp_, path_); }

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;  // thread-safe for encode/decode
  std::string path_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  PRIMUS_CHECK(std::filesystem::is_regular_file(path), "SentencePieceTokenizer: {} is not a file", path);
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  sentencepiece::util::Status status;
  try {
    status = sp->Load(path);
  } catch (const std::exception& e) {
    // libsentencepiece reports some malformed models by throwing, not by its status: a piece
    // starting with a NUL byte makes the unigram trie builder (darts-clone) throw "zero-length
    // key" (found by fuzz_sentencepiece_model).
    fail("{}: not a valid SentencePiece model (libsentencepiece: {}); a tokenizer.json needs --tokenizer-type "
         "HuggingFaceTokenizer",
         path, e.what());
  }
  PRIMUS_CHECK(status.ok(),
               "{}: not a SentencePiece model ({}); a tokenizer.json needs --tokenizer-type HuggingFaceTokenizer",
               path, status.ToString());
  return std::make_unique<SentencePieceTokenizer>(sp, path);
}

}  // namespace primus::data
