// CachedDecoder (src/infer): prefill + KV-cache decode against the full-sequence
// recomputation of DecoderModel::logits(), for GQA, Llama 3.1 RoPE scaling (tied), MQA with
// partial rotary, batches of prompts with different lengths; generate() batched vs one
// prompt at a time; stop tokens; the checkpoint loader.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "../generate/checkpoint_fixture.h"
#include "core/rng.h"
#include "infer/checkpoint_model.h"
#include "ops/decode_attention.h"
#include "infer/generate.h"
#include "infer/cached_decoder.h"
#include "model/decoder.h"

using namespace primus;
namespace fs = std::filesystem;

namespace {

// max |a - b| / max |b| over a row.
double rel_error(const float* a, const float* b, int64_t n) { return test::max_rel_error(a, b, static_cast<size_t>(n)); }

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  CounterRng rng(seed, 5);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(rng.bits64(i) % vocab);
  return ids;
}

// Logits (T, V) of one sequence by the training forward.
Tensor full_logits(DecoderModel& model, const std::vector<int32_t>& seq) {
  Tensor tokens = Tensor::empty({1, static_cast<int64_t>(seq.size())}, DType::I32);
  std::copy(seq.begin(), seq.end(), tokens.data<int32_t>());
  return model.logits(tokens).view({static_cast<int64_t>(seq.size()), model.config().padded_vocab_size});
}

struct CaseResult {
  double worst_prefill = 0, worst_decode = 0;
  int64_t compared_rows = 0;
};

// Prefill B prompts of the given lengths, then decode `steps` tokens (random ids fed, so
// the check does not depend on what the model would pick); compare every row of logits
// with DecoderModel::logits of the whole sequence so far.
CaseResult check_against_full_forward(const ModelConfig& config, const std::vector<int64_t>& prompt_lengths,
                                      int64_t steps, uint64_t seed) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = seed;
  DecoderModel model(config, ctx, opt);
  for (NamedTensor* b : model.buffers()) CounterRng(seed, 77).fill_normal(b->value, 0.f, 0.1f);  // expert biases
  infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));
  const int64_t V = config.padded_vocab_size, B = static_cast<int64_t>(prompt_lengths.size());
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t b = 0; b < B; ++b) seqs.push_back(random_ids(prompt_lengths[b], V, seed + 100 * b));
  const int64_t longest = *std::max_element(prompt_lengths.begin(), prompt_lengths.end());
  infer::KvCache cache = decoder.new_cache(B, longest + steps);

  CaseResult r;
  Tensor all;
  Tensor last = decoder.prefill(cache, seqs, &all);
  EXPECT_EQ(last.shape(), Shape({B, V}));
  EXPECT_EQ(all.shape(), Shape({B, longest, V}));
  for (int64_t b = 0; b < B; ++b) {
    const Tensor ref = full_logits(model, seqs[b]);
    for (int64_t t = 0; t < prompt_lengths[b]; ++t) {
      r.worst_prefill = std::max(r.worst_prefill, rel_error(all.data<float>() + (b * longest + t) * V,
                                                            ref.data<float>() + t * V, V));
      ++r.compared_rows;
    }
    r.worst_prefill = std::max(r.worst_prefill, rel_error(last.data<float>() + b * V,
                                                          ref.data<float>() + (prompt_lengths[b] - 1) * V, V));
    EXPECT_EQ(cache.lengths[b], prompt_lengths[b]);
  }
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int32_t> next;
    for (int64_t b = 0; b < B; ++b) next.push_back(random_ids(1, V, seed * 7 + 31 * s + b)[0]);
    const Tensor logits = decoder.decode(cache, next);
    for (int64_t b = 0; b < B; ++b) {
      seqs[b].push_back(next[b]);
      EXPECT_EQ(cache.lengths[b], static_cast<int64_t>(seqs[b].size()));
      const Tensor ref = full_logits(model, seqs[b]);
      r.worst_decode = std::max(r.worst_decode, rel_error(logits.data<float>() + b * V,
                                                          ref.data<float>() + (static_cast<int64_t>(seqs[b].size()) - 1) * V, V));
      ++r.compared_rows;
    }
  }
  return r;
}

}  // namespace

TEST(GenerateDecoder, KvCacheMatchesFullForwardGqaBatchOfDifferentLengths) {
  const CaseResult r = check_against_full_forward(test_generate::tiny_gqa(), {3, 9, 1, 6}, 12, 11);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);
  EXPECT_EQ(r.compared_rows, 3 + 9 + 1 + 6 + 4 * 12);
}

TEST(GenerateDecoder, KvCacheMatchesFullForwardLlama31RopeScalingTied) {
  // Positions up to 44 with original_max_position_embeddings 16: every RoPE band is used.
  const CaseResult r = check_against_full_forward(test_generate::tiny_rope_scaling_tied(), {20, 13}, 24, 5);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);
}

