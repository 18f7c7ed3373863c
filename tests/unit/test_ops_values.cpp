// Forward values of the CPU ops against naive loops written here from the definitions,
// the optimizer update against the AdamW formula, RoPE frequency scaling, and the
// errors the op boundary raises.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <cmath>
#include <limits>
#include <numbers>

#include "ops/cpu/openblas_kernels.h"
#include "test_ops_util.h"

using namespace primus;
using namespace primus::test;

TEST(OpsValues, MatmulAllTransposesAlphaBeta) {
  auto ctx = ops::Context::cpu();
  // M = 1 is the decode step's matrix-vector product (a separate BLAS path); beta = 0 must
  // ignore whatever out holds, NaN included.
  for (const int64_t M : {int64_t{3}, int64_t{1}})
    for (const float beta : {0.5f, 0.f}) {
      const int64_t N = 4, K = 5;
      Tensor A = randn({M, K}, 1), Bm = randn({K, N}, 2), C0 = randn({M, N}, 3);
      if (beta == 0.f)
        for (int64_t i = 0; i < M * N; ++i) C0.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> ref(M * N);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += A.data<float>()[i * K + k] * Bm.data<float>()[k * N + j];
          ref[i * N + j] = static_cast<float>(2.0 * s + (beta == 0.f ? 0.0 : beta * C0.data<float>()[i * N + j]));
        }
      // Transposed operands as stored matrices.
      Tensor At = Tensor::empty({K, M}, DType::F32), Bt = Tensor::empty({N, K}, DType::F32);
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) At.data<float>()[k * M + i] = A.data<float>()[i * K + k];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < N; ++j) Bt.data<float>()[j * K + k] = Bm.data<float>()[k * N + j];
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          Tensor C = C0.clone();
          ops::matmul(ctx, C, ta ? At : A, ta ? ops::Transpose::Yes : ops::Transpose::No, tb ? Bt : Bm,
                      tb ? ops::Transpose::Yes : ops::Transpose::No, 2.f, beta);
          const std::vector<float> got = C.to_float_vector();
          EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float v) { return std::isfinite(v); }))
              << "M=" << M << " beta=" << beta << " ta=" << ta << " tb=" << tb;
          EXPECT_LT(max_rel_error(got, ref), 1e-6) << "M=" << M << " beta=" << beta << " ta=" << ta << " tb=" << tb;
        }
    }
}

TEST(OpsValues, RmsNormMatchesDefinition) {
  auto ctx = ops::Context::cpu();
  Tensor x = randn({3, 8}, 4), w = randn({8}, 5);
  Tensor y = Tensor::empty({3, 8}, DType::F32), rstd = Tensor::empty({3}, DType::F32);
  ops::rmsnorm_forward(ctx, y, rstd, x, w, 1e-5f);
  for (int64_t i = 0; i < 3; ++i) {
    double ms = 0;
    for (int64_t c = 0; c < 8; ++c) ms += std::pow(x.data<float>()[i * 8 + c], 2) / 8;
    const double r = 1 / std::sqrt(ms + 1e-5);
    EXPECT_NEAR(rstd.data<float>()[i], r, 1e-6 * r);
    for (int64_t c = 0; c < 8; ++c)
      EXPECT_NEAR(y.data<float>()[i * 8 + c], x.data<float>()[i * 8 + c] * r * w.data<float>()[c], 1e-5);
  }
}

// Naive attention for one (b, h): softmax over allowed keys in double.
static std::vector<float> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                                          bool causal) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  std::vector<float> out(static_cast<size_t>(q.numel()));
  auto at = [](const Tensor& t, int64_t b, int64_t s, int64_t h, int64_t d) {
    return t.data<float>()[((b * t.size(1) + s) * t.size(2) + h) * t.size(3) + d];
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / (Hq / Hkv);
      for (int64_t i = 0; i < T; ++i) {
        const int64_t n = causal ? i + 1 : T;
        std::vector<double> s(n);
        double mx = -1e300;
        for (int64_t j = 0; j < n; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(at(q, b, i, h, d)) * at(k, b, j, g, d);
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += s[j] / z * at(v, b, j, g, d);
          out[((b * T + i) * Hq + h) * D + d] = static_cast<float>(acc);
        }
      }
    }
  return out;
}

