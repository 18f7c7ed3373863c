// Megatron's NullTokenizer: the text is already ids, written as decimal numbers separated
// by spaces. vocab_size() is --vocab-size + 1: the extra last id is the end of document.
#pragma once

#include <memory>

#include "data/tokenizer/tokenizer.h"

namespace primus::data {

std::unique_ptr<Tokenizer> make_null_tokenizer(int64_t vocab_size);

}  // namespace primus::data
