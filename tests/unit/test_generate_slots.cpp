// Continuous batching over a slotted KV cache (infer/generate.h, kv_cache.h): with fewer slots
// than prompts (S < B), prompts of very different lengths and early stops, generate() gives
// exactly the tokens, finish reasons and entropies of one batch of all prompts (S = B), greedy
// and sampled, for a GQA model and a DeepSeek-shaped one (multi-latent attention, sigmoid MoE);
// prefill into a subset of slots leaves the other slots alone; a slot reused by a short prompt
// after a long one starts clean; the memory budget's plan and its errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../generate/checkpoint_fixture.h"
#include "core/rng.h"
#include "infer/cached_decoder.h"
#include "infer/generate.h"
#include "model/decoder.h"

using namespace primus;

namespace {

std::vector<int32_t> ids_of(int64_t n, int64_t vocab, uint64_t seed) {
  CounterRng rng(seed, 9);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(rng.bits64(i) % vocab);
  return ids;
}

// Seven prompts of lengths 1..23, in an order that makes long and short ones share slots.
std::vector<std::vector<int32_t>> mixed_prompts(int64_t vocab) {
  std::vector<std::vector<int32_t>> p;
  const int64_t lengths[] = {1, 23, 3, 9, 2, 17, 5};
  for (int64_t i = 0; i < 7; ++i) p.push_back(ids_of(lengths[i], vocab, 40 + static_cast<uint64_t>(i)));
  return p;
}

ModelConfig deepseek_shaped() {
  ModelConfig c = test_generate::tiny_gqa();
  c.name = "tiny_mla_moe";
  c.num_layers = 3;
  c.multi_latent_attention = true;
  c.kv_lora_rank = 10;
  c.q_lora_rank = 7;
  c.qk_head_dim = 6;
  c.qk_pos_emb_head_dim = 4;
  c.v_head_dim = 5;
  c.qk_layernorm = true;
  c.rotary_scaling_factor = 4;
  c.original_max_position_embeddings = 6;
  c.mscale = 0.707;
  c.mscale_all_dim = 1.0;
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 12;
  c.moe_router_score_function = "sigmoid";
  c.moe_router_enable_expert_bias = true;
  c.moe_shared_expert_intermediate_size = 8;
  c.moe_first_k_dense_replace = 1;
  return c;
}

struct Model {
  ops::Context ctx = ops::Context::cpu();
  std::unique_ptr<DecoderModel> model;
  std::unique_ptr<infer::CachedDecoder> decoder;
  explicit Model(const ModelConfig& c, uint64_t seed) {
    DecoderOptions opt;
    opt.seed = seed;
    model = std::make_unique<DecoderModel>(c, ctx, opt);
    for (NamedTensor* b : model->buffers()) CounterRng(seed, 77).fill_normal(b->value, 0.f, 0.1f);  // expert biases
    decoder = std::make_unique<infer::CachedDecoder>(model->config(), ctx, infer::weights_of(*model));
  }
};

void expect_same(const infer::GenerateResult& got, const infer::GenerateResult& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.finish_reasons, want.finish_reasons) << what;
  EXPECT_EQ(got.generated_tokens, want.generated_tokens) << what;
  ASSERT_EQ(got.entropy_sums.size(), want.entropy_sums.size()) << what;
  for (size_t i = 0; i < want.entropy_sums.size(); ++i)
    // fp32 logits of other batch shapes (the GEMMs' blocking) round differently in the last bits.
    EXPECT_NEAR(got.entropy_sums[i], want.entropy_sums[i], 1e-6 * std::max(1.0, want.entropy_sums[i])) << what;
}

