// GRPO's parts on their own: advantages, the per-token loss and its gradient, the loss
// normalisations, the reward functions (with an external reward process), the prompt reader,
// where stop strings cut a completion, and the config keys. The objective through the whole model is checked against PyTorch in
// tests/reference (grpo_* cases); the learning itself in tests/rl/grpo_task.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <span>

#include "../test_util.h"
#include "config/config.h"
#include "core/error.h"
#include "data/sft/sft_tokenize.h"
#include "data/sft/stop_tokens.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "rl/grpo_loss.h"
#include "rl/prompt_set.h"
#include "rl/rewards.h"
#include "rl/stop_strings.h"
#include "train/train_options.h"

using namespace primus;
using namespace primus::rl;
namespace fs = std::filesystem;

namespace {

using primus::test::error_of;

const fs::path kChatml = fs::path(PRIMUS_SOURCE_DIR) / "tests/data/posttrain/chatml_bytes";

std::unique_ptr<data::Tokenizer> chatml() {
  return data::make_tokenizer("HuggingFaceTokenizer", (kChatml / "tokenizer.json").string(), 259);
}

}  // namespace

TEST(Grpo, AdvantagesPerGroupBatchAndNone) {
  const std::vector<double> r = {1, 0, 0, 0, 2, 2, 2, 2};
  const std::vector<double> g = grpo_advantages(r, 4, RewardScaling::Group);
  // group 1: mean 0.25, unbiased std 0.5; group 2: no variance -> 0
  EXPECT_NEAR(g[0], 0.75 / (0.5 + 1e-6), 1e-12);
  EXPECT_NEAR(g[1], -0.25 / (0.5 + 1e-6), 1e-12);
  for (int i = 4; i < 8; ++i) EXPECT_EQ(g[i], 0.0);
  const std::vector<double> n = grpo_advantages(r, 4, RewardScaling::None);
  EXPECT_DOUBLE_EQ(n[0], 0.75);
  EXPECT_DOUBLE_EQ(n[4], 0.0);
  const std::vector<double> b = grpo_advantages(r, 4, RewardScaling::Batch);
  double mean = 0, ss = 0;
  for (double v : r) mean += v / 8;
  for (double v : r) ss += (v - mean) * (v - mean);
  EXPECT_NEAR(b[0], 0.75 / (std::sqrt(ss / 7) + 1e-6), 1e-12);
  EXPECT_NE(error_of([&] { grpo_advantages(r, 3, RewardScaling::Group); }), "");
}

TEST(Grpo, TokenLossClipsAndGradientMatchesFiniteDifferences) {
  GrpoLossOptions o;
  o.epsilon_low = 0.2;
  o.epsilon_high = 0.28;
  o.beta = 0.05;
  // (logp - old, advantage): inside the range, above it with A > 0 (clipped high), below it
  // with A < 0 (clipped low), and the unclipped sides of both.
  const double cases[][2] = {{0.05, 1.0}, {0.4, 1.0}, {-0.4, -1.0}, {-0.4, 1.0}, {0.4, -1.0}, {0.0, 0.0}};
  for (const auto& c : cases) {
    const double logp = -1.3, old = logp - c[0], ref = logp + 0.2, A = c[1];
    const GrpoTokenLoss l = grpo_token_loss(logp, old, ref, A, o);
    const double rho = std::exp(c[0]);
    EXPECT_EQ(l.clipped_high, A > 0 && rho > 1.28);
    EXPECT_EQ(l.clipped_low, A < 0 && rho < 0.8);
    const double h = 1e-6;
    const double fd = (grpo_token_loss(logp + h, old, ref, A, o).loss - grpo_token_loss(logp - h, old, ref, A, o).loss) /
                      (2 * h);
    EXPECT_NEAR(l.dlogp, fd, 1e-6) << "shift " << c[0] << " advantage " << A;
    EXPECT_NEAR(l.kl, std::exp(0.2) - 0.2 - 1, 1e-12);
  }
  o.beta = 0;
  EXPECT_EQ(grpo_token_loss(-1, -1, 5, 1, o).kl, 0.0);  // no reference model: no KL
  EXPECT_DOUBLE_EQ(grpo_token_loss(-1, -1, 5, 2.0, o).loss, -2.0);  // ratio 1: -A
}