TEST(OpsValues, AttentionMatchesNaiveAcrossBlocksAndGroups) {
  auto ctx = ops::Context::cpu();
  for (auto [T, Hq, Hkv, causal] : {std::tuple{7, 4, 1, true}, {7, 4, 4, false}, {150, 6, 2, true}}) {
    const int64_t B = 2, D = 8;
    Tensor q = randn({B, T, Hq, D}, 6), k = randn({B, T, Hkv, D}, 7), v = randn({B, T, Hkv, D}, 8);
    Tensor out = Tensor::empty(q.shape(), DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
    ops::attention_forward(ctx, out, lse, q, k, v, 0.35f, causal);
    EXPECT_LT(max_rel_error(out.to_float_vector(), naive_attention(q, k, v, 0.35f, causal)), 1e-5)
        << "T=" << T << " Hq=" << Hq << " Hkv=" << Hkv << " causal=" << causal;
  }
}

TEST(OpsValues, RopeRotatesPairsByPositionAngle) {
  auto ctx = ops::Context::cpu();
  const int64_t T = 4, D = 6;
  Tensor cos, sin;
  const auto inv = ops::rope_inv_freq(D, 100.f, {});
  ops::rope_tables(cos, sin, T, inv);
  Tensor x = randn({1, T, 1, D}, 9), y = Tensor::empty({1, T, 1, D}, DType::F32);
  ops::rope_forward(ctx, y, x, cos, sin);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = t * std::pow(100.0, -2.0 * i / D);
      const double x1 = x.data<float>()[t * D + i], x2 = x.data<float>()[t * D + i + D / 2];
      EXPECT_NEAR(y.data<float>()[t * D + i], x1 * std::cos(a) - x2 * std::sin(a), 1e-5);
      EXPECT_NEAR(y.data<float>()[t * D + i + D / 2], x2 * std::cos(a) + x1 * std::sin(a), 1e-5);
    }
}

TEST(OpsValues, RopeInvFreqYarnDeepSeek) {
  // DeepSeek-V2/V3: rotary dim 64, theta 1e4, factor 40 over 4096 positions, beta 32 / 1. The
  // correction range is dims [10, 23]; expected values from DeepSeek's reference formulas
  // (float64 PyTorch, tests/reference/check_llama.py's mla_rope).
  ops::RopeScaling s;
  s.yarn = true;
  s.yarn_factor = 40.f;
  s.beta_fast = 32.f;
  s.beta_slow = 1.f;
  s.original_max_position_embeddings = 4096;
  const auto f = ops::rope_inv_freq(64, 10000.f, s);
  ASSERT_EQ(f.size(), 32u);
  const std::pair<int, double> expect[] = {{0, 1.0},          {9, 0.0749894209},     {10, 0.0562341325},
                                           {11, 0.0390069266}, {16, 0.0055},          {22, 0.000177827941},
                                           {23, 3.33380358e-05}, {31, 3.33380358e-06}};
  for (const auto& [i, v] : expect) EXPECT_NEAR(f[static_cast<size_t>(i)], v, 2e-7 * v) << "i=" << i;
  EXPECT_NEAR(ops::yarn_mscale(40.0, 0.707), 0.1 * 0.707 * std::log(40.0) + 1.0, 1e-12);
  EXPECT_EQ(ops::yarn_mscale(1.0, 0.707), 1.0);
}

TEST(OpsValues, RopeInvFreqLlama31Scaling) {
  // Llama 3.1 8B: head dim 128, theta 500000, factor 8, low 1, high 4, original 8192.
  ops::RopeScaling s;
  s.enabled = true;
  s.factor = 8.f;
  s.low_freq_factor = 1.f;
  s.high_freq_factor = 4.f;
  s.original_max_position_embeddings = 8192;
  const auto plain = ops::rope_inv_freq(128, 500000.f, {});
  const auto scaled = ops::rope_inv_freq(128, 500000.f, s);
  ASSERT_EQ(scaled.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 128);
    EXPECT_NEAR(plain[i], f, 1e-7 * f);
    const double wavelen = 2 * std::numbers::pi / f;
    double expect;
    if (wavelen < 8192.0 / 4) expect = f;            // high frequencies: untouched
    else if (wavelen > 8192.0 / 1) expect = f / 8;   // low frequencies: divided by factor
    else {
      const double smooth = (8192.0 / wavelen - 1) / (4 - 1);
      expect = (1 - smooth) * f / 8 + smooth * f;
    }
    EXPECT_NEAR(scaled[i], expect, 1e-6 * expect) << "i=" << i;
  }
  // Spot values in each regime (hand-computed): i=0 keeps 1; i=63 is 500000^(-126/128)/8;
  // i=34 lies in the interpolation band (wavelength ~ 6683).
  EXPECT_FLOAT_EQ(scaled[0], 1.f);
  EXPECT_NEAR(scaled[63], std::pow(500000.0, -126.0 / 128) / 8, 1e-12);
  const double f34 = std::pow(500000.0, -68.0 / 128), w34 = 2 * std::numbers::pi / f34;
  ASSERT_GT(w34, 2048.0);
  ASSERT_LT(w34, 8192.0);
  EXPECT_GT(scaled[34], f34 / 8);
  EXPECT_LT(scaled[34], f34);
}