// One batch (S = B) against S = 1, 2, 3 slots (by max_batch and by a memory budget), greedy
// and sampled, with stop ids that end some sequences after a few tokens.
void check_continuous_equals_one_batch(const ModelConfig& config, uint64_t seed) {
  Model m(config, seed);
  const int64_t vocab = config.vocab_size;
  const auto prompts = mixed_prompts(vocab);
  for (const bool greedy : {true, false}) {
    infer::GenerateOptions o;
    o.max_new_tokens = 12;
    o.vocab_limit = vocab;
    o.keep_entropy = true;
    o.sample_ids = {7, 3, 100, 5, 6, 1, 2};
    if (!greedy) {
      o.sampling.temperature = 0.9f;
      o.sampling.top_p = 0.95f;
      o.sampling.seed = 77;
    }
    // Stop ids from the free run: the third token of prompt 0 and the fifth of prompt 4.
    const infer::GenerateResult free_run = infer::generate(*m.decoder, prompts, o);
    o.stop_ids = {free_run.tokens[0][2], free_run.tokens[4][4]};
    const infer::GenerateResult one = infer::generate(*m.decoder, prompts, o);
    EXPECT_EQ(one.slots, 7);
    EXPECT_EQ(one.prefills, 1);
    int64_t stopped = 0;
    for (const std::string& f : one.finish_reasons) stopped += f == "stop" ? 1 : 0;
    EXPECT_GE(stopped, 2) << "the test needs early stops";
    const std::string mode = greedy ? "greedy" : "sampled";
    for (int64_t S : {1, 2, 3}) {
      infer::GenerateOptions c = o;
      c.kv_budget.max_batch = S;
      const infer::GenerateResult got = infer::generate(*m.decoder, prompts, c);
      EXPECT_EQ(got.slots, S);
      EXPECT_GT(got.prefills, 1);
      expect_same(got, one, config.name + " " + mode + " max_batch " + std::to_string(S));
    }
    // Two slots' worth of memory (and a little more): S = 2.
    infer::GenerateOptions c = o;
    const infer::KvCachePlan full = infer::plan_generation_cache(*m.decoder, prompts, o);
    c.kv_budget.memory_bytes = 2 * full.bytes_per_slot + full.bytes_per_slot / 2;
    const infer::GenerateResult got = infer::generate(*m.decoder, prompts, c);
    EXPECT_EQ(got.slots, 2);
    EXPECT_EQ(got.cache_bytes, 2 * full.bytes_per_slot);
    expect_same(got, one, config.name + " " + mode + " memory budget");
  }
}

}  // namespace

TEST(GenerateSlots, ContinuousBatchingEqualsOneBatchGqa) {
  check_continuous_equals_one_batch(test_generate::tiny_gqa(), 21);
}

TEST(GenerateSlots, ContinuousBatchingEqualsOneBatchDeepSeekShaped) {
  check_continuous_equals_one_batch(deepseek_shaped(), 23);
}

// A short prompt in the slot a long one used: the same tokens as the short prompt alone (its
// own cache), greedy and sampled; and the decoder's state after the reuse equals a fresh one's.
TEST(GenerateSlots, SlotReuseStartsClean) {
  Model m(test_generate::tiny_gqa(), 31);
  const std::vector<int32_t> long_prompt = ids_of(30, 50, 1), short_prompt = ids_of(2, 50, 2);
  for (const bool greedy : {true, false}) {
    infer::GenerateOptions o;
    o.max_new_tokens = 9;
    o.vocab_limit = 50;
    if (!greedy) o.sampling.temperature = 1.1f;
    o.kv_budget.max_batch = 1;
    const infer::GenerateResult both = infer::generate(*m.decoder, {long_prompt, short_prompt}, o);
    infer::GenerateOptions alone = o;
    alone.sample_ids = {1};  // prompt 1's stream
    const infer::GenerateResult want = infer::generate(*m.decoder, {short_prompt}, alone);
    EXPECT_EQ(both.tokens[1], want.tokens[0]) << (greedy ? "greedy" : "sampled");
    EXPECT_EQ(both.prefills, 2);
  }

  // By hand: slot 0 decodes the long prompt for a few steps, then takes the short one.
  infer::CachedDecoder& d = *m.decoder;
  infer::KvCache used = d.new_cache(1, 40), fresh = d.new_cache(1, 40);
  const std::vector<int64_t> slot0 = {0};
  d.prefill_slots(used, slot0, {long_prompt});
  for (int s = 0; s < 3; ++s) d.decode(used, std::vector<int32_t>{static_cast<int32_t>(s + 3)});
  EXPECT_EQ(used.lengths[0], 33);
  const Tensor a = d.prefill_slots(used, slot0, {short_prompt});
  const Tensor b = d.prefill_slots(fresh, slot0, {short_prompt});
  EXPECT_EQ(used.lengths[0], 2);
  EXPECT_EQ(used.positions.to_float_vector(), std::vector<float>{2});
  EXPECT_EQ(a.to_float_vector(), b.to_float_vector());
  for (int s = 0; s < 4; ++s) {
    const std::vector<int32_t> t = {static_cast<int32_t>(11 * s % 50)};
    EXPECT_EQ(d.decode(used, t).to_float_vector(), d.decode(fresh, t).to_float_vector()) << "step " << s;
  }
}

