// Continuous batching on the CUDA decoder (infer/generate.h): with fewer slots than prompts,
// prompts of very different lengths and early stops, the device loop (DeviceSampler, device
// positions, CUDA graphs kept across joins) gives the tokens, finish reasons and entropies of
// one batch of all prompts, greedy and sampled; and the same tokens as the host-sampling path
// at the same number of slots.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/rng.h"
#include "gpu_test_util.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "model/decoder.h"

using namespace primus;

namespace {

ModelConfig slots_llama() { return gputest::decode_llama("slots_llama"); }

std::vector<std::vector<int32_t>> mixed_prompts() {
  std::vector<std::vector<int32_t>> p;
  const int64_t lengths[] = {1, 60, 3, 17, 2, 33, 5, 9};
  for (size_t i = 0; i < 8; ++i) {
    CounterRng rng(70 + i, 9);
    std::vector<int32_t> ids(static_cast<size_t>(lengths[i]));
    for (size_t k = 0; k < ids.size(); ++k) ids[k] = static_cast<int32_t>(rng.bits64(k) % 500);
    p.push_back(ids);
  }
  return p;
}

void expect_same(const infer::GenerateResult& got, const infer::GenerateResult& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.finish_reasons, want.finish_reasons) << what;
  ASSERT_EQ(got.entropy_sums.size(), want.entropy_sums.size()) << what;
  for (size_t i = 0; i < want.entropy_sums.size(); ++i)
    EXPECT_NEAR(got.entropy_sums[i], want.entropy_sums[i], 1e-3 * std::max(1.0, want.entropy_sums[i]))
        << what << " sequence " << i;
}

}  // namespace

TEST(GenerateSlotsDevice, ContinuousBatchingEqualsOneBatch) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  const ModelConfig c = slots_llama();
  DecoderOptions opt;
  opt.seed = 15;
  DecoderModel model(c, cpu, opt);
  const auto prompts = mixed_prompts();
  infer::CachedDecoder dec(c, cuda, gputest::to_device(infer::weights_of(model), DType::F32));
  for (const bool greedy : {true, false}) {
    infer::GenerateOptions o;
    o.max_new_tokens = 40;
    o.vocab_limit = c.vocab_size;
    o.keep_entropy = true;
    o.sample_ids = {3, 1, 4, 1000, 5, 9, 2, 6};
    if (!greedy) {
      o.sampling.temperature = 0.8f;
      o.sampling.top_p = 0.9f;
      o.sampling.seed = 21;
    }
    const infer::GenerateResult free_run = infer::generate(dec, prompts, o);
    o.stop_ids = {free_run.tokens[0][3], free_run.tokens[4][6]};  // early stops for some
    const infer::GenerateResult one = infer::generate(dec, prompts, o);
    EXPECT_EQ(one.slots, 8);
    const std::string mode = greedy ? "greedy" : "sampled";
    for (int64_t S : {1, 3, 5}) {
      infer::GenerateOptions s = o;
      s.kv_budget.max_batch = S;
      const infer::GenerateResult got = infer::generate(dec, prompts, s);
      EXPECT_EQ(got.slots, S);
      expect_same(got, one, mode + " device, " + std::to_string(S) + " slots vs one batch");
      // The graph survives joins (prefill_slots runs in its own arena): most steps replay it.
      EXPECT_GT(got.graph_steps, got.decode_steps / 2) << mode << " S " << S << ": " << got.graph_failure;
      std::printf("[ slots ] %s S=%ld: %ld decode steps (%ld from the graph), %ld prefills\n", mode.c_str(),
                  static_cast<long>(S), static_cast<long>(got.decode_steps), static_cast<long>(got.graph_steps),
                  static_cast<long>(got.prefills));
      infer::GenerateOptions eager = s;
      eager.cuda_graphs = false;
      expect_same(infer::generate(dec, prompts, eager), one, mode + " eager, " + std::to_string(S) + " slots");
      infer::GenerateOptions host = s;
      host.sample_on_device = false;
      expect_same(infer::generate(dec, prompts, host), one, mode + " host sampling, " + std::to_string(S) + " slots");
    }
  }
}

// bf16 weights: the device loop against the host-sampling loop on the same decoder, where both
// run the same batch shapes (so the same rounding): greedy with one slot (each join is one
// prompt in both; with more slots the pipelined greedy loop joins a step later than the host
// loop, so its prefills group other prompts), sampled with three. Equal ids.
TEST(GenerateSlotsDevice, Bf16DeviceLoopEqualsHostLoop) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  const ModelConfig c = slots_llama();
  DecoderModel model(c, cpu, DecoderOptions{});
  infer::CachedDecoder dec(c, cuda, gputest::to_device(infer::weights_of(model), DType::BF16));
  const auto prompts = mixed_prompts();
  for (float temperature : {0.f, 1.f}) {
    infer::GenerateOptions o;
    o.max_new_tokens = 24;
    o.vocab_limit = c.vocab_size;
    o.sampling.temperature = temperature;
    o.kv_budget.max_batch = temperature > 0 ? 3 : 1;
    infer::GenerateOptions host = o;
    host.sample_on_device = false;
    const infer::GenerateResult d = infer::generate(dec, prompts, o), h = infer::generate(dec, prompts, host);
    EXPECT_EQ(d.tokens, h.tokens) << "temperature " << temperature;
    EXPECT_EQ(d.prefills, h.prefills) << "temperature " << temperature;
  }
}
