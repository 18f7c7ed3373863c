// The prompts of a GRPO run: one JSONL line -> one prompt, as TRL's GRPOTrainer reads them.
//
//   {"prompt": "text", ...}                    the text as it is (a bos token first when the
//                                              tokenizer has one): TRL's "standard" format
//   {"prompt": [messages], ...}                rendered by the chat template with
//   {"messages": [messages], ...}              add_generation_prompt (TRL's "conversational")
//
// Every other key of the line (e.g. "answer") is kept and handed to the reward functions
// (rl/rewards.h). A message list must not end with an assistant turn (the model writes it).
// Every error starts with "FILE:LINE:" and names the field.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/sft/sft_tokenize.h"
#include "data/tokenizer/tokenizer.h"

namespace primus::rl {

struct RlPrompt {
  std::vector<int32_t> ids;  // what the model is given
  std::string text;          // the prompt text (rendered when it was a message list)
  nlohmann::json record;     // the whole line (the reward functions read its other keys)
  std::string where;         // FILE:LINE
};

// Reads every non-blank line of the files (plain, .gz or .zst). `max_prompt_length` > 0:
// a longer prompt is an error naming it and the key.
std::vector<RlPrompt> load_prompts(const std::vector<std::string>& paths, data::Tokenizer& tokenizer,
                                   const data::sft::ChatTemplateSource& tmpl, int64_t max_prompt_length);

// One line (file and line only name it in errors).
RlPrompt parse_prompt(const std::string& text, const std::string& file, int64_t line, data::Tokenizer& tokenizer,
                      const data::sft::ChatTemplateSource& tmpl, int64_t max_prompt_length);

}  // namespace primus::rl