TEST(OpsValues, SwiGluAndCrossEntropyDefinitions) {
  auto ctx = ops::Context::cpu();
  Tensor gu = Tensor::from_floats({0.f, 1.f, -2.f, 3.f, 2.f, 0.5f}, {1, 6});
  Tensor y = Tensor::empty({1, 3}, DType::F32);
  ops::swiglu_forward(ctx, y, gu);
  auto silu = [](double g) { return g / (1 + std::exp(-g)); };
  EXPECT_NEAR(y.data<float>()[0], silu(0) * 3, 1e-6);
  EXPECT_NEAR(y.data<float>()[1], silu(1) * 2, 1e-6);
  EXPECT_NEAR(y.data<float>()[2], silu(-2) * 0.5, 1e-6);

  Tensor logits = Tensor::from_floats({1.f, 2.f, 3.f, 1000.f, 1000.f, 0.f}, {2, 3});
  Tensor losses = Tensor::empty({2}, DType::F32);
  ops::cross_entropy_forward(ctx, losses, logits, ints({0, 1}, {2}));
  EXPECT_NEAR(losses.data<float>()[0], std::log(std::exp(1.) + std::exp(2.) + std::exp(3.)) - 1, 1e-5);
  EXPECT_NEAR(losses.data<float>()[1], std::log(2.0), 1e-5);  // stable for large logits
  EXPECT_THROW(ops::cross_entropy_forward(ctx, losses, logits, ints({0, 3}, {2})), Error);
}

TEST(OpsValues, AdamWMatchesFormulaOverSteps) {
  auto ctx = ops::Context::cpu();
  Tensor w = Tensor::from_floats({1.f, -2.f, 0.5f}, {3});
  Tensor no_decay = Tensor::from_floats({1.f}, {1});
  std::vector<ops::AdamWTensor> params(2);
  params[0] = {.master = w, .grad = Tensor::zeros({3}, DType::F32), .exp_avg = Tensor::zeros({3}, DType::F32),
               .exp_avg_sq = Tensor::zeros({3}, DType::F32), .weight_decay_mult = 1.f};
  params[1] = {.master = no_decay, .grad = Tensor::zeros({1}, DType::F32), .exp_avg = Tensor::zeros({1}, DType::F32),
               .exp_avg_sq = Tensor::zeros({1}, DType::F32), .model = Tensor::empty({1}, DType::BF16),
               .weight_decay_mult = 0.f};
  double ref[4] = {1, -2, 0.5, 1}, m[4] = {}, v[4] = {};
  const double lr = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, gscale = 0.5;
  for (int step = 1; step <= 3; ++step) {
    const float g[4] = {0.3f * step, -0.1f, 2.f / step, 0.7f};
    for (int i = 0; i < 3; ++i) params[0].grad.data<float>()[i] = g[i];
    params[1].grad.data<float>()[0] = g[3];
    ops::AdamWParams p;
    p.lr = static_cast<float>(lr);
    p.beta1 = static_cast<float>(b1);
    p.beta2 = static_cast<float>(b2);
    p.eps = static_cast<float>(eps);
    p.weight_decay = static_cast<float>(wd);
    p.step = step;
    p.grad_scale = static_cast<float>(gscale);
    ops::adamw_step(ctx, params, p);
    for (int i = 0; i < 4; ++i) {
      const double gi = g[i] * gscale, decay = i < 3 ? wd : 0.0;
      ref[i] -= lr * decay * ref[i];
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      ref[i] -= lr * (m[i] / (1 - std::pow(b1, step))) / (std::sqrt(v[i] / (1 - std::pow(b2, step))) + eps);
    }
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(w.data<float>()[i], ref[i], 1e-6) << "step " << step;
    EXPECT_NEAR(no_decay.data<float>()[0], ref[3], 1e-6);
    EXPECT_EQ(params[1].model.to_float_vector()[0], bf16_bits_to_fp32(fp32_to_bf16_bits(no_decay.data<float>()[0])));
  }
}

