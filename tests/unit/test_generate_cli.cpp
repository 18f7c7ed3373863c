// `primus generate` end to end on tiny checkpoints saved like training saves them:
// greedy ids equal the in-process argmax of DecoderModel::logits(); --dump-logits equals
// DecoderModel::logits(); a text prompt through a tokenizer.json; sampling determinism and
// top-k 1 == greedy through the CLI; errors for bad checkpoints, prompts and options.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "../generate/checkpoint_fixture.h"
#include "data/tokenizer/tokenizer.h"
#include "model/decoder.h"
#include "test_cli_util.h"

using namespace primus;
namespace fs = std::filesystem;

namespace {

using test::CliRun;

CliRun run_generate(const std::string& args) {
  return test::run_shell(std::string("'") + PRIMUS_BINARY + "' generate " + args);
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// A .npy fp32 array read from the format (magic, version 1.0, header dict, raw data).
std::vector<float> read_npy_f32(const fs::path& p, std::string& header) {
  std::ifstream in(p, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes.compare(0, 6, "\x93NUMPY"), 0);
  const size_t len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  header = bytes.substr(10, len);
  EXPECT_EQ((10 + len) % 64, 0u);
  std::vector<float> v((bytes.size() - 10 - len) / 4);
  std::memcpy(v.data(), bytes.data() + 10 + len, v.size() * 4);
  return v;
}

class GenerateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("primus_generate_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Saves `m` and returns a model with the same weights for in-process references.
  std::unique_ptr<DecoderModel> save(const ModelConfig& m, uint64_t seed, const std::string& name) {
    const ModelConfig saved = test_generate::save_test_checkpoint((dir_ / name).string(), m, seed);
    DecoderOptions opt;
    opt.seed = seed;
    return std::make_unique<DecoderModel>(saved, ctx_, opt);
  }

  // Greedy continuation by the training forward: argmax over ids [0, vocab) of the last row.
  std::vector<int32_t> greedy_reference(DecoderModel& model, std::vector<int32_t> seq, int n, int64_t vocab) {
    std::vector<int32_t> out;
    const int64_t V = model.config().padded_vocab_size;
    for (int i = 0; i < n; ++i) {
      Tensor tokens = Tensor::empty({1, static_cast<int64_t>(seq.size())}, DType::I32);
      std::copy(seq.begin(), seq.end(), tokens.data<int32_t>());
      const Tensor logits = model.logits(tokens);
      const float* last = logits.data<float>() + (static_cast<int64_t>(seq.size()) - 1) * V;
      const int32_t t = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
      out.push_back(t);
      seq.push_back(t);
    }
    return out;
  }

  fs::path dir_;
  ops::Context ctx_ = ops::Context::cpu();
};

}  // namespace

TEST_F(GenerateCli, GreedyIdsMatchTheTrainingForwardAndJsonIsComplete) {
  auto model = save(test_generate::tiny_gqa(), 31, "ckpt");
  const fs::path out = dir_ / "out.json";
  const CliRun r = run_generate("--load '" + (dir_ / "ckpt").string() + "' --prompt-ids 3,14,15,9,2 --prompt-ids 7 " +
                                "--max-new-tokens 9 --output-json '" + out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
  const nlohmann::json j = read_json(out);
  EXPECT_EQ(j["iteration"], 7);
  EXPECT_EQ(j["prompt_ids"][0], std::vector<int32_t>({3, 14, 15, 9, 2}));
  EXPECT_EQ(j["generated_ids"][0].get<std::vector<int32_t>>(), greedy_reference(*model, {3, 14, 15, 9, 2}, 9, 50));
  EXPECT_EQ(j["generated_ids"][1].get<std::vector<int32_t>>(), greedy_reference(*model, {7}, 9, 50));
  EXPECT_EQ(j["finish_reasons"][0], "length");
  EXPECT_EQ(j["generated_tokens"], 18);
  EXPECT_EQ(j["prompt_tokens"], 6);
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0);
  EXPECT_TRUE(j["sampling"]["greedy"].get<bool>());
  EXPECT_TRUE(j["prompts"][0].is_null());
}

TEST_F(GenerateCli, DumpLogitsEqualsTheTrainingForward) {
  auto model = save(test_generate::tiny_rope_scaling_tied(), 5, "ckpt");
  const fs::path npy = dir_ / "logits.npy";
  const std::vector<int32_t> seq = {1, 30, 2, 2, 17, 36, 0, 11, 5, 5, 20, 21, 22, 23, 24, 25, 26, 27, 28};
  std::string ids;
  for (int32_t t : seq) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  const CliRun r = run_generate("--load '" + (dir_ / "ckpt").string() + "' --prompt-ids " + ids +
                                " --max-new-tokens 1 --quiet --dump-logits '" + npy.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  std::string header;
  const std::vector<float> got = read_npy_f32(npy, header);
  const int64_t T = static_cast<int64_t>(seq.size()), V = model->config().padded_vocab_size;
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'shape': (1, " + std::to_string(T) + ", " + std::to_string(V) + ")"), std::string::npos)
      << header;
  Tensor tokens = Tensor::empty({1, T}, DType::I32);
  std::copy(seq.begin(), seq.end(), tokens.data<int32_t>());
  const std::vector<float> ref = model->logits(tokens).to_float_vector();
  ASSERT_EQ(got.size(), ref.size());
  EXPECT_LT(test::max_rel_error(got, ref), 1e-5);
}

TEST_F(GenerateCli, TextPromptThroughATokenizer) {
  ModelConfig m = test_generate::tiny_gqa();
  m.vocab_size = 379;  // tests/data/tokenizer_spm_style_metaspace.json
  m.padded_vocab_size = 384;
  auto model = save(m, 12, "ckpt");
  const std::string tok_path = std::string(PRIMUS_TEST_DATA_DIR) + "/tokenizer_spm_style_metaspace.json";
  auto tok = data::make_tokenizer("HuggingFaceTokenizer", tok_path);
  const std::string prompt = "the quick brown fox";
  const std::vector<int32_t> ids = tok->encode(prompt, data::SpecialTokens::kAdd);
  ASSERT_GE(ids.size(), 2u);
  const fs::path out = dir_ / "out.json";
  const CliRun r = run_generate("--load '" + (dir_ / "ckpt").string() + "' --tokenizer-model '" + tok_path +
                                "' --prompt '" + prompt + "' --max-new-tokens 12 --ignore-eos --output-json '" +
                                out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = read_json(out);
  EXPECT_EQ(j["prompts"][0], prompt);
  EXPECT_EQ(j["prompt_ids"][0].get<std::vector<int32_t>>(), ids);
  const auto gen = j["generated_ids"][0].get<std::vector<int32_t>>();
  EXPECT_EQ(gen, greedy_reference(*model, ids, 12, tok->vocab_size()));
  // The printed text is the prompt followed by the completion (streamed).
  const std::string text = j["texts"][0];
  EXPECT_NE(r.output.find(prompt + text), std::string::npos) << r.output << "\ntext: " << text;
  std::vector<int32_t> all = ids;
  all.insert(all.end(), gen.begin(), gen.end());
  EXPECT_EQ(tok->decode(ids, true) + text, tok->decode(all, true));

  // Without --ignore-eos the tokenizer's </s> stops generation: force it with --stop-id on
  // the first greedy token instead (the random model rarely draws </s>).
  const CliRun r2 = run_generate("--load '" + (dir_ / "ckpt").string() + "' --tokenizer-model '" + tok_path +
                                 "' --prompt '" + prompt + "' --max-new-tokens 12 --stop-id " +
                                 std::to_string(gen[0]) + " --output-json '" + out.string() + "'");
  ASSERT_EQ(r2.code, 0) << r2.output;
  const nlohmann::json j2 = read_json(out);
  EXPECT_EQ(j2["generated_ids"][0].get<std::vector<int32_t>>(), std::vector<int32_t>{gen[0]});
  EXPECT_EQ(j2["finish_reasons"][0], "stop");
  const auto stops = j2["stop_ids"].get<std::vector<int32_t>>();
  EXPECT_NE(std::find(stops.begin(), stops.end(), tok->eod()), stops.end()) << "the tokenizer's </s> is a stop id";

  // --prompt-file: one prompt per line (blank lines skipped), batched after --prompt; each
  // completion equals the one of the prompt run alone (greedy).
  const fs::path pf = dir_ / "prompts.txt";
  std::ofstream(pf) << "a lazy dog\n\nover the hill\n";
  const CliRun r3 = run_generate("--load '" + (dir_ / "ckpt").string() + "' --tokenizer-model '" + tok_path +
                                 "' --prompt '" + prompt + "' --prompt-file '" + pf.string() +
                                 "' --max-new-tokens 12 --ignore-eos --output-json '" + out.string() + "'");
  ASSERT_EQ(r3.code, 0) << r3.output;
  const nlohmann::json j3 = read_json(out);
  ASSERT_EQ(j3["prompts"].size(), 3u);
  EXPECT_EQ(j3["prompts"][1], "a lazy dog");
  EXPECT_EQ(j3["prompts"][2], "over the hill");
  EXPECT_EQ(j3["generated_ids"][0].get<std::vector<int32_t>>(), gen);
  EXPECT_EQ(j3["generated_ids"][2].get<std::vector<int32_t>>(),
            greedy_reference(*model, tok->encode("over the hill", data::SpecialTokens::kAdd), 12, tok->vocab_size()));
  EXPECT_NE(r3.output.find("=== prompt 2"), std::string::npos) << r3.output;
  EXPECT_NE(r3.output.find("over the hill" + j3["texts"][2].get<std::string>()), std::string::npos) << r3.output;
}

TEST_F(GenerateCli, SamplingIsDeterministicAndTopKOneIsGreedy) {
  save(test_generate::tiny_gqa(), 31, "ckpt");
  const std::string base = "--load '" + (dir_ / "ckpt").string() + "' --prompt-ids 4,5,6 --prompt-ids 9,9 " +
                           "--max-new-tokens 16 --quiet --output-json ";
  auto ids_of = [&](const std::string& extra, const std::string& name) {
    const CliRun r = run_generate(base + "'" + (dir_ / name).string() + "' " + extra);
    EXPECT_EQ(r.code, 0) << r.output;
    return read_json(dir_ / name)["generated_ids"];
  };
  const auto a = ids_of("--temperature 1.5 --top-p 0.95 --seed 3", "a.json");
  const auto b = ids_of("--temperature 1.5 --top-p 0.95 --seed 3", "b.json");
  const auto c = ids_of("--temperature 1.5 --top-p 0.95 --seed 4", "c.json");
  const auto greedy = ids_of("", "g.json");
  const auto topk1 = ids_of("--temperature 0.8 --top-k 1 --seed 9", "k.json");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, greedy);
  EXPECT_EQ(topk1, greedy);
}

// --kv-cache-memory / --max-batch: fewer slots than prompts (continuous batching), the same ids
// as one batch, and the stats line and JSON say what was chosen.
TEST_F(GenerateCli, KvCacheMemoryBudgetGivesTheSameIds) {
  save(test_generate::tiny_gqa(), 31, "ckpt");
  const std::string base = "--load '" + (dir_ / "ckpt").string() +
                           "' --prompt-ids 4,5,6 --prompt-ids 9 --prompt-ids 1,2,3,4,5,6,7,8,9,10,11 --prompt-ids 3,3 " +
                           "--max-new-tokens 8 --temperature 0.9 --seed 5 --no-stream --output-json ";
  const CliRun one = run_generate(base + "'" + (dir_ / "one.json").string() + "'");
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_NE(one.output.find("slots: 4 slot(s) x 18 positions, 18.00 KiB (one slot per prompt), 1 prefill(s)"),
            std::string::npos)
      << one.output;
  // A slot: 18 positions x 64 values x 4 bytes = 4608 bytes; 10000 bytes hold 2.
  const CliRun mem = run_generate(base + "'" + (dir_ / "mem.json").string() + "' --kv-cache-memory 10000");
  ASSERT_EQ(mem.code, 0) << mem.output;
  EXPECT_NE(mem.output.find("slots: 2 slot(s) x 18 positions, 9.00 KiB (--kv-cache-memory 10000)"), std::string::npos)
      << mem.output;
  const CliRun cap = run_generate(base + "'" + (dir_ / "cap.json").string() + "' --max-batch 1 --kv-cache-memory 1GiB");
  ASSERT_EQ(cap.code, 0) << cap.output;
  EXPECT_NE(cap.output.find("slots: 1 slot(s) x 18 positions, 4.50 KiB (--max-batch 1), 4 prefill(s)"),
            std::string::npos)
      << cap.output;
  const nlohmann::json a = read_json(dir_ / "one.json"), b = read_json(dir_ / "mem.json"), c = read_json(dir_ / "cap.json");
  EXPECT_EQ(a["generated_ids"], b["generated_ids"]);
  EXPECT_EQ(a["generated_ids"], c["generated_ids"]);
  EXPECT_EQ(b["kv_cache"]["slots"], 2);
  EXPECT_EQ(b["kv_cache"]["bytes_per_slot"], 4608);
  EXPECT_EQ(b["kv_cache"]["limited_by"], "memory");
  EXPECT_EQ(a["kv_cache"]["limited_by"], "sequences");
}

TEST_F(GenerateCli, ErrorsSayWhatIsWrong) {
  save(test_generate::tiny_gqa(), 31, "ckpt");  // max_position_embeddings 64
  const std::string load = "--load '" + (dir_ / "ckpt").string() + "' ";
  std::string long_ids;
  for (int i = 0; i < 65; ++i) long_ids += (i ? "," : "") + std::to_string(i % 50);
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {load + "--prompt-ids " + long_ids, "more than the model's max_position_embeddings 64"},
      {load + "--prompt-ids 1,2,3 --max-new-tokens 63", "use --max-new-tokens 62 or less"},
      {load + "--prompt 'hello'", "text prompts need a tokenizer"},
      {load, "no prompt"},
      {load + "--prompt-ids 1,x", "'x' is not a token id"},
      {load + "--prompt-ids 1,2 --device tpu", "--device 'tpu' is not one of cpu, cuda"},
      {load + "--prompt-ids 1,2 --dtype bf16", "the CPU backend computes in fp32"},
      {load + "--prompt-ids 1,2 --top-p 0", "--top-p must be in (0, 1]"},
      {load + "--prompt-ids 1,99", "outside the model's vocabulary [0, 64)"},
      {load + "--prompt-ids 1,2 --prompt-ids 3 --max-new-tokens 4 --dump-logits x.npy", "--dump-logits needs prompts of equal length"},
      {load + "--iteration 3 --prompt-ids 1", "checkpoint for iteration 3 not found"},
      {"--load '" + (dir_ / "missing").string() + "' --prompt-ids 1", "does not exist"},
      {load + "--prompt-ids 1 --tokenizer-model '" + (dir_ / "none.json").string() + "'", "none.json"},
      {load + "--prompt-ids 1 --temprature 1", "did you mean '--temperature'"},
      {load + "--prompt hello world", "not expected: world"},  // one prompt per --prompt
      {load + "--prompt-ids 1,2,3 --max-new-tokens 4 --kv-cache-memory 1000",
       "--kv-cache-memory 1000 (1000 B) holds no KV-cache slot: one sequence of 6 positions (the longest prompt + max "
       "new tokens - 1) needs 1536 bytes (1.50 KiB) in fp32; raise --kv-cache-memory to at least 1536 bytes"},
      {load + "--prompt-ids 1 --kv-cache-memory 2XB", "--kv-cache-memory '2XB' is not a memory size"},
      {load + "--prompt-ids 1 --max-batch -1", "--max-batch -1 must be >= 1"},
  };
  for (const Case& c : cases) {
    const CliRun r = run_generate(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
  // A checkpoint without config.json.
  fs::remove(dir_ / "ckpt" / "iter_0000007" / "config.json");
  const CliRun r = run_generate(load + "--prompt-ids 1");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(r.output.find("config") != std::string::npos) << r.output;
}