// Prefill into slots {2, 0} of three (not consecutive: the staging path) leaves slot 1's cache
// rows, length and position as they were, and slot 1 decodes on exactly as before; the joiners'
// logits equal a prefill of the same two prompts into a fresh two-slot cache.
TEST(GenerateSlots, PrefillIntoSomeSlotsLeavesTheOthers) {
  for (const ModelConfig& config : {test_generate::tiny_gqa(), deepseek_shaped()}) {
    Model m(config, 41);
    infer::CachedDecoder& d = *m.decoder;
    const int64_t V = config.padded_vocab_size;
    infer::KvCache cache = d.new_cache(3, 32), ref = d.new_cache(3, 32);
    const std::vector<std::vector<int32_t>> first = {ids_of(5, 50, 1), ids_of(12, 50, 2), ids_of(3, 50, 3)};
    const std::vector<int64_t> all = {0, 1, 2};
    d.prefill_slots(cache, all, first);
    d.prefill_slots(ref, all, first);
    const std::vector<int32_t> step = {4, 8, 15};
    d.decode(cache, step);
    d.decode(ref, step);
    std::vector<std::vector<float>> slot1_before;
    for (const auto& layer : cache.layers)
      for (const Tensor& t : layer) slot1_before.push_back(t.rows(1, 2).to_float_vector());

    const std::vector<std::vector<int32_t>> joiners = {ids_of(7, 50, 4), ids_of(2, 50, 5)};
    const std::vector<int64_t> slots = {2, 0};
    const Tensor got = d.prefill_slots(cache, slots, joiners);
    EXPECT_EQ(cache.lengths, (std::vector<int64_t>{2, 13, 7})) << config.name;  // slot 1: 12 + 1 decoded
    EXPECT_EQ(cache.positions.to_float_vector(), (std::vector<float>{2, 13, 7})) << config.name;
    size_t i = 0;
    for (const auto& layer : cache.layers)
      for (const Tensor& t : layer) EXPECT_EQ(t.rows(1, 2).to_float_vector(), slot1_before[i++]) << config.name;
    infer::KvCache two = d.new_cache(2, 32);
    const Tensor want = d.prefill_slots(two, std::vector<int64_t>{0, 1}, joiners);
    const std::vector<float> g = got.to_float_vector(), w = want.to_float_vector();
    ASSERT_EQ(g.size(), w.size());
    EXPECT_LT(test::max_rel_error(g, w), 1e-6) << config.name;

    // Slot 1 goes on as in the cache that saw no join: bit for bit with dense layers (the same
    // batch shape); with MoE the experts' GEMMs group other tokens, so within rounding.
    const std::vector<int32_t> next = {16, 23, 42};
    const std::vector<float> a = d.decode(cache, next).to_float_vector(), b = d.decode(ref, next).to_float_vector();
    const double err = test::max_rel_error(a.data() + V, b.data() + V, static_cast<size_t>(V));  // row 1
    if (config.num_experts == 0)
      EXPECT_EQ(err, 0.0) << config.name;
    else
      EXPECT_LT(err, 1e-6) << config.name;
  }
}

