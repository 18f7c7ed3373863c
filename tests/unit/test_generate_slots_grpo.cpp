// GRPO's rollouts with a KV-cache budget (generation_kv_cache_memory, docs/RL.md): fewer slots
// than completions give the same rollouts, over rounds that reuse one cache; the key through an
// experiment file, refused without grpo, its errors naming it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "../generate/checkpoint_fixture.h"
#include "config/config.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "model/decoder.h"
#include "parallel/single_process_communicator.h"
#include "rl/grpo_objective.h"
#include "train/train_options.h"

using namespace primus;
namespace fs = std::filesystem;

// GRPO's rollouts with generation_kv_cache_memory (two slots for the 8 completions of a round):
// the same rows as with one slot per completion, over two rounds that reuse the cache; the key
// through the config, and its errors.
TEST(GenerateSlotsGrpo, RolloutsWithAKvCacheBudget) {
  const fs::path chatml = fs::path(PRIMUS_SOURCE_DIR) / "tests/data/posttrain/chatml_bytes";
  std::unique_ptr<data::Tokenizer> tok =
      data::make_tokenizer("HuggingFaceTokenizer", (chatml / "tokenizer.json").string(), 259);
  ModelConfig c = test_generate::tiny_gqa();
  c.vocab_size = tok->vocab_size();
  c.padded_vocab_size = (c.vocab_size + 63) / 64 * 64;
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions dopt;
  dopt.seed = 3;
  DecoderModel model(c, ctx, dopt);
  std::vector<rl::RlPrompt> prompts;
  for (const char* text : {"Shift abcd", "Shift a", "Shift something longer than that", "ab"}) {
    rl::RlPrompt p;
    p.ids = tok->encode(text, data::SpecialTokens::kNone);
    p.text = text;
    p.record = {{"answer", "bcde"}};
    prompts.push_back(p);
  }
  rl::GrpoOptions o;
  o.num_generations = 2;
  o.max_prompt_length = 40;
  o.max_completion_length = 6;
  o.sampling.temperature = 1.0f;
  rl::GrpoLayout layout;
  layout.global_batch = 8;
  layout.micro_batch = 2;
  layout.seq_length = 48;
  layout.seed = 11;
  auto dp = parallel::make_single_process_communicator(Device::CPU, "dp");
  const rl::GrpoObjective::WeightsSource weights = [&] { return infer::weights_of(model); };
  std::vector<int32_t> stops = {tok->eod()};

  rl::GrpoObjective full(o, prompts, *tok, stops, layout);
  infer::CachedDecoder probe(c, ctx, infer::weights_of(model));
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
  const int64_t slot_bytes = (longest + o.max_completion_length - 1) * probe.cache_values_per_token() * 4;
  o.generation_kv_cache_memory = 2 * slot_bytes + 7;
  rl::GrpoObjective slotted(o, prompts, *tok, stops, layout);
  for (int64_t it = 0; it < 2; ++it) {  // two rounds (num_iterations 1)
    const std::vector<data::Batch>& a = full.batches(it, c, weights, nullptr, ctx, *dp);
    const std::vector<data::Batch>& b = slotted.batches(it, c, weights, nullptr, ctx, *dp);
    ASSERT_EQ(a.size(), b.size());
    for (size_t m = 0; m < a.size(); ++m) {
      EXPECT_EQ(a[m].tokens.to_float_vector(), b[m].tokens.to_float_vector()) << "round " << it << " micro-batch " << m;
      EXPECT_EQ(a[m].loss_mask.to_float_vector(), b[m].loss_mask.to_float_vector());
    }
  }

  o.generation_kv_cache_memory = slot_bytes - 1;
  rl::GrpoObjective tiny(o, prompts, *tok, stops, layout);
  try {
    tiny.batches(0, c, weights, nullptr, ctx, *dp);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("generation_kv_cache_memory " + std::to_string(slot_bytes - 1)), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least " + std::to_string(slot_bytes) + " bytes"), std::string::npos) << msg;
  }

  // The key through an experiment file: parsed with its units; refused without grpo; named
  // with its source when it is not a size.
  const std::string exp = (fs::path(PRIMUS_SOURCE_DIR) / "tests/posttrain/letters-sft.yaml").string();
  setenv("PRIMUS_TEST_WORKSPACE", "/tmp/primus_test_slots_ws", 1);
  setenv("PRIMUS_TEST_DATA", "/tmp", 1);
  setenv("PRIMUS_TEST_TOKENIZER", chatml.c_str(), 1);
  auto options = [&](std::vector<std::string> sets) {
    config::Config cfg = config::load_experiment(exp, sets, 0);
    return train::train_options(cfg, false);
  };
  EXPECT_EQ(options({"grpo=true", "num_generations=4", "generation_kv_cache_memory=3MiB"}).grpo_options.generation_kv_cache_memory,
            int64_t{3} << 20);
  EXPECT_EQ(options({"grpo=true", "num_generations=4"}).grpo_options.generation_kv_cache_memory, 0);
  auto error_of = [&](std::vector<std::string> sets) {
    try {
      options(sets);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"generation_kv_cache_memory=1GiB"}).find("generation_kv_cache_memory"), std::string::npos);
  EXPECT_NE(error_of({"generation_kv_cache_memory=1GiB"}).find("grpo is false"), std::string::npos);
  const std::string bad = error_of({"grpo=true", "generation_kv_cache_memory=lots"});
  EXPECT_NE(bad.find("generation_kv_cache_memory"), std::string::npos) << bad;
  EXPECT_NE(bad.find("'lots' is not a memory size"), std::string::npos) << bad;
}