TEST(Grpo, NormalisationByLossType) {
  GrpoLossOptions o;
  o.max_completion_length = 10;
  o.loss_type = GrpoLossType::Grpo;
  EXPECT_DOUBLE_EQ(grpo_token_norm(o, 4, 8, 50), 1.0 / 32);
  o.loss_type = GrpoLossType::Dapo;
  EXPECT_DOUBLE_EQ(grpo_token_norm(o, 4, 8, 50), 1.0 / 50);
  o.loss_type = GrpoLossType::DrGrpo;
  EXPECT_DOUBLE_EQ(grpo_token_norm(o, 4, 8, 50), 1.0 / 80);
  EXPECT_EQ(parse_grpo_loss_type("dr_grpo"), GrpoLossType::DrGrpo);
  EXPECT_NE(error_of([] { parse_grpo_loss_type("ppo"); }).find("grpo_loss_type"), std::string::npos);
  EXPECT_NE(error_of([] { parse_reward_scaling("groups"); }).find("did you mean 'group'"), std::string::npos);
}

TEST(Grpo, RewardFunctions) {
  RlPrompt p;
  p.record = {{"prompt", "x"}, {"answer", "ibca"}, {"n", 42}};
  p.where = "f.jsonl:3";
  RewardOptions o;
  o.funcs = {"accuracy", "format", "overlong"};
  o.weights = {1.0, 0.5, 2.0};
  o.format_regex = "^[a-z]+$";
  o.overlong_buffer_length = 4;
  o.max_completion_length = 10;
  RewardFunctions f(o);
  const std::vector<Completion> c = {{&p, " ibca\n", 5, false}, {&p, "IBCA", 8, false}, {&p, "ibc", 10, true}};
  const std::vector<double> s = f.score(c);
  ASSERT_EQ(s.size(), 9u);
  EXPECT_EQ(s[0], 1.0);   // trimmed exact match
  EXPECT_EQ(s[1], 0.0);   // " ibca\n" is not ^[a-z]+$
  EXPECT_EQ(s[2], 0.0);   // 5 <= 10 - 4
  EXPECT_EQ(s[3], 0.0);   // case matters
  EXPECT_EQ(s[5], -0.5);  // (6 - 8) / 4
  EXPECT_EQ(s[7], 1.0);
  EXPECT_EQ(s[8], -1.0);
  const std::vector<double> r = f.combine(s);
  EXPECT_DOUBLE_EQ(r[0], 1.0);
  EXPECT_DOUBLE_EQ(r[1], -1.0);
  EXPECT_DOUBLE_EQ(r[2], 0.5 - 2.0);

  RewardOptions rx;
  rx.answer_regex = "answer: *(-?[0-9]+)";
  rx.answer_key = "n";
  RewardFunctions fx(rx);
  EXPECT_EQ(fx.extract_answer("so the answer: 42."), "42");
  EXPECT_EQ(fx.score({{&p, "the answer: 42", 3, false}})[0], 1.0);  // a number column compares as its JSON text
  EXPECT_EQ(fx.score({{&p, "42", 3, false}})[0], 0.0);              // the regex must match
  RewardOptions missing;
  missing.answer_key = "solution";
  RewardFunctions fm(missing);
  EXPECT_NE(error_of([&] { fm.score({{&p, "a", 1, false}}); }).find("f.jsonl:3"), std::string::npos);

  auto refused = [](RewardOptions bad, const std::string& what) {
    EXPECT_NE(error_of([&] { RewardFunctions x(bad); }).find(what), std::string::npos) << what;
  };
  RewardOptions b1;
  b1.funcs = {"acuracy"};
  refused(b1, "did you mean 'accuracy'");
  RewardOptions b2;
  b2.weights = {1, 2};
  refused(b2, "reward_weights has 2 values for 1");
  RewardOptions b3;
  b3.funcs = {"format"};
  refused(b3, "reward_format_regex is not set");
  b3.format_regex = "([a-";
  refused(b3, "not a valid regular expression");
  RewardOptions b4;
  b4.funcs = {"overlong"};
  refused(b4, "overlong_buffer_length");
  RewardOptions b5;
  b5.funcs = {"command"};
  refused(b5, "reward_command is not set");
}

