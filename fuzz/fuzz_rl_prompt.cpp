// GRPO's two parsers: a prompt line (rl/prompt_set.h: "prompt" text or message list, or
// "messages", through the ChatML template of the test tokenizer) and a reward process's answer
// line (rl/reward_process.h). The input is the prompt line, a 0xFF byte, then the answer line.
// A primus::Error is the expected answer to bad input; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "data/sft/sft_tokenize.h"
#include "data/tokenizer/tokenizer.h"
#include "rl/prompt_set.h"
#include "rl/reward_process.h"

namespace {
struct Fixture {
  std::unique_ptr<primus::data::Tokenizer> tok;
  primus::data::sft::ChatTemplateSource tmpl;
  Fixture() {
    const std::string dir = std::string(PRIMUS_SOURCE_DIR) + "/tests/data/posttrain/chatml_bytes";
    tok = primus::data::make_tokenizer("HuggingFaceTokenizer", dir + "/tokenizer.json", 259);
    tmpl = primus::data::sft::load_chat_template("", dir + "/tokenizer.json", *tok);
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture f;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\xff');
  try {
    const primus::rl::RlPrompt p = primus::rl::parse_prompt(input.substr(0, split), "fuzz.jsonl", 1, *f.tok, f.tmpl, 512);
    (void)p;
  } catch (const primus::Error&) {
  }
  if (split != std::string::npos) {
    try {
      (void)primus::rl::parse_reward_answer(input.substr(split + 1), "fuzz");
    } catch (const primus::Error&) {
    }
  }
  return 0;
}
