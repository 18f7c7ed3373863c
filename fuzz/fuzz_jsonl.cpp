// The JSONL reader of `primus preprocess`: LineReader (plain, .gz or .zst by magic bytes), one
// JSON object per line, the --json-keys fields (a string or a list of strings), blank and bad
// lines, sentence splitting; every document written is read back. The input's first byte
// picks the options, the rest is the input file.
#include <memory>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer/null_tokenizer.h"
#include "data/tokenizer/tiktoken_tokenizer.h"
#include "fuzz_common.h"

namespace {

// A byte-level tiktoken vocabulary (the 256 bytes and a few merges): every text encodes.
const primus::data::Tokenizer& byte_tokenizer() {
  static const std::unique_ptr<primus::data::Tokenizer> tok = [] {
    static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string file;
    for (int b = 0; b < 256; ++b)
      file += std::string{b64[b >> 2], b64[(b & 3) << 4], '=', '='} + " " + std::to_string(b) + "\n";
    file += "dGg= 256\naGU= 257\ndGhl 258\nIHQ= 259\n";  // "th" "he" "the" " t"
    const std::string path = primus::fuzz::write_input("bytes.tiktoken", reinterpret_cast<const uint8_t*>(file.data()),
                                                       file.size());
    return primus::data::load_tiktoken_tokenizer(path);
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  primus::data::PreprocessOptions o;
  o.inputs = {primus::fuzz::write_input("input.jsonl", data + 1, size - 1)};
  o.output_prefix = (primus::fuzz::scratch_dir() / "out").string();
  o.split_sentences = flags & 1;
  o.keep_newlines = flags & 2;
  o.skip_bad_lines = flags & 4;
  o.append_eod = flags & 8;
  if (flags & 16) o.json_keys = {"text", "meta"};
  o.special = (flags & 32) ? primus::data::SpecialTokens::kAdd : primus::data::SpecialTokens::kNone;
  o.progress = false;
  static const auto null_tokenizer = primus::data::make_null_tokenizer(1000);  // ids as decimal numbers
  const primus::data::Tokenizer& tok = (flags & 64) ? *null_tokenizer : byte_tokenizer();
  try {
    const auto stats = primus::data::run_preprocess(o, tok);
    for (const auto& prefix : stats.output_prefixes) {
      const primus::data::IndexedDataset ds(prefix);
      for (int64_t i = 0; i < ds.num_sequences(); ++i) (void)ds.sequence(i).size();
    }
  } catch (const primus::Error&) {
  }
  return 0;
}