TEST(Grpo, RewardCommandSpeaksJsonLines) {
  RlPrompt p;
  p.record = {{"prompt", "q"}, {"answer", "7"}};
  p.text = "q";
  RewardOptions o;
  o.funcs = {"command"};
  // Reward = completion length in characters / 10, answered alternately as a number and an object.
  o.command = "/usr/bin/python3 -u -c \"import json,sys\n"
              "for i, l in enumerate(sys.stdin):\n"
              "  r = json.loads(l); v = len(r['completion']) / 10 + (r['record']['answer'] == '7')\n"
              "  print(json.dumps(v if i % 2 == 0 else {'reward': v}))\"";
  RewardFunctions f(o);
  const std::vector<double> s = f.score({{&p, "abc", 3, false}, {&p, "abcdefg", 7, true}, {&p, "", 1, false}});
  EXPECT_DOUBLE_EQ(s[0], 1.3);
  EXPECT_DOUBLE_EQ(s[1], 1.7);
  EXPECT_DOUBLE_EQ(s[2], 1.0);
  RewardOptions bad = o;
  bad.command = "echo not-json";
  RewardFunctions fb(bad);
  EXPECT_NE(error_of([&] { fb.score({{&p, "a", 1, false}}); }).find("not JSON"), std::string::npos);
  RewardOptions gone = o;
  gone.command = "true";  // exits without answering
  RewardFunctions fg(gone);
  EXPECT_NE(error_of([&] { fg.score({{&p, "a", 1, false}}); }).find("reward_command 'true'"), std::string::npos);
}

