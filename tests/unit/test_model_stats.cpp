// Parameter counts of the model zoo against the published numbers (model cards and the
// exact totals of the HuggingFace checkpoints), FLOPs per token against the PaLM formula
// evaluated by hand, and the memory estimate's bookkeeping.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "config/config.h"
#include "model/decoder_spec.h"
#include "model/logits_chunk.h"
#include "model/model_stats.h"
#include "test_config_util.h"

using namespace primus;
using namespace primus::config::testing;

namespace {

// A zoo model loaded through the real configs/ with the real pre_trainer module, at TP=PP=1
// (so the vocabulary is not padded beyond the published size).
ModelConfig zoo(const std::string& model) {
  config::LoadOptions o;
  o.configs_dir = std::string(PRIMUS_SOURCE_DIR) + "/configs";
  o.env = env_of({{"ZOO_MODEL", model}});
  o.world_size = 1;
  return config::model_config(config::load_experiment(fixture("zoo_probe.yaml"), o));
}

// `count` rounded to the decimals of `published` (in billions) equals it: "8.03" -> 2 decimals.
void expect_billions(int64_t count, const std::string& published, const std::string& what) {
  const size_t dot = published.find('.');
  const int decimals = dot == std::string::npos ? 0 : static_cast<int>(published.size() - dot - 1);
  const double scaled = static_cast<double>(count) / 1e9 * std::pow(10.0, decimals);
  const double want = std::stod(published) * std::pow(10.0, decimals);
  EXPECT_EQ(std::llround(scaled), std::llround(want))
      << what << ": " << count << " parameters, published " << published << "B";
}

}  // namespace

TEST(ModelStats, ZooMatchesPublishedParameterCounts) {
  const std::pair<const char*, const char*> published[] = {
      {"llama3.1_8B", "8.03"},        {"llama3.1_70B", "70.6"},     {"llama3.1_405B", "405.9"},
      {"mixtral_8x7B_v0.1", "46.7"},  {"mixtral_8x22B_v0.1", "141"}, {"deepseek_v2_lite", "15.7"},
      {"deepseek_v2", "236"},         {"deepseek_v3", "671"},        {"llama2_7B", "6.74"},
      {"llama2_70B", "69.0"},         {"llama3_8B", "8.03"},         {"llama3_70B", "70.6"},
      {"llama3.2_1B", "1.24"},        {"llama3.2_3B", "3.21"},
  };
  for (const auto& [model, count] : published) expect_billions(count_parameters(zoo(model)).total, count, model);
}

