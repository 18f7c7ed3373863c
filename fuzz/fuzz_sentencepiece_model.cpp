// A tokenizer.model through the tokenizer factory as --tokenizer-type SentencePieceTokenizer:
// the SentencePiece protobuf (libsentencepiece's loader, not instrumented: the guidance comes
// from our wrapper), or a tiktoken file given under that name (Llama 3's); then an encode and
// decode of a fixed text.
#include "core/error.h"
#include "data/tokenizer/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = primus::fuzz::write_input("tokenizer.model", data, size);
  try {
    primus::fuzz::encode_decode(*primus::data::make_tokenizer("SentencePieceTokenizer", path));
  } catch (const primus::Error&) {
  }
  return 0;
}
