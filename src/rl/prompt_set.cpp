#include "rl/prompt_set.h"

#include <filesystem>

#include "core/error.h"
#include "core/strings.h"
#include "data/line_reader.h"

namespace primus::rl {

namespace {
using nlohmann::json;

[[noreturn]] void fail_at(const std::string& where, const std::string& what) {
  throw Error(fmt::format("{}: {}", where, what));
}

void check_messages(const json& m, const std::string& where, const char* key) {
  if (!m.is_array() || m.empty())
    fail_at(where, fmt::format("\"{}\" must be a non-empty list of {{\"role\", \"content\"}} messages, got {}", key,
                               m.type_name()));
  for (size_t i = 0; i < m.size(); ++i) {
    const json& x = m[i];
    if (!x.is_object() || !x.contains("role") || !x["role"].is_string() || !x.contains("content") ||
        !x["content"].is_string())
      fail_at(where, fmt::format("\"{}\"[{}] must be an object with string \"role\" and \"content\"", key, i));
  }
  if (m.back()["role"] == "assistant")
    fail_at(where, fmt::format("\"{}\" ends with an assistant turn; a GRPO prompt ends where the model's answer "
                               "starts (drop the last turn)", key));
}
}  // namespace

RlPrompt parse_prompt(const std::string& text, const std::string& file, int64_t line, data::Tokenizer& tokenizer,
                      const data::sft::ChatTemplateSource& tmpl, int64_t max_prompt_length) {
  RlPrompt p;
  p.where = fmt::format("{}:{}", file, line);
  try {
    p.record = json::parse(text);
  } catch (const json::exception& e) {
    fail_at(p.where, fmt::format("not valid JSON ({})", e.what()));
  }
  if (!p.record.is_object()) fail_at(p.where, fmt::format("a prompt line must be a JSON object, got {}", p.record.type_name()));
  const bool has_prompt = p.record.contains("prompt"), has_messages = p.record.contains("messages");
  if (has_prompt == has_messages)
    fail_at(p.where, has_prompt ? "the line has both \"prompt\" and \"messages\": keep one"
                                : "the line has neither \"prompt\" (a string or a message list) nor \"messages\"");
  const char* key = has_prompt ? "prompt" : "messages";
  const json& value = p.record[key];
  if (value.is_string()) {
    if (!has_prompt) fail_at(p.where, "\"messages\" must be a list of messages, got a string (use \"prompt\")");
    p.text = value.get<std::string>();
    if (tokenizer.bos() >= 0) p.ids.push_back(tokenizer.bos());
    tokenizer.encode_append(p.text, p.ids);
  } else {
    check_messages(value, p.where, key);
    if (!tmpl.tmpl)
      fail_at(p.where, fmt::format("\"{}\" is a message list but chat_template is none: set chat_template (null for "
                                   "the tokenizer's own, or a .jinja file), or give \"prompt\" as text",
                                   key));
    p.text = tmpl.tmpl->render(value, /*add_generation_prompt=*/true);
    tokenizer.encode_append(p.text, p.ids);
  }
  if (p.ids.empty()) fail_at(p.where, fmt::format("\"{}\" encodes to no tokens", key));
  if (max_prompt_length > 0 && static_cast<int64_t>(p.ids.size()) > max_prompt_length)
    fail_at(p.where, fmt::format("the prompt has {} tokens, more than max_prompt_length = {}: raise "
                                 "max_prompt_length (with seq_length >= max_prompt_length + max_completion_length) "
                                 "or shorten the prompt",
                                 p.ids.size(), max_prompt_length));
  return p;
}

std::vector<RlPrompt> load_prompts(const std::vector<std::string>& paths, data::Tokenizer& tokenizer,
                                   const data::sft::ChatTemplateSource& tmpl, int64_t max_prompt_length) {
  std::vector<RlPrompt> out;
  for (const std::string& path : paths) {
    PRIMUS_CHECK(std::filesystem::is_regular_file(path), "GRPO prompt file {} does not exist", path);
    data::LineReader reader(path);
    std::string line;
    while (reader.next(line)) {
      if (trim(line).empty()) continue;
      out.push_back(parse_prompt(line, path, reader.line_number(), tokenizer, tmpl, max_prompt_length));
    }
  }
  return out;
}

}  // namespace primus::rl
