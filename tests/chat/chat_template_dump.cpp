// Renders chat templates for tests/chat/check_chat_templates.py, which renders the same with
// Python's jinja2 configured as transformers configures it and compares byte for byte.
//
//   chat_template_dump --conversations FILE [--bos TOKEN] [--eos TOKEN]
//                      (--template NAME=PATH.jinja | --config NAME=tokenizer_config.json)...
//       one JSON line per (template, conversation, add_generation_prompt false/true):
//       {"template", "conversation", "add_generation_prompt", "output" | "error"}
//   chat_template_dump --snippets FILE
//       FILE: {"vars": {...}, "snippets": [TEMPLATE, ...]}; one JSON line per snippet:
//       {"index", "output" | "error"} (each rendered with messages = vars.messages and the
//       other vars as extra variables)
//
// Conversations FILE: [{"name": ..., "messages": [...], "tools": [...]?, "extra": {...}?}].
// JSON objects keep their key order (render_ordered), as Python's json.load does.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/chat/chat_template.h"

using nlohmann::ordered_json;
using primus::data::chat::ChatTemplate;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw primus::Error("chat_template_dump: cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void print(const ordered_json& j) { std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"; }

int snippets(const std::string& path) {
  const ordered_json spec = ordered_json::parse(read_file(path));
  ordered_json vars = spec.at("vars");
  const ordered_json messages = vars.at("messages");
  vars.erase("messages");
  int index = 0;
  for (const auto& s : spec.at("snippets")) {
    ordered_json line;
    line["index"] = index++;
    try {
      ChatTemplate t(s.get<std::string>(), "snippet");
      t.set_special_tokens("<s>", "</s>");
      line["output"] = t.render_ordered(messages, false, vars);
    } catch (const primus::Error& e) {
      line["error"] = e.what();
    }
    print(line);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string conversations_path, bos = "<s>", eos = "</s>";
    std::vector<std::pair<std::string, std::string>> templates, configs;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw primus::Error("chat_template_dump: " + a + " needs a value");
        return argv[++i];
      };
      auto named = [&](std::vector<std::pair<std::string, std::string>>& into) {
        const std::string v = value();
        const size_t eq = v.find('=');
        if (eq == std::string::npos) throw primus::Error("chat_template_dump: " + a + " takes NAME=PATH");
        into.emplace_back(v.substr(0, eq), v.substr(eq + 1));
      };
      if (a == "--snippets") return snippets(value());
      if (a == "--conversations") conversations_path = value();
      else if (a == "--bos") bos = value();
      else if (a == "--eos") eos = value();
      else if (a == "--template") named(templates);
      else if (a == "--config") named(configs);
      else throw primus::Error("chat_template_dump: unknown argument " + a);
    }
    if (conversations_path.empty()) throw primus::Error("chat_template_dump: --conversations FILE is required");
    const ordered_json conversations = ordered_json::parse(read_file(conversations_path));
    std::vector<std::pair<std::string, ChatTemplate>> loaded;
    for (const auto& [name, path] : templates) {
      ChatTemplate t(read_file(path), path);
      t.set_special_tokens(bos, eos);
      loaded.emplace_back(name, std::move(t));
    }
    for (const auto& [name, path] : configs) loaded.emplace_back(name, ChatTemplate::from_tokenizer_config(path));
    for (const auto& [name, t] : loaded) {
      for (const auto& conv : conversations) {
        ordered_json extra = conv.value("extra", ordered_json::object());
        if (conv.contains("tools")) extra["tools"] = conv["tools"];
        for (bool agp : {false, true}) {
          ordered_json line;
          line["template"] = name;
          line["conversation"] = conv.at("name");
          line["add_generation_prompt"] = agp;
          try {
            line["output"] = t.render_ordered(conv.at("messages"), agp, extra);
          } catch (const primus::Error& e) {
            line["error"] = e.what();
          }
          print(line);
        }
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
