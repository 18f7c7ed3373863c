#include "data/sft/sft_tokenize.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"
#include "data/sft/sft_cache.h"

namespace primus::data::sft {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMUS_CHECK(in.good(), "chat template file {} cannot be read", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json head(const json& messages, size_t n) {
  json out = json::array();
  for (size_t i = 0; i < n; ++i) out.push_back(messages[i]);
  return out;
}

}  // namespace

const char* loss_mode_name(LossMode m) { return m == LossMode::kAll ? "all" : "assistant_only"; }

LossMode parse_loss_mode(const std::string& v, const std::string& key) {
  if (v == "assistant_only" || v.empty()) return LossMode::kAssistantOnly;
  if (v == "all") return LossMode::kAll;
  fail("{}: '{}' is not a loss mode; expected assistant_only (loss on the assistant turns / completion) or all "
       "(every token){}",
       key, v, did_you_mean(v, {"assistant_only", "all"}));
}

int64_t TokenizedExample::loss_tokens() const {
  int64_t n = 0;
  for (uint8_t m : mask) n += m;
  return n;
}

ChatTemplateSource load_chat_template(const std::string& spec, const std::string& model_path,
                                      const Tokenizer& tok) {
  ChatTemplateSource s;
  if (spec == "none") {
    s.name = "none";
    s.hash = "none";
    return s;
  }
  std::string path = spec;
  if (spec.empty()) {
    PRIMUS_CHECK(!model_path.empty(),
                 "chat_template is not set and the {} has no tokenizer model whose tokenizer_config.json could hold "
                 "one: set chat_template to a .jinja file, a tokenizer_config.json, or none (raw prompt + completion)",
                 tok.type_name());
    const fs::path dir = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
    path = (dir / "tokenizer_config.json").string();
    PRIMUS_CHECK(fs::is_regular_file(path),
                 "chat_template is not set and {} does not exist beside the tokenizer model {}: set chat_template to "
                 "a .jinja file, a tokenizer_config.json, or none (raw prompt + completion)",
                 path, model_path);
  }
  PRIMUS_CHECK(fs::is_regular_file(path), "chat_template {} does not exist (expected a .jinja file, a "
                                          "tokenizer_config.json, or none)", path);
  if (fs::path(path).extension() == ".json") {
    json cfg;
    try {
      cfg = json::parse(read_text_file(path));
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", path, e.what());
    }
    PRIMUS_CHECK(cfg.is_object() && cfg.contains("chat_template"),
                 "{} has no chat_template: set chat_template to a .jinja file, or none (raw prompt + completion)", path);
    s.tmpl = std::make_shared<const chat::ChatTemplate>(chat::ChatTemplate::from_tokenizer_config(path));
  } else {
    auto t = std::make_shared<chat::ChatTemplate>(read_text_file(path), path);
    t->set_special_tokens(tok.bos() >= 0 ? tok.decode(std::vector<int32_t>{tok.bos()}) : "",
                          tok.eod() >= 0 ? tok.decode(std::vector<int32_t>{tok.eod()}) : "");
    s.tmpl = std::move(t);
  }
  s.name = path;
  s.hash = hash_bytes(s.tmpl->source() + '\0' + s.tmpl->bos_token() + '\0' + s.tmpl->eos_token());
  return s;
}

SftTokenizer::SftTokenizer(Tokenizer& tokenizer, ChatTemplateSource tmpl, LossMode mode)
    : tok_(tokenizer), tmpl_(std::move(tmpl)), mode_(mode) {}

void SftTokenizer::append_text(std::string_view text, bool trained, TokenizedExample& out) {
  tok_.encode_append(text, out.tokens, SpecialTokens::kNone);
  out.mask.resize(out.tokens.size(), trained ? 1 : 0);
}

TokenizedExample SftTokenizer::tokenize(const ChatRecord& r) {
  PRIMUS_CHECK(!r.is_preference(), "{}: a preference pair given to the SFT tokenizer", r.where());
  if (!tmpl_.tmpl) return raw(r, r.prompt, r.completion, false);
  json messages = r.prompt;
  for (const json& m : r.completion) messages.push_back(m);
  return render_and_tokenize(r, messages, r.prompt.size(), !r.is_conversation(), false);
}

std::pair<TokenizedExample, TokenizedExample> SftTokenizer::tokenize_preference(const ChatRecord& r) {
  PRIMUS_CHECK(r.is_preference(), "{}: a {} record given to the preference tokenizer", r.where(),
               record_shape_name(r.shape));
  if (!tmpl_.tmpl) return {raw(r, r.prompt, r.completion, true), raw(r, r.prompt, r.rejected, true)};
  json chosen = r.prompt, rejected = r.prompt;
  for (const json& m : r.completion) chosen.push_back(m);
  for (const json& m : r.rejected) rejected.push_back(m);
  return {render_and_tokenize(r, chosen, r.prompt.size(), true, true),
          render_and_tokenize(r, rejected, r.prompt.size(), true, true)};
}

TokenizedExample SftTokenizer::render_and_tokenize(const ChatRecord& r, const json& messages, size_t first_trained,
                                                   bool every_turn, bool completion_only) {
  auto render = [&](const json& m, bool gen) {
    try {
      return tmpl_.tmpl->render(m, gen);
    } catch (const std::exception& e) {
      fail("{}: chat template {} failed to render this record: {}", r.where(), tmpl_.name, e.what());
    }
  };
  const std::string full = render(messages, false);
  TokenizedExample out;
  if (mode_ == LossMode::kAll && !completion_only) {
    append_text(full, true, out);
    return out;
  }
  // Spans [begin, end) of `full` written by the trained turns.
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t i = first_trained; i < messages.size(); ++i) {
    const bool assistant = messages[i]["role"] == "assistant";
    if (!every_turn && !assistant) continue;
    const std::string before = render(head(messages, i), assistant);
    const std::string upto = render(head(messages, i + 1), false);
    const size_t prev_end = spans.empty() ? 0 : spans.back().second;
    const char* why = nullptr;
    if (!starts_with(upto, before))
      why = "the render of the turns before it (with add_generation_prompt) is not a prefix of the render that "
            "includes it";
    else if (!starts_with(full, upto))
      why = "the render up to this turn is not a prefix of the whole conversation's render";
    else if (before.size() < prev_end)
      why = "it overlaps the previous trained turn";
    if (why)
      fail("{}: chat template {}: cannot find the text of turn {} (role {}): {}. Masking only the assistant "
           "turns needs a template whose renders of growing conversations extend each other; set the loss mode to "
           "all (every token trained) for this template",
           r.where(), tmpl_.name, i, messages[i]["role"].get<std::string>(), why);
    spans.emplace_back(before.size(), upto.size());
  }
  size_t pos = 0;
  const std::string_view text(full);
  for (const auto& [b, e] : spans) {
    append_text(text.substr(pos, b - pos), false, out);
    append_text(text.substr(b, e - b), true, out);
    pos = e;
  }
  append_text(text.substr(pos), false, out);
  return out;
}

