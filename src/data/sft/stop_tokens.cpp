#include "data/sft/stop_tokens.h"

#include <algorithm>
#include <string>

namespace primus::data::sft {

int32_t end_of_turn_id(const chat::ChatTemplate& t, Tokenizer& tok) {
  const std::string marker = "Zq7xPRIMUSxANSWERx";
  std::string text;
  try {
    text = t.render(nlohmann::json::array({{{"role", "user"}, {"content", "Hello"}},
                                           {{"role", "assistant"}, {"content", marker}}}),
                    false);
  } catch (const std::exception&) {
    return -1;  // a template that refuses this conversation: rely on the named tokens
  }
  const size_t at = text.find(marker);
  if (at == std::string::npos) return -1;
  const std::vector<int32_t> after = tok.encode(std::string_view(text).substr(at + marker.size()));
  if (after.empty()) return -1;
  const std::vector<int32_t> special = tok.special_ids();
  return std::find(special.begin(), special.end(), after[0]) != special.end() ? after[0] : -1;
}

std::vector<int32_t> stop_token_ids(Tokenizer& tok, const chat::ChatTemplate* tmpl) {
  std::vector<int32_t> ids = {tok.eod()};
  if (tmpl != nullptr) {
    if (!tmpl->eos_token().empty()) ids.push_back(tok.token_to_id(tmpl->eos_token()));
    ids.push_back(end_of_turn_id(*tmpl, tok));
  }
  for (const char* name : {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|im_end|>",
                           "<|end|>", "<end_of_turn>"})
    ids.push_back(tok.token_to_id(name));
  std::vector<int32_t> out;
  for (int32_t id : ids)
    if (id >= 0 && std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  return out;
}

}  // namespace primus::data::sft
