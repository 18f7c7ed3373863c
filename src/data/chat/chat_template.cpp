// ChatTemplate: a parsed chat template plus the special tokens it is rendered with; see
// chat_template.h. The language lives in jinja_*.{h,cpp}.
#include "data/chat/chat_template.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/chat/jinja_parser.h"
#include "data/chat/jinja_render.h"

namespace primus::data::chat {

struct ChatTemplate::Impl {
  std::string source, origin, bos, eos;
  jinja::Body body;
};

ChatTemplate::ChatTemplate(const std::string& source, const std::string& origin) : impl_(std::make_unique<Impl>()) {
  impl_->source = source;
  impl_->origin = origin;
  impl_->body = jinja::parse_template(source, origin);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

namespace {

// A special token of tokenizer_config.json: a string, {"content": "..."} (AddedToken), or null.
std::string special_token(const nlohmann::json& cfg, const char* key, const std::string& path) {
  const auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  throw Error(fmt::format("{}: '{}' must be a string, an object with a string \"content\", or null (got {})", path,
                          key, it->dump()));
}

template <typename J>
std::string render_impl(const ChatTemplate::Impl& impl, const J& messages, bool add_generation_prompt,
                        const J& extra) {
  if (!extra.is_object())
    throw Error(fmt::format("{}: the extra template variables must be a JSON object (got {})", impl.origin,
                            extra.type_name()));
  jinja::Dict vars;
  vars.set(jinja::Value::string("messages"), jinja::from_json(messages));
  // transformers passes tools and documents always (None when not given)
  vars.set(jinja::Value::string("tools"), jinja::Value::none());
  vars.set(jinja::Value::string("documents"), jinja::Value::none());
  vars.set(jinja::Value::string("add_generation_prompt"), jinja::Value::boolean(add_generation_prompt));
  vars.set(jinja::Value::string("bos_token"), jinja::Value::string(impl.bos));
  vars.set(jinja::Value::string("eos_token"), jinja::Value::string(impl.eos));
  for (auto it = extra.begin(); it != extra.end(); ++it)
    vars.set(jinja::Value::string(it.key()), jinja::from_json(it.value()));
  return jinja::render_template(impl.body, vars, impl.origin);
}

}  // namespace

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the tokenizer config (no such file, or not readable)", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  if (!cfg.is_object()) throw Error(fmt::format("{}: expected a JSON object (a tokenizer_config.json)", path));
  const auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null())
    throw Error(fmt::format("{}: no 'chat_template' key: this tokenizer has no chat template; name a template file "
                            "with `chat_template: PATH.jinja` in the experiment config",
                            path));
  std::string source;
  std::string origin = path + ": chat_template";
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    std::string names;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
          !entry["template"].is_string())
        throw Error(fmt::format("{}: 'chat_template' as a list must hold {{\"name\": ..., \"template\": ...}} objects",
                                path));
      const std::string name = entry["name"].get<std::string>();
      names += (names.empty() ? "" : ", ") + name;
      if (name == "default") {
        source = entry["template"].get<std::string>();
        origin = path + ": chat_template[default]";
      }
    }
    if (source.empty())
      throw Error(fmt::format("{}: 'chat_template' lists templates ({}) but none named \"default\"; name a template "
                              "file with `chat_template: PATH.jinja` in the experiment config",
                              path, names));
  } else {
    throw Error(fmt::format("{}: 'chat_template' must be a string or a list of {{\"name\", \"template\"}} objects", path));
  }
  ChatTemplate t(source, origin);
  t.set_special_tokens(special_token(cfg, "bos_token", path), special_token(cfg, "eos_token", path));
  return t;
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render_impl(*impl_, messages, add_generation_prompt, extra);
}

std::string ChatTemplate::render_ordered(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                         const nlohmann::ordered_json& extra) const {
  return render_impl(*impl_, messages, add_generation_prompt, extra);
}

const std::string& ChatTemplate::source() const { return impl_->source; }
const std::string& ChatTemplate::bos_token() const { return impl_->bos; }
const std::string& ChatTemplate::eos_token() const { return impl_->eos; }
void ChatTemplate::set_special_tokens(std::string bos, std::string eos) {
  impl_->bos = std::move(bos);
  impl_->eos = std::move(eos);
}

}  // namespace primus::data::chat