TEST(Grpo, PromptsFromTextAndMessages) {
  auto tok = chatml();
  const data::sft::ChatTemplateSource tmpl =
      data::sft::load_chat_template("", (kChatml / "tokenizer.json").string(), *tok);
  const RlPrompt m = parse_prompt(R"({"prompt": [{"role": "user", "content": "Shift ab"}], "answer": "bc"})", "p.jsonl",
                                  1, *tok, tmpl, 0);
  EXPECT_EQ(m.text, "<|im_start|>user\nShift ab<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(m.ids.front(), tok->token_to_id("<|im_start|>"));
  EXPECT_EQ(m.record["answer"], "bc");
  const RlPrompt s = parse_prompt(R"({"prompt": "Shift ab"})", "p.jsonl", 2, *tok, tmpl, 0);
  EXPECT_EQ(s.text, "Shift ab");
  EXPECT_EQ(s.ids.size(), 8u);
  const RlPrompt msgs = parse_prompt(R"({"messages": [{"role": "user", "content": "hi"}]})", "p.jsonl", 3, *tok, tmpl, 0);
  EXPECT_EQ(msgs.text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");

  auto refused = [&](const std::string& line, const std::string& what, int64_t max_len = 0) {
    const std::string e = error_of([&] { parse_prompt(line, "p.jsonl", 9, *tok, tmpl, max_len); });
    EXPECT_NE(e.find("p.jsonl:9"), std::string::npos) << e;
    EXPECT_NE(e.find(what), std::string::npos) << e;
  };
  refused(R"({"answer": 1})", "neither");
  refused(R"({"prompt": "a", "messages": []})", "both");
  refused(R"({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})",
          "ends with an assistant turn");
  refused(R"({"prompt": [{"role": "user"}]})", "string \"role\" and \"content\"");
  refused(R"({"prompt": "a long prompt"})", "max_prompt_length = 4", 4);
  refused("not json", "not valid JSON");
  const data::sft::ChatTemplateSource none = data::sft::load_chat_template("none", "", *tok);
  EXPECT_NE(error_of([&] { parse_prompt(R"({"messages": [{"role": "user", "content": "a"}]})", "p", 1, *tok, none, 0); })
                .find("chat_template is none"),
            std::string::npos);
  // The ChatML template's end of turn and eos stop the completions.
  const std::vector<int32_t> stops = data::sft::stop_token_ids(*tok, tmpl.tmpl.get());
  EXPECT_NE(std::find(stops.begin(), stops.end(), tok->token_to_id("<|im_end|>")), stops.end());
  EXPECT_NE(std::find(stops.begin(), stops.end(), tok->eod()), stops.end());
}

TEST(Grpo, KeysWithoutGrpoAreRefusedAndLayoutChecked) {
  const std::string exp = (fs::path(PRIMUS_SOURCE_DIR) / "tests/posttrain/letters-sft.yaml").string();
  setenv("PRIMUS_TEST_WORKSPACE", "/tmp/primus_test_grpo_ws", 1);
  setenv("PRIMUS_TEST_DATA", "/tmp", 1);
  setenv("PRIMUS_TEST_TOKENIZER", kChatml.c_str(), 1);
  auto options = [&](std::vector<std::string> sets) {
    config::Config cfg = config::load_experiment(exp, sets, 0);
    return train::train_options(cfg, false);
  };
  EXPECT_NE(error_of([&] { options({"num_generations=4"}); }).find("num_generations"), std::string::npos);
  EXPECT_NE(error_of([&] { options({"reward_funcs=[format]"}); }).find("grpo is false"), std::string::npos);
  const train::TrainOptions o = options({"grpo=true", "num_generations=4", "grpo_loss_type=dr_grpo", "grpo_beta=0.04",
                                         "temperature=0.7", "reward_funcs=[accuracy,format]", "reward_weights=[1,0.5]",
                                         "reward_format_regex=^[a-z]+$"});
  EXPECT_TRUE(o.grpo);
  EXPECT_EQ(o.grpo_options.num_generations, 4);
  EXPECT_EQ(o.grpo_options.loss.loss_type, GrpoLossType::DrGrpo);
  EXPECT_DOUBLE_EQ(o.grpo_options.loss.epsilon_high, 0.2);  // null: grpo_epsilon
  EXPECT_FLOAT_EQ(o.grpo_options.sampling.temperature, 0.7f);
  EXPECT_EQ(o.grpo_options.rewards.weights, (std::vector<double>{1, 0.5}));
  EXPECT_NE(error_of([&] { options({"grpo=true", "num_iterations=2", "save_interval=5"}); }).find("num_iterations"),
            std::string::npos);
  EXPECT_NE(error_of([&] { options({"grpo=true", "dpo=true"}); }).find("one or the other"), std::string::npos);
}

// ---- stop strings (rl/stop_strings.h) -----------------------------------------------------------

namespace {

// A tokenizer whose tokens are the given byte strings: decode joins them, replaces broken
// UTF-8 by U+FFFD (as HuggingFace's decoders) and, as a Metaspace decoder, drops the first
// token's leading space when `drop_leading_space`. It counts the ids it decodes.
class PieceTokenizer : public data::Tokenizer {
 public:
  PieceTokenizer(std::vector<std::string> pieces, bool drop_leading_space = false)
      : pieces_(std::move(pieces)), drop_leading_space_(drop_leading_space) {}
  void encode_append(std::string_view, std::vector<int32_t>&, data::SpecialTokens) override {}
  std::string decode(std::span<const int32_t> ids, bool = false) const override {
    decoded_ids += static_cast<int64_t>(ids.size());
    std::string s;
    for (int32_t id : ids) s += pieces_.at(static_cast<size_t>(id));
    if (drop_leading_space_ && !s.empty() && s[0] == ' ') s.erase(0, 1);
    return data::utf8_sanitize(s);
  }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int32_t eod() const override { return -1; }
  int32_t token_to_id(std::string_view) const override { return -1; }
  std::vector<int32_t> special_ids() const override { return {}; }
  std::string type_name() const override { return "PieceTokenizer"; }
  std::unique_ptr<data::Tokenizer> clone() const override { return std::make_unique<PieceTokenizer>(*this); }

  mutable int64_t decoded_ids = 0;

 private:
  std::vector<std::string> pieces_;
  bool drop_leading_space_ = false;
};

// The definition, spelled out: the fewest leading tokens whose decoded text holds a stop
// string, and the whole text up to the stop string that starts first.
StopCut reference_cut(const data::Tokenizer& tok, const std::vector<int32_t>& ids, const std::vector<std::string>& stops) {
  const std::string full = tok.decode(ids);
  size_t first = std::string::npos;
  for (const std::string& s : stops) first = std::min(first, full.find(s));
  if (first == std::string::npos) return {};
  for (size_t k = 1; k <= ids.size(); ++k) {
    const std::string t = tok.decode(std::span<const int32_t>(ids.data(), k));
    for (const std::string& s : stops)
      if (t.find(s) != std::string::npos) return {k, full.substr(0, first)};
  }
  return {};
}

enum Piece : int32_t { kThe, kAnswer, kIs, kFour, kDot, kNewline, kSpaceE, kNd, kCaf, kE1, kE2, kX, kHi, kPieces };
const std::vector<std::string> kPieceTexts = {"The", " answer", " is", " 4", ".",        "\n", " E",
                                              "ND",  "caf",     "\xC3", "\xA9", "x", " Hi"};

}  // namespace

TEST(GrpoStopStrings, CutsWhereTheStopStringIsCompleted) {
  ASSERT_EQ(kPieceTexts.size(), static_cast<size_t>(kPieces));
  const PieceTokenizer tok(kPieceTexts);
  const std::vector<int32_t> answer = {kThe, kAnswer, kIs, kFour, kDot, kNewline};  // "The answer is 4.\n"
  auto expect_cut = [&](const std::vector<int32_t>& ids, const std::vector<std::string>& stops, size_t tokens,
                        const std::string& text) {
    const StopCut c = cut_at_stop_string(tok, ids, stops);
    const std::string what = tok.decode(ids) + " | stops " + std::to_string(stops.size());
    EXPECT_EQ(c.tokens, tokens) << what;
    EXPECT_EQ(c.text, text) << what;
    const StopCut r = reference_cut(tok, ids, stops);
    EXPECT_EQ(c.tokens, r.tokens) << what;
    EXPECT_EQ(c.text, r.text) << what;
  };
  // A stop string spanning two tokens: " E" + "ND" completes "END" with the 4th token.
  expect_cut({kThe, kAnswer, kSpaceE, kNd, kDot}, {"END"}, 4, "The answer ");
  // ... and one spanning three ("answer is 4" ends inside " 4").
  expect_cut(answer, {"answer is 4"}, 4, "The ");
  // A stop string at the very start: the first token is kept, the text is empty.
  expect_cut(answer, {"The"}, 1, "");
  expect_cut(answer, {"T"}, 1, "");
  // Several stop strings: the text ends where the earliest one starts, the tokens where the
  // first one is completed ("is" is complete after " is", before " answer is 4.").
  expect_cut(answer, {".", " is"}, 3, "The answer");
  expect_cut(answer, {" is", "."}, 3, "The answer");
  expect_cut(answer, {"answer is 4.", "is"}, 3, "The ");
  expect_cut(answer, {"4", "\n"}, 4, "The answer is ");
  // No stop string in the completion, or none asked for: nothing is cut.
  expect_cut(answer, {"xyz", "answer is 5"}, std::string::npos, "");
  expect_cut(answer, {}, std::string::npos, "");
  expect_cut({}, {"The"}, std::string::npos, "");
  // A character split over two byte tokens: "caf" + C3 shows U+FFFD, not yet the stop "é".
  expect_cut({kCaf, kE1, kE2, kDot}, {"\xC3\xA9"}, 3, "caf");
  expect_cut({kCaf, kE1, kE2, kDot}, {"f\xC3\xA9."}, 4, "ca");
  // A completion longer than the decoding window, the stop string near its end.
  std::vector<int32_t> long_ids(300, kX);
  long_ids.insert(long_ids.end(), {kSpaceE, kNd, kX, kX});
  expect_cut(long_ids, {"END"}, 302, std::string(300, 'x') + " ");
  expect_cut(long_ids, {"END", "xx E"}, 301, std::string(298, 'x'));
  // A Metaspace-style decoder drops the first token's leading space: " Hi" starts the text.
  const PieceTokenizer meta(kPieceTexts, /*drop_leading_space=*/true);
  const StopCut c = cut_at_stop_string(meta, {kHi, kAnswer, kDot}, {"Hi answer."});
  EXPECT_EQ(c.tokens, 3u);
  EXPECT_EQ(c.text, "");
  EXPECT_EQ(cut_at_stop_string(meta, {kHi, kAnswer}, {" Hi"}).tokens, std::string::npos);
}

// Random completions and stop strings taken from their text (or not in it): the cut equals the
// definition's, for the piece tokenizer with and without the leading-space rule and for a
// byte-level BPE (UTF-8 characters split over tokens). And the cost is linear: a 4000-token
// completion decodes a bounded number of ids per token, where decoding every prefix would be
// 8 million.
TEST(GrpoStopStrings, MatchesTheDefinitionAndStaysLinear) {
  std::mt19937_64 rng(20261207);
  const std::unique_ptr<data::Tokenizer> bytes = chatml();
  const std::vector<int32_t> utf8 = bytes->encode("naïve café — 23 + 58 = 81 ✓ 東京");
  const PieceTokenizer plain(kPieceTexts), meta(kPieceTexts, true);
  for (int trial = 0; trial < 300; ++trial) {
    const data::Tokenizer& tok = trial % 3 == 0 ? plain : trial % 3 == 1 ? static_cast<const data::Tokenizer&>(meta) : *bytes;
    std::vector<int32_t> ids;
    const size_t n = 1 + rng() % 40;
    for (size_t i = 0; i < n; ++i)
      ids.push_back(trial % 3 == 2 ? utf8[rng() % utf8.size()] : static_cast<int32_t>(rng() % kPieces));
    const std::string text = tok.decode(ids);
    std::vector<std::string> stops;
    for (size_t s = 0, count = 1 + rng() % 3; s < count; ++s) {
      if (rng() % 4 == 0 || text.empty()) {
        stops.push_back("no such text");
      } else {
        const size_t at = rng() % text.size(), len = 1 + rng() % 6;
        stops.push_back(text.substr(at, len));
      }
    }
    const StopCut got = cut_at_stop_string(tok, ids, stops), want = reference_cut(tok, ids, stops);
    ASSERT_EQ(got.tokens, want.tokens) << "trial " << trial << ": " << text;
    ASSERT_EQ(got.text, want.text) << "trial " << trial << ": " << text;
  }

  std::vector<int32_t> ids(4000, kX);
  ids.insert(ids.end(), {kSpaceE, kNd});
  plain.decoded_ids = 0;
  EXPECT_EQ(cut_at_stop_string(plain, ids, {"END"}).tokens, 4002u);
  EXPECT_LT(plain.decoded_ids, 40 * 4002) << "decoding grows faster than the completion";
}
