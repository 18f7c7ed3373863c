// A tiktoken BPE file ("base64 rank" lines) through the tokenizer factory as
// --tokenizer-type TikTokenizer, then an encode and decode of a fixed text.
#include "core/error.h"
#include "data/tokenizer/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = primus::fuzz::write_input("tokenizer.tiktoken", data, size);
  try {
    primus::fuzz::encode_decode(*primus::data::make_tokenizer("TikTokenizer", path));
  } catch (const primus::Error&) {
  }
  return 0;
}