TEST(GenerateDecoder, KvCacheMatchesFullForwardMqaPartialRotary) {
  const CaseResult r = check_against_full_forward(test_generate::tiny_mqa_partial_rotary(), {5, 2, 7}, 10, 3);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);
}

// MoE layers run the same block code in generation: a dropless Mixtral-style model (softmax
// top-2) and a DeepSeek-style one (sigmoid top-3 with a nonzero expert bias, shared experts,
// the first layer dense) decode like the full forward.
TEST(GenerateDecoder, KvCacheMatchesFullForwardMoe) {
  ModelConfig mixtral = test_generate::tiny_gqa();
  mixtral.name = "tiny_moe";
  mixtral.num_experts = 4;
  mixtral.moe_router_topk = 2;
  mixtral.moe_ffn_hidden_size = 24;
  CaseResult r = check_against_full_forward(mixtral, {4, 7}, 8, 21);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);

  ModelConfig deepseek = mixtral;
  deepseek.name = "tiny_moe_sigmoid";
  deepseek.num_layers = 3;
  deepseek.num_experts = 8;
  deepseek.moe_router_topk = 3;
  deepseek.moe_router_score_function = "sigmoid";
  deepseek.moe_router_enable_expert_bias = true;
  deepseek.moe_shared_expert_intermediate_size = 16;
  deepseek.moe_first_k_dense_replace = 1;
  r = check_against_full_forward(deepseek, {6, 1, 3}, 6, 22);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);
}

// Multi-latent attention decodes over the latent cache (c_kv and k_pe per position, the
// absorbed form) exactly like the full forward's keys and values: V2-Lite-style (queries
// projected directly, YaRN, Dn 6 + Dr 4, Dv 5) and V3-style (query latent, latent norms, a
// sigmoid MoE, an MTP module that generation leaves out).
TEST(GenerateDecoder, KvCacheMatchesFullForwardMultiLatentAttention) {
  ModelConfig lite = test_generate::tiny_gqa();
  lite.name = "tiny_mla";
  lite.multi_latent_attention = true;
  lite.kv_lora_rank = 10;
  lite.qk_head_dim = 6;
  lite.qk_pos_emb_head_dim = 4;
  lite.v_head_dim = 5;
  lite.rotary_scaling_factor = 4;
  lite.original_max_position_embeddings = 6;
  lite.mscale = lite.mscale_all_dim = 0.707;
  CaseResult r = check_against_full_forward(lite, {5, 11, 1}, 9, 31);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);

  ModelConfig v3 = lite;
  v3.name = "tiny_mla_v3";
  v3.q_lora_rank = 7;
  v3.qk_layernorm = true;
  v3.mscale_all_dim = 1.0;  // != mscale: scaled rope tables
  v3.num_experts = 4;
  v3.moe_router_topk = 2;
  v3.moe_ffn_hidden_size = 12;
  v3.moe_router_score_function = "sigmoid";
  v3.moe_router_enable_expert_bias = true;
  v3.mtp_num_layers = 1;
  r = check_against_full_forward(v3, {3, 8}, 7, 32);
  EXPECT_LT(r.worst_prefill, 1e-5);
  EXPECT_LT(r.worst_decode, 1e-5);
}

// The decode attention against a direct softmax formula (double precision) on random
// tensors, including a query head group > 1 and a sequence at position 0.
TEST(GenerateDecoder, DecodeAttentionMatchesSoftmaxFormula) {
  const int64_t B = 3, L = 9, Hq = 6, Hkv = 2, D = 5;
  auto rnd = [](Shape s, uint64_t stream) {
    Tensor t = Tensor::empty(s, DType::F32);
    CounterRng(42, stream).fill_normal(t, 0.f, 1.f);
    return t;
  };
  Tensor q = rnd({B, Hq, D}, 1), kn = rnd({B, Hkv, D}, 2), vn = rnd({B, Hkv, D}, 3);
  Tensor kc = rnd({B, L, Hkv, D}, 4), vc = rnd({B, L, Hkv, D}, 5);
  const Tensor kc0 = kc.clone(), vc0 = vc.clone();
  Tensor out = Tensor::empty({B, Hq, D}, DType::F32);
  Tensor pos = Tensor::empty({B}, DType::I32);
  const int32_t positions[B] = {4, 0, 8};
  std::copy_n(positions, B, pos.data<int32_t>());
  ops::Context ctx = ops::Context::cpu();
  const float scale = 0.37f;
  ops::decode_attention(ctx, out, q, kn, vn, kc, vc, pos, scale);
  const int64_t row = Hkv * D;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = positions[b];
    for (int64_t j = 0; j < L; ++j)
      for (int64_t e = 0; e < row; ++e) {
        const float want_k = j == p ? kn.data<float>()[b * row + e] : kc0.data<float>()[(b * L + j) * row + e];
        const float want_v = j == p ? vn.data<float>()[b * row + e] : vc0.data<float>()[(b * L + j) * row + e];
        ASSERT_EQ(kc.data<float>()[(b * L + j) * row + e], want_k) << "k cache b " << b << " pos " << j;
        ASSERT_EQ(vc.data<float>()[(b * L + j) * row + e], want_v) << "v cache b " << b << " pos " << j;
      }
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / (Hq / Hkv);
      std::vector<double> s(static_cast<size_t>(p + 1));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j <= p; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < D; ++i)
          dot += static_cast<double>(q.data<float>()[(b * Hq + h) * D + i]) * kc.data<float>()[((b * L + j) * Hkv + g) * D + i];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t i = 0; i < D; ++i) {
        double o = 0;
        for (int64_t j = 0; j <= p; ++j) o += s[j] / sum * vc.data<float>()[((b * L + j) * Hkv + g) * D + i];
        EXPECT_NEAR(out.data<float>()[(b * Hq + h) * D + i], o, 1e-5) << "b " << b << " h " << h << " i " << i;
      }
    }
  }
}

