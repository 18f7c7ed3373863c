// SentencePiece .model files through Debian's libsentencepiece (Llama 2, Mistral, T5 ...).
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer/tokenizer.h"

namespace primus::data {

// eod is the model's </s> (eos_id), bos its <s>, pad its pad_id when set.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path);

}  // namespace primus::data
