// The HF tokenizer.json loader (BPE / WordPiece-free byte-level models, normalizers,
// pre-tokenizers, added tokens), then an encode and decode of a fixed text.
#include "core/error.h"
#include "data/tokenizer/hf_tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = primus::fuzz::write_input("tokenizer.json", data, size);
  try {
    primus::fuzz::encode_decode(*primus::data::load_hf_tokenizer(path));
  } catch (const primus::Error&) {
  }
  return 0;
}