TEST(ModelStats, ExactCountsOfTheHuggingFaceCheckpoints) {
  // Totals of the safetensors checkpoints on the HuggingFace hub.
  EXPECT_EQ(count_parameters(zoo("llama3.1_8B")).total, 8'030'261'248);
  EXPECT_EQ(count_parameters(zoo("llama3_70B")).total, 70'553'706'496);
  EXPECT_EQ(count_parameters(zoo("llama3.1_405B")).total, 405'853'388'800);
  EXPECT_EQ(count_parameters(zoo("llama2_7B")).total, 6'738'415'616);
  EXPECT_EQ(count_parameters(zoo("llama2_70B")).total, 68'976'648'192);
  EXPECT_EQ(count_parameters(zoo("llama3.2_1B")).total, 1'235'814'400);
  EXPECT_EQ(count_parameters(zoo("llama3.2_3B")).total, 3'212'749'824);
  EXPECT_EQ(count_parameters(zoo("mixtral_8x7B_v0.1")).total, 46'702'792'704);
}

TEST(ModelStats, SmallModelsOfTheZoo) {
  // llama_125M: the PyTorch peer's "llama-tiny" (124M, untied): 2*32000*768 + 12 layers + norm.
  const int64_t h = 768, f = 2048, V = 32000, kv = 4 * 64;
  const int64_t layer = h * h * 2 + 2 * h * kv + 3 * h * f + 2 * h;
  EXPECT_EQ(count_parameters(zoo("llama_125M")).total, 2 * V * h + 12 * layer + h);
  // llama_tiny: ~10M in the transformer, plus the tied 128256 x 384 embedding.
  const ParamCounts tiny = count_parameters(zoo("llama_tiny"));
  EXPECT_EQ(tiny.output_layer, 0);
  EXPECT_EQ(tiny.embedding, 128256 * 384);
  const int64_t transformer = tiny.total - tiny.embedding;
  EXPECT_GT(transformer, 9'000'000);
  EXPECT_LT(transformer, 11'000'000);
}

TEST(ModelStats, MixtureOfExpertsActivatedAndMtp) {
  // Mixtral: 12.9B and 39B active per token (the model cards).
  expect_billions(count_parameters(zoo("mixtral_8x7B_v0.1")).activated, "12.9", "mixtral 8x7B active");
  expect_billions(count_parameters(zoo("mixtral_8x22B_v0.1")).activated, "39", "mixtral 8x22B active");
  // DeepSeek counts activated parameters without the embedding lookup: V2 21B, V3 37B.
  const ParamCounts v2 = count_parameters(zoo("deepseek_v2"));
  expect_billions(v2.activated - v2.embedding, "21", "deepseek v2 active");
  const ParamCounts v3 = count_parameters(zoo("deepseek_v3"));
  expect_billions(v3.activated - v3.embedding, "37", "deepseek v3 active");
  // V3's MTP module, embedding and output layer shared: enorm, hnorm, eh_proj (2h x h), one
  // MoE layer and a final norm. (The HF checkpoint's "685B" adds its own embedding/output
  // copies for the module and the fp8 block scales.)
  const ModelConfig m3 = zoo("deepseek_v3");
  EXPECT_EQ(v3.mtp, layer_params(m3, 61).total() + 2LL * 7168 * 7168 + 3 * 7168);
  EXPECT_GT(layer_params(m3, 61).experts, 0);
  expect_billions(v3.mtp, "11.6", "deepseek v3 MTP module");
  EXPECT_EQ(count_parameters(zoo("deepseek_v2")).mtp, 0);
}

TEST(ModelStats, MultiLatentAttentionLayerByHand) {
  // DeepSeek-V3 attention: q_down 7168x1536, q_norm 1536, q_up 1536x(128*192),
  // kv_down 7168x(512+64), kv_norm 512, kv_up 512x(128*(128+128)), o (128*128)x7168.
  const ModelConfig m = zoo("deepseek_v3");
  const int64_t want = 7168LL * 1536 + 1536 + 1536LL * 128 * 192 + 7168LL * 576 + 512 + 512LL * 128 * 256 +
                       128LL * 128 * 7168;
  EXPECT_EQ(layer_params(m, 0).attention, want);
  EXPECT_EQ(layer_params(m, 0).mlp, 3LL * 7168 * 18432);        // dense (first 3 layers)
  EXPECT_EQ(layer_params(m, 3).experts, 256LL * 3 * 7168 * 2048);  // MoE from layer 3
  EXPECT_EQ(layer_params(m, 3).shared_experts, 3LL * 7168 * 2048);
  EXPECT_EQ(layer_params(m, 3).router, 256LL * 7168);
  // V2-Lite: queries projected directly, 16 heads.
  const ModelConfig lite = zoo("deepseek_v2_lite");
  EXPECT_EQ(layer_params(lite, 0).attention,
            2048LL * 16 * 192 + 2048LL * 576 + 512 + 512LL * 16 * 256 + 16LL * 128 * 2048);
}

TEST(ModelStats, FlopsPerTokenIsThePalmFormula) {
  // Llama 3.1 8B at seq 8192: 6 * (matrices incl. the output layer) + 12 * L * h * s.
  const ModelConfig m = zoo("llama3.1_8B");
  const double h = 4096, f = 14336, V = 128256, L = 32, s = 8192, kv = 8 * 128;
  const double matmul = L * (2 * h * h + 2 * h * kv + 3 * h * f) + V * h;
  const FlopsPerToken got = training_flops_per_token(m, 8192);
  EXPECT_DOUBLE_EQ(got.matmul, 6 * matmul);
  EXPECT_DOUBLE_EQ(got.attention, 12 * L * h * s);
  // The peer bench's N_matmul: every 2-D weight except the embedding.
  const ParamCounts c = count_parameters(m);
  EXPECT_EQ(c.matmul, c.total - c.embedding - c.layer_norms - c.final_norm);
  // Tied embedding: the output matmul still counts.
  const ParamCounts tied = count_parameters(zoo("llama3.2_1B"));
  EXPECT_EQ(tied.matmul, tied.total - tied.layer_norms - tied.final_norm);
}

TEST(ModelStats, MemoryBookkeeping) {
  const ModelConfig m = zoo("llama3.1_8B");
  const int64_t n = count_parameters(m).total;
  TrainingSetup t;
  t.seq_length = 4096;
  t.micro_batch_size = 1;
  t.global_batch_size = 8;
  ParallelLayout one;
  MemoryEstimate e = estimate_memory(m, one, t);
  EXPECT_EQ(e.params, n);
  EXPECT_DOUBLE_EQ(e.weight_bytes, 2.0 * n);      // bf16
  EXPECT_DOUBLE_EQ(e.grad_bytes, 4.0 * n);        // fp32 main grads
  EXPECT_DOUBLE_EQ(e.optimizer_bytes, 12.0 * n);  // fp32 master + Adam m, v
  // The distributed optimizer shards the optimizer states over data parallel ranks.
  ParallelLayout dp8;
  dp8.dp = 8;
  t.distributed_optimizer = true;
  t.global_batch_size = 64;
  EXPECT_DOUBLE_EQ(estimate_memory(m, dp8, t).optimizer_bytes, 12.0 * n / 8);
  // TP 2 halves everything but the norms.
  ParallelLayout tp2;
  tp2.tp = 2;
  const ParamCounts c = count_parameters(m);
  const int64_t norms = c.layer_norms + c.final_norm;
  EXPECT_EQ(estimate_memory(m, tp2, t).params, (n - norms) / 2 + norms);
  // fp32 training: 4 + 4 + 8 bytes.
  t.distributed_optimizer = false;
  t.precision = Precision::kFp32;
  e = estimate_memory(m, one, t);
  EXPECT_DOUBLE_EQ(e.weight_bytes + e.grad_bytes + e.optimizer_bytes, 16.0 * n);
  // Activations: full recompute < none; sequence parallel < none at TP 2; more tokens, more memory.
  t.precision = Precision::kBf16;
  const double base = estimate_memory(m, one, t).activation_bytes;
  TrainingSetup full = t;
  full.recompute = Recompute::kFullUniform;
  full.recompute_num_layers = 1;
  EXPECT_LT(estimate_memory(m, one, full).activation_bytes, base / 4);
  ParallelLayout sp = tp2;
  sp.sequence_parallel = true;
  EXPECT_LT(estimate_memory(m, sp, t).activation_bytes, estimate_memory(m, tp2, t).activation_bytes);
  TrainingSetup longer = t;
  longer.micro_batch_size = 2;
  // ... except one chunk of logits (model/logits_chunk.h), which the trainer makes at a time.
  auto chunk = [&](const TrainingSetup& s) {
    const double rows = std::min<double>(static_cast<double>(s.seq_length * s.micro_batch_size),
                                         static_cast<double>(logits_chunk_rows(m.padded_vocab_size, 2, s.logits_chunk_mb)));
    return rows * static_cast<double>(m.padded_vocab_size) * (2 + (s.cross_entropy_fusion ? 0 : 4));
  };
  EXPECT_GT(chunk(t), 0);
  EXPECT_DOUBLE_EQ(estimate_memory(m, one, longer).activation_bytes - chunk(longer), 2 * (base - chunk(t)));
}

// grad_reduce_in_bf16: 2 B for the gradients of the projections (ParamRole Linear and
// RoutedExperts, as DecoderModel allocates them), 4 B for the rest; the reference sums the
// model's own parameter table by role, MTP module included.
TEST(ModelStats, Bf16GradientsOfTheProjections) {
  for (const char* name : {"llama3.1_8B", "mixtral_8x7B_v0.1", "deepseek_v3"}) {
    const ModelConfig m = zoo(name);
    double expected = 0;
    for (const ParamSpec& p : parameter_table(m)) {
      if (!p.trainable()) continue;
      const bool projection = p.role == ParamRole::Linear || p.role == ParamRole::RoutedExperts;
      expected += (projection ? 2.0 : 4.0) * static_cast<double>(p.numel());
    }
    TrainingSetup t;
    t.grad_reduce_in_bf16 = true;
    const MemoryEstimate e = estimate_memory(m, ParallelLayout{}, t);
    EXPECT_DOUBLE_EQ(e.grad_bytes, expected) << name;
    t.grad_reduce_in_bf16 = false;
    EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).grad_bytes, 4.0 * static_cast<double>(e.params)) << name;
  }
}

// use_precision_aware_optimizer: per parameter, the master (4 B, or 2 B held as a remainder beside
// a bf16 weight) plus each moment (4 B, or 2 B in bf16).
TEST(ModelStats, PrecisionAwareOptimizerStates) {
  const ModelConfig m = zoo("mixtral_8x7B_v0.1");
  TrainingSetup t;
  const MemoryEstimate plain = estimate_memory(m, ParallelLayout{}, t);
  const double n = static_cast<double>(plain.params);
  EXPECT_DOUBLE_EQ(plain.optimizer_bytes, 12.0 * n);
  t.master_remainders = true;
  EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).optimizer_bytes, 10.0 * n);
  t.exp_avg_bf16 = t.exp_avg_sq_bf16 = true;
  EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).optimizer_bytes, 6.0 * n);
  t.precision = Precision::kFp16;  // remainders need bf16 weights: fp16 keeps a 4 B master
  EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).optimizer_bytes, 8.0 * n);
  t.precision = Precision::kFp32;  // fp32 weights are the masters
  EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).optimizer_bytes, 4.0 * n);
}