TEST(GenerateDecoder, BatchedGenerationEqualsOnePromptAtATime) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 21;
  DecoderModel model(test_generate::tiny_gqa(), ctx, opt);
  infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));
  const std::vector<std::vector<int32_t>> prompts = {random_ids(4, 50, 1), random_ids(11, 50, 2),
                                                     random_ids(1, 50, 3)};
  for (const bool greedy : {true, false}) {
    infer::GenerateOptions o;
    o.max_new_tokens = 10;
    o.vocab_limit = 50;
    if (!greedy) {
      o.sampling.temperature = 0.9f;
      o.sampling.top_p = 0.95f;
      o.sampling.seed = 77;
    }
    const infer::GenerateResult batched = infer::generate(decoder, prompts, o);
    ASSERT_EQ(batched.tokens.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      // Sampling streams are keyed by the sequence index: run prompt i alone as index 0
      // only for greedy; for sampling compare against the batch of one with the same index
      // by padding with the earlier prompts.
      std::vector<std::vector<int32_t>> alone(prompts.begin(), prompts.begin() + static_cast<long>(i) + 1);
      if (greedy) alone = {prompts[i]};
      const infer::GenerateResult single = infer::generate(decoder, alone, o);
      EXPECT_EQ(batched.tokens[i], single.tokens.back()) << "prompt " << i << (greedy ? " greedy" : " sampled");
      EXPECT_EQ(batched.tokens[i].size(), 10u);
      for (int32_t t : batched.tokens[i]) EXPECT_LT(t, 50);
    }
  }
}

TEST(GenerateDecoder, GreedyTokensAreTheArgmaxOfTheFullForward) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 8;
  DecoderModel model(test_generate::tiny_rope_scaling_tied(), ctx, opt);
  infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));
  infer::GenerateOptions o;
  o.max_new_tokens = 12;
  o.vocab_limit = 37;
  std::vector<int32_t> seq = random_ids(5, 37, 9);
  const infer::GenerateResult r = infer::generate(decoder, {seq}, o);
  ASSERT_EQ(r.tokens[0].size(), 12u);
  EXPECT_EQ(r.finish_reasons[0], "length");
  for (int32_t t : r.tokens[0]) {
    const Tensor ref = full_logits(model, seq);
    const int64_t V = model.config().padded_vocab_size;
    const float* last = ref.data<float>() + (static_cast<int64_t>(seq.size()) - 1) * V;
    EXPECT_EQ(t, std::max_element(last, last + 37) - last);
    seq.push_back(t);
  }
  EXPECT_EQ(r.generated_tokens, 12);
  EXPECT_EQ(r.decode_steps, 11);
}

TEST(GenerateDecoder, StopsAtAStopIdAndKeepsIt) {
  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 21;
  DecoderModel model(test_generate::tiny_gqa(), ctx, opt);
  infer::CachedDecoder decoder(model.config(), ctx, infer::weights_of(model));
  const std::vector<std::vector<int32_t>> prompts = {random_ids(4, 50, 1), random_ids(6, 50, 2)};
  infer::GenerateOptions o;
  o.max_new_tokens = 8;
  o.vocab_limit = 50;
  const infer::GenerateResult free_run = infer::generate(decoder, prompts, o);
  // Stop at prompt 0's third token: prompt 0 ends there (first occurrence), prompt 1 runs
  // until it draws that id or reaches the length.
  const int32_t stop = free_run.tokens[0][2];
  o.stop_ids = {stop};
  const infer::GenerateResult r = infer::generate(decoder, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& full = free_run.tokens[i];
    const auto it = std::find(full.begin(), full.end(), stop);
    const std::vector<int32_t> want(full.begin(), it == full.end() ? full.end() : it + 1);
    EXPECT_EQ(r.tokens[i], want) << "prompt " << i;
    EXPECT_EQ(r.finish_reasons[i], it == full.end() ? "length" : "stop");
  }
  EXPECT_LE(r.tokens[0].size(), 3u);
}

