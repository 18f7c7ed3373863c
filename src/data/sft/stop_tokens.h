// Which token ids end a model's answer: the tokenizer's end of document, the chat template's
// eos_token and the end-of-turn token it writes after an assistant turn, and, where the vocabulary has them,
// the usual end tokens (<|eot_id|>, <|eom_id|>, <|end_of_text|>, <|endoftext|>, </s>, <|im_end|>,
// <|end|>, <end_of_turn>). Used by generation and GRPO rollouts.
#pragma once

#include <cstdint>
#include <vector>

#include "data/chat/chat_template.h"
#include "data/tokenizer/tokenizer.h"

namespace primus::data::sft {

// The special token `t` writes right after an assistant turn's content, or -1.
int32_t end_of_turn_id(const chat::ChatTemplate& t, Tokenizer& tok);

// The stop ids, each once, in the order above (`tmpl` may be null: no template).
std::vector<int32_t> stop_token_ids(Tokenizer& tok, const chat::ChatTemplate* tmpl);

}  // namespace primus::data::sft