TokenizedExample SftTokenizer::raw(const ChatRecord& r, const json& prompt, const json& completion,
                                   bool completion_only) {
  // Without a template only "one user prompt, one assistant answer" has a raw form.
  const json* p = &prompt;
  const json* c = &completion;
  json conv_prompt, conv_completion;
  if (r.is_conversation()) {
    if (completion.size() != 2 || completion[0]["role"] != "user" || completion[1]["role"] != "assistant")
      fail("{}: chat_template is none, so a conversation must be one user turn then one assistant turn (this one "
           "has {} turns); set chat_template (\"\" for the tokenizer's own, or a .jinja file) to train "
           "multi-turn chats",
           r.where(), completion.size());
    conv_prompt = json::array({completion[0]});
    conv_completion = json::array({completion[1]});
    p = &conv_prompt;
    c = &conv_completion;
  }
  if (p->size() != 1 || (*p)[0]["role"] != "user" || c->size() != 1 || (*c)[0]["role"] != "assistant")
    fail("{}: chat_template is none, so the prompt must be one user message (or a string) and the completion one "
         "assistant message (or a string); this record has {} prompt and {} completion message(s): set "
         "chat_template to render message lists",
         r.where(), p->size(), c->size());
  PRIMUS_CHECK(tok_.eod() >= 0, "{}: chat_template none appends the end-of-document token, but the {} has none",
               r.where(), tok_.type_name());
  const bool all = mode_ == LossMode::kAll && !completion_only;
  TokenizedExample out;
  if (tok_.bos() >= 0) {
    out.tokens.push_back(tok_.bos());
    out.mask.push_back(all ? 1 : 0);
  }
  append_text((*p)[0]["content"].get_ref<const std::string&>(), all, out);
  append_text((*c)[0]["content"].get_ref<const std::string&>(), true, out);
  out.tokens.push_back(tok_.eod());
  out.mask.push_back(1);
  return out;
}

}  // namespace primus::data::sft
