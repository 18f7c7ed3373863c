// tiktoken BPE files: one "base64(token bytes) rank" line per token, rank = id. Llama 3's
// tokenizer.model is one; with 128000 ranks it gets Llama 3's split pattern and its 256
// special tokens (<|begin_of_text|> = 128000, <|end_of_text|> = 128001, <|eot_id|> = 128009).
// Text is encoded as tiktoken's encode_ordinary does (as Megatron's TikTokenizer does):
// special-token strings in the text are plain text.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer/tokenizer.h"

namespace primus::data {

// True when the file starts like a tiktoken file (base64, a space, a number).
bool looks_like_tiktoken_file(const std::string& path);

std::unique_ptr<Tokenizer> load_tiktoken_tokenizer(const std::string& path);

}  // namespace primus::data