TEST(GenerateSlots, PlanFromTheBudget) {
  Model m(test_generate::tiny_gqa(), 5);
  const infer::CachedDecoder& d = *m.decoder;
  const int64_t per_token = d.cache_values_per_token();  // 2 layers x (k + v) x 2 kv heads x 8
  EXPECT_EQ(per_token, 2 * 2 * 2 * 8);
  infer::KvCacheBudget budget;
  infer::KvCachePlan p = infer::plan_kv_cache(per_token, DType::F32, 20, 9, budget);
  EXPECT_EQ(p.slots, 9);
  EXPECT_EQ(p.bytes_per_slot, 20 * per_token * 4);
  EXPECT_EQ(p.bytes, 9 * p.bytes_per_slot);
  EXPECT_EQ(p.limited_by, "sequences");
  budget.memory_bytes = 4 * p.bytes_per_slot - 1;
  p = infer::plan_kv_cache(per_token, DType::F32, 20, 9, budget);
  EXPECT_EQ(p.slots, 3);
  EXPECT_EQ(p.limited_by, "memory");
  budget.max_batch = 2;
  p = infer::plan_kv_cache(per_token, DType::F32, 20, 9, budget);
  EXPECT_EQ(p.slots, 2);
  EXPECT_EQ(p.limited_by, "max_batch");
  budget = {};
  budget.memory_bytes = 1000;
  try {
    infer::plan_kv_cache(per_token, DType::F32, 20, 9, budget);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--kv-cache-memory 1000"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least 5120 bytes"), std::string::npos) << msg;
  }
  // Through generate(): the budget's key as the caller names it.
  infer::GenerateOptions o;
  o.max_new_tokens = 4;
  o.kv_budget.memory_bytes = 100;
  o.kv_budget.memory_key = "generation_kv_cache_memory";
  try {
    infer::generate(*m.decoder, {{1, 2, 3}}, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("generation_kv_cache_memory 100"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least 1536 bytes"), std::string::npos) << msg;  // 6 positions x 64 values x 4 bytes
  }
}

TEST(GenerateSlots, ParseMemorySize) {
  EXPECT_EQ(infer::parse_memory_size("2GiB", "--kv-cache-memory"), int64_t{2} << 30);
  EXPECT_EQ(infer::parse_memory_size("2g", "k"), int64_t{2} << 30);
  EXPECT_EQ(infer::parse_memory_size("512MiB", "k"), int64_t{512} << 20);
  EXPECT_EQ(infer::parse_memory_size("512 mib", "k"), int64_t{512} << 20);
  EXPECT_EQ(infer::parse_memory_size("1.5GB", "k"), int64_t{1500000000});
  EXPECT_EQ(infer::parse_memory_size("10kb", "k"), int64_t{10000});
  EXPECT_EQ(infer::parse_memory_size("4096", "k"), int64_t{4096});
  EXPECT_EQ(infer::parse_memory_size("4096B", "k"), int64_t{4096});
  for (const char* bad : {"", "abc", "2XB", "-1", "0", "1.2.3G", "GiB"}) {
    try {
      infer::parse_memory_size(bad, "--kv-cache-memory");
      FAIL() << "expected an error for '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--kv-cache-memory '"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(infer::format_bytes(int64_t{3} << 30), "3.00 GiB");
}

// A cache the caller keeps (GRPO: one for every round): reused by several calls, whatever it
// held before; too short a cache is an error naming the sizes.
TEST(GenerateSlots, CallerCacheIsReused) {
  Model m(test_generate::tiny_gqa(), 9);
  const auto prompts = mixed_prompts(50);
  infer::GenerateOptions o;
  o.max_new_tokens = 6;
  o.vocab_limit = 50;
  o.sampling.temperature = 0.8f;
  const infer::GenerateResult want = infer::generate(*m.decoder, prompts, o);
  infer::KvCache cache = m.decoder->new_cache(3, 40);
  for (int round = 0; round < 2; ++round) {
    const infer::GenerateResult got = infer::generate(*m.decoder, prompts, o, cache);
    EXPECT_EQ(got.tokens, want.tokens) << "round " << round;
    EXPECT_EQ(got.slots, 3);
    EXPECT_EQ(got.cache_max_len, 40);
  }
  infer::KvCache small = m.decoder->new_cache(2, 20);
  try {
    infer::generate(*m.decoder, prompts, o, small);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 20 positions per slot, but the longest prompt (23 tokens)"),
              std::string::npos)
        << e.what();
  }
}