// fp8 keeps each projection's FP8 casts (w and w^T, 1 B each): 2 B per parameter of the
// attention and dense MLP projections, by hand for Llama-3.2-1B's 16 layers.
TEST(ModelStats, Fp8AddsTheCachedCastsOfTheProjections) {
  const ModelConfig m = zoo("llama3.2_1B");
  TrainingSetup t;
  const MemoryEstimate plain = estimate_memory(m, ParallelLayout{}, t);
  t.fp8 = true;
  const MemoryEstimate fp8 = estimate_memory(m, ParallelLayout{}, t);
  const double h = 2048, kv = 512, ffn = 8192;
  const double per_layer = h * (h + 2 * kv) + h * h + 3 * h * ffn;  // qkv, proj, fc1 (gate|up), fc2
  EXPECT_DOUBLE_EQ(fp8.weight_bytes - plain.weight_bytes, 2.0 * 16 * per_layer);
  EXPECT_DOUBLE_EQ(fp8.optimizer_bytes, plain.optimizer_bytes);
}

TEST(ModelStats, ActivationsOfATinyLayerByHand) {
  // h 64, 4 heads of 16 (no GQA), ffn 128, vocab 256, 2 layers, 8 tokens, TP 1, bf16, fused CE.
  ModelConfig m;
  m.num_layers = 2;
  m.hidden_size = 64;
  m.num_attention_heads = 4;
  m.num_query_groups = 4;
  m.ffn_hidden_size = 128;
  m.padded_vocab_size = m.vocab_size = 256;
  TrainingSetup t;
  t.seq_length = 8;
  t.micro_batch_size = 1;
  t.global_batch_size = 1;
  t.cross_entropy_fusion = true;
  // per layer per token (elements): norm + QKV inputs 2h, q,k,v 3h, attention output h,
  // log-sum-exp 4 (2 per head, fp32), norm + MLP inputs 2h, SwiGLU 3f.
  const double layer = 2 * 64 + 3 * 64 + 64 + 2 * 4 + 2 * 64 + 3 * 128;
  // outside the layers (bytes): embedding output 2h, final norm and output inputs 2*2h, logits 2V.
  const double extra = 2 * 64 + 2 * 2 * 64 + 2 * 256;
  EXPECT_DOUBLE_EQ(estimate_memory(m, ParallelLayout{}, t).activation_bytes, 8 * (2 * 2 * layer + extra));
}

TEST(ModelStats, UnevenPipelineStages) {
  ParallelLayout l;
  l.pp = 16;
  l.first_stage_layers = 6;
  EXPECT_EQ(stage_layer_counts(126, l).front(), 6);
  EXPECT_EQ(stage_layer_counts(126, l).back(), 8);
  l.pp = 8;
  l.first_stage_layers = 0;
  l.last_stage_layers = 5;
  EXPECT_EQ(stage_layer_counts(61, l), (std::vector<int64_t>{8, 8, 8, 8, 8, 8, 8, 5}));
  l.last_stage_layers = 4;
  EXPECT_THROW(stage_layer_counts(61, l), Error);
}

TEST(ModelStats, FormatCount) {
  EXPECT_EQ(format_count(8'030'261'248), "8.03B");
  EXPECT_EQ(format_count(140'620'634'112), "141B");
  EXPECT_EQ(format_count(70'553'706'496), "70.6B");
  EXPECT_EQ(format_count(124'668'672), "125M");
}
