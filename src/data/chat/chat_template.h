// Chat templates: the Jinja `chat_template` of a HuggingFace tokenizer_config.json, rendered in
// C++ byte-for-byte as Python's jinja2 (and transformers' apply_chat_template) renders it.
//
//   ChatTemplate t = ChatTemplate::from_tokenizer_config("tokenizer_config.json");
//   nlohmann::json messages = nlohmann::json::parse(R"([{"role":"user","content":"Hi"}])");
//   std::string text = t.render(messages, /*add_generation_prompt=*/true);
//
// The template language is the subset that real chat templates use (docs/POSTTRAIN.md lists
// it): {{ }}, {% if/elif/else %}, {% for %} with loop.* and else, {% set %} (also
// namespace()), {% macro %}, whitespace control ({%- -%}, trim_blocks as transformers sets
// it), comments, literals, arithmetic, comparisons, `in`, `is` tests, filters and string
// methods. Anything else is refused when the template is parsed, naming the feature and the
// line; raise_exception() in a template becomes a primus::Error with the template's message.
//
// The implementation: jinja_lexer (jinja2's whitespace rules), jinja_parser (grammar and the
// refusals), jinja_render (scoping, globals, the bounds on hostile templates), jinja_builtins
// (filters, tests, methods, operators), jinja_value (Python's values, str/repr, tojson).
// Parity with jinja2: tests/chat/check_chat_templates.py (ctest chat.template_parity).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace primus::data::chat {

class ChatTemplate {
 public:
  // Parses `source`; `origin` names it in errors ("tokenizer_config.json: chat_template").
  // Throws primus::Error for syntax errors and unsupported features (with line and column).
  ChatTemplate(const std::string& source, const std::string& origin);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Reads chat_template (a string, or the list form's "default" entry) and the bos/eos
  // token strings (plain strings or {"content": ...} objects) from a tokenizer_config.json.
  static ChatTemplate from_tokenizer_config(const std::string& path);

  // Renders with the variables transformers passes: messages, add_generation_prompt,
  // bos_token, eos_token (from the config; empty strings otherwise), plus every key of
  // `extra` (tools, documents, date_string, ...; extra wins over the defaults).
  // `tools` and `documents` are None unless `extra` sets them, as transformers passes them.
  // Errors: primus::Error "ORIGIN:LINE:COL: chat template: ..." (an undefined attribute of
  // an undefined value, a type error, a bound: 64 MiB of output, 10^7 loop iterations,
  // macro calls 100 deep, range() over 100000 items); raise_exception("msg") in the template
  // throws "chat template: msg". nlohmann::json objects iterate their keys sorted, so a
  // dict's order in the output (tojson, items()) is sorted: render_ordered keeps it.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nlohmann::json::object()) const;
  // The same, with the keys of every object in the order the JSON text had them (as Python's
  // json.loads keeps them), e.g. for tool schemas rendered with tojson.
  std::string render_ordered(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                             const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const;
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  void set_special_tokens(std::string bos, std::string eos);

 public:
  struct Impl;  // chat_template.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace primus::data::chat