TEST(GenerateDecoder, ErrorsNameTheProblem) {
  ops::Context ctx = ops::Context::cpu();
  DecoderModel model(test_generate::tiny_gqa(), ctx);
  NamedTensorList w = infer::weights_of(model);
  infer::CachedDecoder decoder(model.config(), ctx, w);
  infer::KvCache cache = decoder.new_cache(1, 4);
  try {
    decoder.prefill(cache, {{1, 2, 3, 4, 5}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cache holds 4 positions"), std::string::npos) << e.what();
  }
  try {
    decoder.prefill(cache, {{1, 64}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
  decoder.prefill(cache, {{1, 2, 3}});
  decoder.decode(cache, std::vector<int32_t>{4});
  try {
    decoder.decode(cache, std::vector<int32_t>{4});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 4"), std::string::npos) << e.what();
  }
  w.pop_back();  // no output_layer.weight
  try {
    infer::CachedDecoder bad(model.config(), ctx, w);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("output_layer.weight"), std::string::npos) << e.what();
  }
}

TEST(GenerateDecoder, CheckpointLoaderGivesTheSavedModel) {
  const fs::path dir = fs::temp_directory_path() / ("primus_generate_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const ModelConfig m = test_generate::tiny_rope_scaling_tied();
  const ModelConfig saved = test_generate::save_test_checkpoint(dir.string(), m, 19, 7);
  EXPECT_EQ(saved.padded_vocab_size, m.padded_vocab_size);
  infer::InferenceModel loaded = infer::load_inference_model(dir.string(), std::nullopt, Device::CPU, DType::F32);
  EXPECT_EQ(loaded.iteration, 7);
  EXPECT_EQ(loaded.config.num_layers, m.num_layers);
  EXPECT_TRUE(loaded.config.use_rope_scaling);
  EXPECT_EQ(loaded.config.original_max_position_embeddings, 16);
  EXPECT_FALSE(loaded.config.untie_embeddings_and_output_weights);

  ops::Context ctx = ops::Context::cpu();
  DecoderOptions opt;
  opt.seed = 19;
  DecoderModel model(saved, ctx, opt);
  infer::CachedDecoder decoder(loaded.config, ctx, loaded.weights);
  const std::vector<int32_t> seq = random_ids(9, 37, 4);
  infer::KvCache cache = decoder.new_cache(1, 9);
  const Tensor last = decoder.prefill(cache, {seq});
  const Tensor ref = full_logits(model, seq);
  EXPECT_LT(rel_error(last.data<float>(), ref.data<float>() + 8 * saved.padded_vocab_size, saved.padded_vocab_size),
            1e-6);

  try {
    infer::load_inference_model((dir / "nope").string(), std::nullopt, Device::CPU, DType::F32);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// decode_step (the device-resident step generate uses on CUDA) on the CPU: positions come from
// cache.positions and advance with the lengths; the logits equal decode()'s.
TEST(GenerateDecoder, DecodeStepKeepsPositionsWithTheCache) {
  ops::Context ctx = ops::Context::cpu();
  const ModelConfig c = test_generate::tiny_gqa();
  DecoderModel model(c, ctx, DecoderOptions{});
  infer::CachedDecoder a(c, ctx, infer::weights_of(model)), b(c, ctx, infer::weights_of(model));
  const std::vector<std::vector<int32_t>> prompts = {{3, 1, 4, 1, 5}, {9, 2}};
  infer::KvCache ca = a.new_cache(2, 12), cb = b.new_cache(2, 12);
  a.prefill(ca, prompts);
  b.prefill(cb, prompts);
  EXPECT_EQ(ca.positions.to_float_vector(), (std::vector<float>{5, 2}));
  for (int s = 0; s < 4; ++s) {
    const std::vector<int32_t> next = {static_cast<int32_t>(s + 7), static_cast<int32_t>(2 * s + 1)};
    const std::vector<float> want = a.decode(ca, next).to_float_vector();
    Tensor ids = Tensor::empty({2}, DType::I32);
    std::copy(next.begin(), next.end(), ids.data<int32_t>());
    const std::vector<float> got = b.decode_step(cb, ids).to_float_vector();
    EXPECT_EQ(got, want) << "step " << s;
    EXPECT_EQ(cb.lengths, ca.lengths);
    EXPECT_EQ(cb.positions.to_float_vector(), (std::vector<float>{static_cast<float>(6 + s), static_cast<float>(3 + s)}));
  }
  EXPECT_FALSE(b.last_step_from_graph());  // graphs are CUDA only
}
