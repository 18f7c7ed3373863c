// DecoderModel on the CPU backend: parameter names and init, whole-model finite
// differences, gradient accumulation, forward_only/logits consistency, recompute modes
// (same gradients, less activation memory), and config validation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../test_util.h"
#include "core/rng.h"
#include "model/decoder.h"

using namespace primus;

namespace {

ModelConfig tiny_config(bool untied = true) {
  ModelConfig c = test::tiny_llama({.name = "llama_test_tiny", .vocab = 0, .padded_vocab = 19});
  c.untie_embeddings_and_output_weights = untied;
  c.init_method_std = 0.2;  // large enough that the layers matter in a tiny model
  c.use_rope_scaling = true;
  c.original_max_position_embeddings = 8;
  c.rope_scaling_factor = 4;
  return c;
}

struct Batch {
  Tensor tokens, labels, mask;
};

Batch make_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Batch b{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::F32)};
  CounterRng rng(seed, 99);
  for (int64_t i = 0; i < B * T; ++i) {
    b.tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(i) % V);
    b.labels.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(i + 1000) % V);
    b.mask.data<float>()[i] = (i % 5 == 3) ? 0.f : 1.f;
  }
  return b;
}

using test::grads_of;

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

}  // namespace

TEST(Llama, ParameterNamesShapesAndMegatronInit) {
  auto ctx = ops::Context::cpu();
  ModelConfig c = tiny_config();
  c.num_layers = 4;
  c.init_method_std = 0.02;
  c.hidden_size = 64;
  c.ffn_hidden_size = 128;
  DecoderModel m(c, ctx);
  std::vector<std::string> names;
  for (NamedTensor* p : m.parameters()) names.push_back(p->name);
  ASSERT_EQ(names.size(), 1u + 6 * 4 + 2);
  EXPECT_EQ(names[0], "embedding.word_embeddings.weight");
  EXPECT_EQ(names[1], "decoder.layers.0.input_layernorm.weight");
  EXPECT_EQ(names[2], "decoder.layers.0.self_attention.linear_qkv.weight");
  EXPECT_EQ(names.back(), "output_layer.weight");
  EXPECT_EQ(m.parameter("decoder.layers.0.self_attention.linear_qkv.weight").value.shape(), (Shape{(4 + 4) * 16, 64}));
  EXPECT_EQ(m.parameter("decoder.layers.3.mlp.linear_fc1.weight").value.shape(), (Shape{256, 64}));
  EXPECT_TRUE(m.parameter("decoder.final_layernorm.weight").no_weight_decay);
  EXPECT_FALSE(m.parameter("decoder.layers.1.mlp.linear_fc2.weight").no_weight_decay);
  EXPECT_THROW(m.parameter("decoder.layers.0.mlp.linear_fc3.weight"), Error);

  auto stddev = [](const Tensor& t) {
    const auto v = t.to_float_vector();
    double s = 0, s2 = 0;
    for (float x : v) s += x, s2 += static_cast<double>(x) * x;
    const double mean = s / v.size();
    return std::sqrt(s2 / v.size() - mean * mean);
  };
  EXPECT_NEAR(stddev(m.parameter("decoder.layers.2.mlp.linear_fc1.weight").value), 0.02, 0.001);
  EXPECT_NEAR(stddev(m.parameter("decoder.layers.2.mlp.linear_fc2.weight").value), 0.02 / std::sqrt(8.0), 0.0005);
  EXPECT_NEAR(stddev(m.parameter("decoder.layers.2.self_attention.linear_proj.weight").value), 0.02 / std::sqrt(8.0),
              0.0005);
  for (float x : m.parameter("decoder.layers.1.pre_mlp_layernorm.weight").value.to_float_vector()) EXPECT_EQ(x, 1.f);

  // Each tensor's init depends only on (seed, name): a model with fewer layers has the
  // same layer-0 weights, and the same values as CounterRng drawn directly.
  ModelConfig c2 = c;
  c2.num_layers = 2;
  DecoderModel m2(c2, ctx);
  const std::string w0 = "decoder.layers.0.mlp.linear_fc1.weight";
  EXPECT_EQ(m.parameter(w0).value.to_float_vector(), m2.parameter(w0).value.to_float_vector());
  Tensor direct = Tensor::empty({256, 64}, DType::F32);
  CounterRng(1234, stream_id(w0)).fill_normal(direct, 0.f, 0.02f);
  EXPECT_EQ(m.parameter(w0).value.to_float_vector(), direct.to_float_vector());
}

