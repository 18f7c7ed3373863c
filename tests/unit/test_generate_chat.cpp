// `primus generate --chat` end to end on a tiny checkpoint with the character-level ChatML
// tokenizer of tests/data/posttrain/chatml_bytes (256 byte tokens + <|endoftext|> 256,
// <|im_start|> 257, <|im_end|> 258; its tokenizer_config.json holds the chat template and
// eos_token <|im_end|>): prompts are rendered with the template (add_generation_prompt) and
// encoded with the special tokens the text spells; the end-of-turn token stops generation and
// is left out of the text; --chat-file reads the post-training shapes; --chat-template
// takes a .jinja file whose end-of-turn token is found by rendering; errors name the fix.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../generate/checkpoint_fixture.h"
#include "data/chat/chat_template.h"
#include "data/tokenizer/tokenizer.h"
#include "model/decoder.h"
#include "test_cli_util.h"

using namespace primus;
namespace fs = std::filesystem;

namespace {

using test::CliRun;

const std::string kTokDir = std::string(PRIMUS_TEST_DATA_DIR) + "/posttrain/chatml_bytes";

CliRun run_generate(const std::string& args) {
  return test::run_shell(std::string("'") + PRIMUS_BINARY + "' generate " + args);
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

class GenerateChat : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("primus_generate_chat_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ModelConfig m = test_generate::tiny_gqa();
    m.vocab_size = 259;
    m.padded_vocab_size = 320;
    m.max_position_embeddings = 128;
    const ModelConfig saved = test_generate::save_test_checkpoint((dir_ / "ckpt").string(), m, 21);
    DecoderOptions opt;
    opt.seed = 21;
    model_ = std::make_unique<DecoderModel>(saved, ctx_, opt);
    tok_ = data::make_tokenizer("HuggingFaceTokenizer", kTokDir + "/tokenizer.json");
    tmpl_ = std::make_unique<data::chat::ChatTemplate>(
        data::chat::ChatTemplate::from_tokenizer_config(kTokDir + "/tokenizer_config.json"));
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string base() const {
    return "--load '" + (dir_ / "ckpt").string() + "' --tokenizer-model '" + kTokDir + "/tokenizer.json' ";
  }

  // Greedy continuation by the training forward, cut after the first of `stops`.
  std::vector<int32_t> greedy(std::vector<int32_t> seq, int n, const std::vector<int32_t>& stops = {}) {
    std::vector<int32_t> out;
    const int64_t V = model_->config().padded_vocab_size;
    for (int i = 0; i < n; ++i) {
      Tensor tokens = Tensor::empty({1, static_cast<int64_t>(seq.size())}, DType::I32);
      std::copy(seq.begin(), seq.end(), tokens.data<int32_t>());
      const Tensor logits = model_->logits(tokens);
      const float* last = logits.data<float>() + (static_cast<int64_t>(seq.size()) - 1) * V;
      const int32_t t = static_cast<int32_t>(std::max_element(last, last + tok_->vocab_size()) - last);
      out.push_back(t);
      seq.push_back(t);
      if (std::find(stops.begin(), stops.end(), t) != stops.end()) break;
    }
    return out;
  }

  fs::path dir_;
  ops::Context ctx_ = ops::Context::cpu();
  std::unique_ptr<DecoderModel> model_;
  std::unique_ptr<data::Tokenizer> tok_;
  std::unique_ptr<data::chat::ChatTemplate> tmpl_;
};

nlohmann::json user(const std::string& text) {
  return nlohmann::json::array({{{"role", "user"}, {"content", text}}});
}

}  // namespace

TEST_F(GenerateChat, PromptIsRenderedWithTheTemplateAndStopsAtEndOfTurn) {
  const fs::path out = dir_ / "out.json";
  const CliRun r = run_generate(base() + "--chat --prompt 'Reverse abc' --max-new-tokens 8 --output-json '" +
                                out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = read_json(out);
  const std::string rendered = "<|im_start|>user\nReverse abc<|im_end|>\n<|im_start|>assistant\n";
  ASSERT_EQ(tmpl_->render(user("Reverse abc"), true), rendered);
  EXPECT_TRUE(j["chat"].get<bool>());
  EXPECT_EQ(j["prompts"][0], rendered);
  EXPECT_EQ(j["messages"][0], user("Reverse abc"));
  // The special tokens the template writes are their ids; no BOS or anything else is added.
  const std::vector<int32_t> ids = j["prompt_ids"][0].get<std::vector<int32_t>>();
  EXPECT_EQ(ids, tok_->encode(rendered, data::SpecialTokens::kNone));
  ASSERT_EQ(ids.size(), 1 + 5 + 11 + 1 + 1 + 1 + 10u);
  EXPECT_EQ(ids.front(), 257);
  EXPECT_EQ(ids[17], 258);
  // <|im_end|> (the config's eos_token and the template's end of turn) stops generation.
  const auto stops = j["stop_ids"].get<std::vector<int32_t>>();
  EXPECT_NE(std::find(stops.begin(), stops.end(), 258), stops.end());
  EXPECT_EQ(j["generated_ids"][0].get<std::vector<int32_t>>(), greedy(ids, 8, stops));

  // The text of a stopped completion leaves the stop token out: stop on the second greedy token.
  const std::vector<int32_t> g = greedy(ids, 2);
  const CliRun r2 = run_generate(base() + "--chat --prompt 'Reverse abc' --max-new-tokens 8 --stop-id " +
                                 std::to_string(g[1]) + " --quiet --output-json '" + out.string() + "'");
  ASSERT_EQ(r2.code, 0) << r2.output;
  const nlohmann::json j2 = read_json(out);
  if (g[0] != g[1]) {
    EXPECT_EQ(j2["generated_ids"][0].get<std::vector<int32_t>>(), g);
    EXPECT_EQ(j2["finish_reasons"][0], "stop");
    EXPECT_EQ(j2["texts"][0], tok_->decode(std::vector<int32_t>{g[0]}, true));
  }
}

TEST_F(GenerateChat, ChatFileReadsConversationsAndPostTrainingShapes) {
  const fs::path file = dir_ / "chat.jsonl";
  std::ofstream(file)
      << R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}, )"
      << R"({"role": "assistant", "content": "hi"}], "id": 7})" << "\n\n"
      << R"({"prompt": "Copy xyz", "answer": "xyz"})" << "\n"
      << R"({"instruction": "Shift ab", "input": "now", "output": "bc"})" << "\n"
      << R"({"prompt": "Last letter of q", "chosen": "q", "rejected": "p"})" << "\n";
  const fs::path out = dir_ / "out.json";
  const CliRun r = run_generate(base() + "--chat-file '" + file.string() + "' --prompt 'Hello' --max-new-tokens 5 " +
                                "--ignore-eos --output-json '" + out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = read_json(out);
  ASSERT_EQ(j["messages"].size(), 5u);
  // --prompt first, then the file's records in order.
  const std::vector<nlohmann::json> expect = {
      user("Hello"),
      nlohmann::json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Say hi"}}}),
      user("Copy xyz"), user("Shift ab\n\nnow"), user("Last letter of q")};
  for (size_t i = 0; i < expect.size(); ++i) {
    EXPECT_EQ(j["messages"][i], expect[i]) << i;
    const std::string text = tmpl_->render(expect[i], true);
    EXPECT_EQ(j["prompts"][i], text) << i;
    // Batched greedy equals each prompt alone.
    EXPECT_EQ(j["generated_ids"][i].get<std::vector<int32_t>>(),
              greedy(tok_->encode(text, data::SpecialTokens::kNone), 5))
        << i;
  }
  EXPECT_NE(r.output.find("=== prompt 4"), std::string::npos) << r.output;

  // --system adds a system turn where a conversation has none.
  const CliRun r2 = run_generate(base() + "--chat-file '" + file.string() + "' --system 'Answer.' --max-new-tokens 1 " +
                                 "--quiet --output-json '" + out.string() + "'");
  ASSERT_EQ(r2.code, 0) << r2.output;
  const nlohmann::json j2 = read_json(out);
  EXPECT_EQ(j2["messages"][0][0]["content"], "Be brief.");
  EXPECT_EQ(j2["messages"][1][0], (nlohmann::json{{"role", "system"}, {"content", "Answer."}}));
}

TEST_F(GenerateChat, JinjaTemplateFileAndItsEndOfTurnToken) {
  // A template that ends turns with <|endoftext|>: found by rendering, it stops generation
  // too (beside the tokenizer's eos <|im_end|>).
  const fs::path jinja = dir_ / "t.jinja";
  std::ofstream(jinja) << "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}";
  const fs::path out = dir_ / "out.json";
  const CliRun r = run_generate(base() + "--chat --chat-template '" + jinja.string() +
                                "' --prompt 'abc' --max-new-tokens 3 --quiet --output-json '" + out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = read_json(out);
  EXPECT_EQ(j["prompts"][0], "<|im_start|>user: abc<|endoftext|><|im_start|>assistant: ");
  EXPECT_EQ(j["chat_template"], jinja.string());
  const auto stops = j["stop_ids"].get<std::vector<int32_t>>();
  EXPECT_NE(std::find(stops.begin(), stops.end(), 256), stops.end());
  EXPECT_NE(std::find(stops.begin(), stops.end(), 258), stops.end());
}

TEST_F(GenerateChat, ErrorsSayWhatIsWrong) {
  const fs::path bad = dir_ / "bad.jsonl";
  std::ofstream(bad) << R"({"prompt": "ok"})" << "\n" << R"({"messages": [{"role": "assistant", "content": "x"}]})"
                     << "\n";
  const fs::path notjson = dir_ / "notjson.jsonl";
  std::ofstream(notjson) << "{\"prompt\": \n";
  const fs::path nomsg = dir_ / "nomsg.jsonl";
  std::ofstream(nomsg) << R"({"messages": [{"role": "user"}]})" << "\n";
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {base() + "--chat --prompt-ids 1,2", "--prompt-ids with --chat"},
      {base() + "--prompt hi --system x", "add --chat"},
      {base() + "--chat-file '" + bad.string() + "'", "bad.jsonl:2: no message before the assistant's turn"},
      {base() + "--chat-file '" + notjson.string() + "'", "notjson.jsonl:1: not valid JSON"},
      {base() + "--chat-file '" + nomsg.string() + "'", "is not {\"role\": string, \"content\": string}"},
      {base() + "--chat-file '" + (dir_ / "missing.jsonl").string() + "'", "cannot be opened"},
      {base() + "--chat --chat-template none --prompt hi", "--chat needs a template"},
      {base() + "--chat --chat-template '" + (dir_ / "nope.jinja").string() + "' --prompt hi", "does not exist"},
  };
  for (const Case& c : cases) {
    const CliRun r = run_generate(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
}
