// Post-training records: one JSONL line -> one conversation (SFT) or one preference pair
// (DPO), whatever common shape the line has. The shape is detected per line from its keys:
//
//   messages       {"messages": [{"role": "user", "content": "..."}, ...]}          (OpenAI)
//   conversations  {"conversations": [{"from": "human", "value": "..."}, ...]}      (ShareGPT;
//                  from: human -> user, gpt -> assistant, system -> system; user, assistant
//                  and tool are also taken as they are)
//   alpaca         {"instruction": "...", "input": "...", "output": "..."}          (input
//                  optional: user = instruction, + "\n\n" + input when non-empty;
//                  assistant = output)
//   prompt/completion  {"prompt": P, "completion": C}: each a string (a user message, an
//                  assistant message) or a message list
//   preference     {"prompt": P, "chosen": C, "rejected": R}: each a string or a message list;
//                  without "prompt", chosen and rejected must be message lists, and the
//                  messages they share from the start are the prompt (TRL's implicit prompt)
//
// Other keys (ids, scores, metadata) are ignored. A line holding the keys of two shapes is
// refused as ambiguous (naming the keys seen) unless the caller says which kind it wants: a
// preference dataset reads only the preference keys (so UltraFeedback's lines, which also
// hold "messages", are pairs), an SFT dataset only the SFT keys. Every error starts with
// "FILE:LINE:" and names the field, what it is and what is accepted.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace primus::data::sft {

enum class RecordShape { kMessages, kConversations, kAlpaca, kPromptCompletion, kPreference };
const char* record_shape_name(RecordShape shape);  // "messages", "conversations", ...

// Which shapes a reader accepts: any (ambiguity is an error), only the SFT shapes, or only
// preference pairs.
enum class RecordKind { kAny, kSft, kPreference };

// One line, normalized to message lists ([{"role": ..., "content": ...}], content a string).
//   messages, conversations, alpaca: `completion` holds the whole conversation (loss on its
//                                    assistant turns), `prompt` is empty
//   prompt/completion:               `prompt` then `completion` (loss on the completion)
//   preference:                      `prompt`, `completion` = chosen, `rejected`
struct ChatRecord {
  RecordShape shape = RecordShape::kMessages;
  nlohmann::json prompt = nlohmann::json::array();
  nlohmann::json completion = nlohmann::json::array();
  nlohmann::json rejected = nlohmann::json::array();
  std::string file;
  int64_t line = 0;

  bool is_preference() const { return shape == RecordShape::kPreference; }
  // messages / conversations / alpaca: every assistant turn of `completion` is trained.
  bool is_conversation() const {
    return shape == RecordShape::kMessages || shape == RecordShape::kConversations || shape == RecordShape::kAlpaca;
  }
  // "FILE:LINE" for messages.
  std::string where() const;
};

// The accepted shapes in one line of text, for error messages.
const std::string& accepted_record_shapes();

// Parses one JSONL line (file and line only name it in errors). Throws primus::Error
// "FILE:LINE: ..." for invalid JSON, a non-object, a missing or mistyped field, an unknown or
// (with kAny) ambiguous shape.
ChatRecord parse_chat_record(std::string_view text, const std::string& file, int64_t line, RecordKind kind);

// Every non-blank line of a JSONL file (plain, .gz or .zst).
std::vector<ChatRecord> read_chat_records(const std::string& path, RecordKind kind);

}  // namespace primus::data::sft