TEST(Llama, TiedEmbeddingsHaveNoOutputLayer) {
  auto ctx = ops::Context::cpu();
  DecoderModel m(tiny_config(false), ctx);
  for (NamedTensor* p : m.parameters()) EXPECT_NE(p->name, "output_layer.weight");
  EXPECT_EQ(m.parameters().size(), 1u + 6 * 2 + 1);
}

// Whole-model central differences: perturbs a few elements of every parameter and
// compares d(loss_sum)/dp from forward_only against forward_backward's gradient.
TEST(Llama, WholeModelGradientMatchesFiniteDifferences) {
  auto ctx = ops::Context::cpu();
  for (bool untied : {true, false}) {
    DecoderModel m(tiny_config(untied), ctx);
    const Batch b = make_batch(2, 7, 19, 5);
    m.zero_grads();
    m.forward_backward(b.tokens, b.labels, b.mask, 1.f);
    for (NamedTensor* p : m.parameters()) {
      float* w = p->value.data<float>();
      const int64_t n = p->value.numel();
      for (int64_t idx : std::initializer_list<int64_t>{0, n / 3, n - 1}) {
        const float saved = w[idx], h = 1e-2f;
        w[idx] = saved + h;
        const double up = m.forward_only(b.tokens, b.labels, b.mask).loss_sum;
        w[idx] = saved - h;
        const double down = m.forward_only(b.tokens, b.labels, b.mask).loss_sum;
        w[idx] = saved;
        const double numeric = (up - down) / (2 * h), analytic = p->grad.data<float>()[idx];
        EXPECT_NEAR(analytic, numeric, 3e-3 * std::max(1.0, std::fabs(numeric)))
            << p->name << "[" << idx << "] untied=" << untied;
      }
    }
  }
}

TEST(Llama, GradientsAccumulateAcrossMicroBatches) {
  auto ctx = ops::Context::cpu();
  DecoderModel m(tiny_config(), ctx);
  const Batch b = make_batch(2, 6, 19, 11);
  m.zero_grads();
  const auto r1 = m.forward_backward(b.tokens, b.labels, b.mask, 1.f);
  const auto once = grads_of(m);
  m.zero_grads();
  m.forward_backward(b.tokens, b.labels, b.mask, 0.25f);
  const auto r2 = m.forward_backward(b.tokens, b.labels, b.mask, 0.75f);
  EXPECT_EQ(r1.loss_sum, r2.loss_sum);
  EXPECT_EQ(r1.num_tokens, 12 - 2);  // positions 3 and 8 are masked
  for (const auto& [name, g] : grads_of(m))
    for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], once.at(name)[i], 1e-6 + 1e-5 * std::fabs(g[i])) << name;
}

TEST(Llama, ForwardOnlyAndLogitsAgreeWithTheLoss) {
  auto ctx = ops::Context::cpu();
  DecoderModel m(tiny_config(), ctx);
  const Batch b = make_batch(2, 5, 19, 3);
  const auto fwd = m.forward_only(b.tokens, b.labels, b.mask);
  m.zero_grads();
  const auto fb = m.forward_backward(b.tokens, b.labels, b.mask, 1.f);
  EXPECT_NEAR(fwd.loss_sum, fb.loss_sum, 1e-5 * std::fabs(fb.loss_sum));
  const Tensor logits = m.logits(b.tokens);
  ASSERT_EQ(logits.shape(), (Shape{2, 5, 19}));
  double loss = 0;
  for (int64_t i = 0; i < 10; ++i) {
    const float* z = logits.data<float>() + i * 19;
    double mx = z[0], s = 0;
    for (int j = 0; j < 19; ++j) mx = std::max(mx, static_cast<double>(z[j]));
    for (int j = 0; j < 19; ++j) s += std::exp(z[j] - mx);
    loss += b.mask.data<float>()[i] * (mx + std::log(s) - z[b.labels.data<int32_t>()[i]]);
  }
  EXPECT_NEAR(loss, fb.loss_sum, 1e-5 * std::fabs(loss));
  // Causality: changing the last token does not change earlier logits.
  Tensor tokens2 = b.tokens.clone();
  tokens2.data<int32_t>()[4] = (tokens2.data<int32_t>()[4] + 1) % 19;
  const Tensor logits2 = m.logits(tokens2);
  for (int64_t i = 0; i < 4 * 19; ++i) EXPECT_EQ(logits.data<float>()[i], logits2.data<float>()[i]);
  EXPECT_NE(logits.data<float>()[4 * 19], logits2.data<float>()[4 * 19]);
}

