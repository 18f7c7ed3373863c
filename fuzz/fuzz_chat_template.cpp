// A chat template and the messages it renders: the input is TEMPLATE, a 0xFF byte, then the
// messages JSON (an array of {"role", "content", ...}; anything else renders with none). The
// template is parsed (refusals are primus::Error) and rendered with add_generation_prompt
// false and true, a tools list and the special tokens; the bounds on hostile templates
// (output size, loop iterations, macro depth) must end every run with at most a primus::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/chat/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\xff');
  const std::string source = input.substr(0, split);
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (split != std::string::npos) {
    messages = nlohmann::ordered_json::parse(input.substr(split + 1), nullptr, /*allow_exceptions=*/false);
    if (messages.is_discarded()) messages = nlohmann::ordered_json::array();
  }
  const nlohmann::ordered_json extra = nlohmann::ordered_json::parse(
      R"({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
          "date_string": "26 Jul 2024"})");
  try {
    primus::data::chat::ChatTemplate t(source, "fuzz.jinja");
    t.set_special_tokens("<s>", "</s>");
    for (bool agp : {false, true}) {
      try {
        (void)t.render_ordered(messages, agp, extra);
      } catch (const primus::Error&) {
      }
    }
  } catch (const primus::Error&) {
  }
  return 0;
}