TEST(OpsValues, SumOfSquaresAndZeros) {
  auto ctx = ops::Context::cpu();
  Tensor a = Tensor::from_floats({1.f, 0.f, -2.f}, {3});
  Tensor b = Tensor::from_floats({3.f, 0.f}, {2}, DType::BF16);
  EXPECT_DOUBLE_EQ(ops::sum_of_squares(ctx, {a, b}), 14.0);
  EXPECT_EQ(ops::count_zeros(ctx, {a, b}), 2);
  Tensor big = Tensor::zeros({100001}, DType::F32);
  big.data<float>()[77777] = NAN;
  EXPECT_TRUE(std::isnan(ops::sum_of_squares(ctx, {big})));
}

TEST(OpsValues, ErrorsNameTheOpAndTensor) {
  auto ctx = ops::Context::cpu();
  Tensor x = Tensor::zeros({2, 4}, DType::F32), w = Tensor::zeros({3, 5}, DType::F32);
  Tensor y = Tensor::empty({2, 3}, DType::F32);
  try {
    ops::linear_forward(ctx, y, x, w);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_forward"), std::string::npos) << e.what();
  }
  Tensor xb = Tensor::zeros({2, 4}, DType::BF16), yb = Tensor::empty({2, 4}, DType::BF16);
  Tensor rstd = Tensor::empty({2}, DType::F32), wb = Tensor::zeros({4}, DType::BF16);
  try {
    ops::rmsnorm_forward(ctx, yb, rstd, xb, wb, 1e-5f);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp32 on the CPU backend"), std::string::npos) << e.what();
  }
  Tensor out = Tensor::empty({4, 3}, DType::F32), table = Tensor::zeros({5, 3}, DType::F32);
  EXPECT_THROW(ops::embedding_forward(ctx, out, ints({0, 1, 5, 2}, {4}), table), Error);
#ifndef PRIMUS_WITH_CUDA
  EXPECT_THROW(ops::Context::cuda(), Error);
#endif
}

#include "ops/cpu/vec_math.h"

TEST(OpsValues, VectorExpIsWithinTwoUlpAndHandlesTails) {
  using namespace primus::ops::cpu;
  double worst = 0;
  for (float x = -87.f; x < 88.f; x += 0.00731f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(exp_approx(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2 * 5.97e-8);
  EXPECT_EQ(exp_approx(0.f), 1.f);
  EXPECT_LT(exp_approx(-std::numeric_limits<float>::infinity()), 1.3e-38f);  // saturates near 0
  for (int64_t n : {1, 7, 8, 9, 300}) {
    std::vector<float> x(static_cast<size_t>(n)), y(x.size());
    for (int64_t i = 0; i < n; ++i) x[i] = std::sin(0.37f * i) * 5.f;
    const float mx = row_max(x.data(), n);
    EXPECT_EQ(mx, *std::max_element(x.begin(), x.end())) << n;
    const double sum = exp_shift(x.data(), y.data(), n, mx);
    double ref = 0;
    for (int64_t i = 0; i < n; ++i) {
      ref += std::exp(static_cast<double>(x[i]) - mx);
      EXPECT_NEAR(y[i], std::exp(static_cast<double>(x[i]) - mx), 2e-7) << n;
    }
    EXPECT_NEAR(sum, ref, 1e-6 * ref) << n;
  }
}

// OpenBLAS 0.3.21 falls back to its SSE3 (Prescott) kernels on CPU models it does not know;
// the binaries restart themselves with the AVX2 / AVX-512 kernels the CPU has
// (ops/cpu/openblas_kernels.h): 3-4x faster CPU GEMMs.
TEST(OpenBlasKernels, TheCpusVectorUnitsAreUsed) {
  const std::string kernels = ops::cpu::openblas_kernels();
  if (kernels.empty()) GTEST_SKIP() << "the BLAS linked is not OpenBLAS";
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (forced != nullptr && std::string(forced) == "Prescott") GTEST_SKIP() << "OPENBLAS_CORETYPE=Prescott was set";
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) EXPECT_NE(kernels, "Prescott");
  EXPECT_EQ(ops::cpu::better_openblas_coretype(), nullptr) << "kernels " << kernels;
}