TEST(Llama, RecomputeModesGiveTheSameGradientsWithLessMemory) {
  auto ctx = ops::Context::cpu();
  ModelConfig c = tiny_config();
  c.num_layers = 3;
  const Batch b = make_batch(2, 16, 19, 8);
  std::map<std::string, std::vector<float>> reference;
  double ref_loss = 0;
  std::map<int, size_t> memory;
  int mode_index = 0;
  for (auto [mode, layers] : {std::pair{Recompute::None, 0}, {Recompute::Selective, 0}, {Recompute::Full, 0},
                              {Recompute::Full, 2}}) {
    DecoderOptions o;
    o.recompute = mode;
    o.recompute_num_layers = layers;
    o.logits_chunk_rows = 5;  // also exercises the chunked classifier (32 rows)
    DecoderModel m(c, ctx, o);
    m.zero_grads();
    const auto r = m.forward_backward(b.tokens, b.labels, b.mask, 0.1f);
    memory[mode_index] = m.activation_bytes_high_water();
    if (mode_index++ == 0) {
      reference = grads_of(m);
      ref_loss = r.loss_sum;
      continue;
    }
    EXPECT_EQ(r.loss_sum, ref_loss);
    for (const auto& [name, g] : grads_of(m)) {
      const auto& ref = reference.at(name);
      double err = 0;
      for (size_t i = 0; i < g.size(); ++i) err = std::max(err, std::fabs(static_cast<double>(g[i]) - ref[i]));
      EXPECT_LE(err, 1e-6 * max_abs(ref)) << name << " mode " << static_cast<int>(mode) << " layers " << layers;
    }
  }
  EXPECT_LT(memory[1], memory[0]);  // selective < none
  EXPECT_LT(memory[2], memory[1]);  // full < selective
  EXPECT_LT(memory[2], memory[3]);  // all layers < first two layers
  EXPECT_EQ(parse_recompute_granularity("full"), Recompute::Full);
  EXPECT_EQ(parse_recompute_granularity("null"), Recompute::None);
  EXPECT_THROW(parse_recompute_granularity("ful"), Error);
}

TEST(Llama, UnsupportedConfigsNameTheKey) {
  auto ctx = ops::Context::cpu();
  auto expect_key = [&](ModelConfig c, const char* key) {
    try {
      DecoderModel m(c, ctx);
      ADD_FAILURE() << "expected an error for " << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  ModelConfig c = tiny_config();
  c.normalization = "LayerNorm";
  expect_key(c, "normalization");
  c = tiny_config();
  c.num_query_groups = 3;
  expect_key(c, "num_query_groups");
  c = tiny_config();
  c.add_bias_linear = true;
  expect_key(c, "add_bias_linear");
  c = tiny_config();
  c.padded_vocab_size = 0;
  expect_key(c, "padded_vocab_size");
  c = tiny_config();
  c.hidden_dropout = 0.1;
  expect_key(c, "hidden_dropout");
  DecoderModel m(tiny_config(), ctx);
  Batch b = make_batch(1, 4, 19, 1);
  b.labels.data<int32_t>()[2] = 19;
  EXPECT_THROW(m.forward_backward(b.tokens, b.labels, b.mask, 1.f), Error);
}

// zero_grads_for_overwrite: the grads that backward accumulates into are zeroed, the linear
// weights' grads are WRITTEN by the first micro-batch (beta = 0) and accumulated by the next.
// Every grad starts as garbage (a prior step's leftovers); the result must equal a plain
// zero_grads + the same micro-batches bit for bit, tied and untied, with chunked logits.
TEST(Llama, GradOverwriteEqualsZeroThenAccumulate) {
  auto ctx = ops::Context::cpu();
  for (bool untied : {true, false}) {
    DecoderOptions o;
    o.logits_chunk_rows = 5;  // several classifier chunks: only the first may overwrite
    DecoderModel ref(tiny_config(untied), ctx, o), lazy(tiny_config(untied), ctx, o);
    const Batch b1 = make_batch(2, 6, 19, 11), b2 = make_batch(2, 6, 19, 12);
    ref.zero_grads();
    for (NamedTensor* p : lazy.parameters()) ops::fill(ctx, p->grad, 1e3f);
    lazy.zero_grads_for_overwrite();
    for (DecoderModel* m : {&ref, &lazy}) {
      m->forward_backward(b1.tokens, b1.labels, b1.mask, 0.05f);
      m->forward_backward(b2.tokens, b2.labels, b2.mask, 0.05f);
    }
    const auto want = grads_of(ref), got = grads_of(lazy);
    for (const auto& [name, g] : want) {
      ASSERT_GT(max_abs(g), 0.0) << name;
      EXPECT_EQ(got.at(name), g) << (untied ? "untied " : "tied ") << name;
    }
  }
}
