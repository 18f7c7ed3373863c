// FP8 (core/fp8_bits.h, ops/fp8.h) on the CPU, each part against a reference built from its
// definition rather than from the code under test:
//   - the encodings: every fp32 value rounds to the nearest of the format's finite codes (ties
//     to the code with an even mantissa), found by brute force over the decoded code table,
//     and saturates beyond the largest finite;
//   - the casts' scales and amax bookkeeping under both recipes, and delayed scaling's update
//     (history shift, max vs most recent, margin, amax 0 keeps the scale);
//   - an FP8 linear's forward and backward = plain-loop GEMMs (double sums) over the
//     quantised-then-dequantised operands, and within a few percent of the fp32 linear.
// The CUDA kernels are checked against these in tests/gpu/test_cuda_fp8.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/arena.h"
#include "core/fp8_bits.h"
#include "ops/fp8.h"
#include "ops/ops.h"

namespace primus {
namespace {

struct Code {
  float value;
  uint8_t bits;
};

std::vector<Code> finite_codes(const Fp8Encoding& e) {
  std::vector<Code> out;
  for (int b = 0; b < 256; ++b) {
    const float v = fp8_bits_to_fp32(static_cast<uint8_t>(b), e);
    if (std::isfinite(v)) out.push_back({v, static_cast<uint8_t>(b)});
  }
  return out;
}

// The nearest finite code by brute force; a tie goes to the even mantissa; beyond the largest
// finite: the largest finite of that sign.
float nearest(float x, const Fp8Encoding& e, const std::vector<Code>& codes) {
  if (std::fabs(x) >= e.max_finite) return std::copysign(e.max_finite, x);
  float best = 0.f;
  double best_d = INFINITY;
  uint8_t best_bits = 0;
  for (const Code& c : codes) {
    const double d = std::fabs(static_cast<double>(c.value) - static_cast<double>(x));
    if (d < best_d || (d == best_d && (c.bits & 1) == 0 && (best_bits & 1) == 1)) {
      best = c.value;
      best_d = d;
      best_bits = c.bits;
    }
  }
  return best;
}

TEST(Fp8Bits, KnownCodes) {
  EXPECT_EQ(fp32_to_fp8_bits(448.f, kE4M3), 0x7E);
  EXPECT_EQ(fp32_to_fp8_bits(-448.f, kE4M3), 0xFE);
  EXPECT_EQ(fp32_to_fp8_bits(1.f, kE4M3), 0x38);
  EXPECT_EQ(fp32_to_fp8_bits(std::ldexp(1.f, -9), kE4M3), 0x01);  // smallest subnormal
  EXPECT_EQ(fp32_to_fp8_bits(57344.f, kE5M2), 0x7B);
  EXPECT_EQ(fp32_to_fp8_bits(1.f, kE5M2), 0x3C);
  EXPECT_EQ(fp32_to_fp8_bits(std::ldexp(1.f, -16), kE5M2), 0x01);
  EXPECT_EQ(fp32_to_fp8_bits(1e6f, kE4M3), 0x7E);           // saturates
  EXPECT_EQ(fp32_to_fp8_bits(-INFINITY, kE5M2), 0xFB);      // saturates, no inf
  EXPECT_TRUE(std::isnan(fp8_bits_to_fp32(fp32_to_fp8_bits(NAN, kE4M3), kE4M3)));
  EXPECT_TRUE(std::isnan(fp8_bits_to_fp32(fp32_to_fp8_bits(NAN, kE5M2), kE5M2)));
  EXPECT_EQ(fp8_bits_to_fp32(0x7C, kE5M2), INFINITY);
  EXPECT_TRUE(std::isnan(fp8_bits_to_fp32(0x7F, kE4M3)));
  EXPECT_EQ(fp8_bits_to_fp32(0x7E, kE4M3), 448.f);
}

TEST(Fp8Bits, EveryValueRoundsToTheNearestCode) {
  for (const Fp8Encoding* e : {&kE4M3, &kE5M2}) {
    const std::vector<Code> codes = finite_codes(*e);
    // Every code decodes and encodes back to itself (signed zeros and NaNs aside).
    for (const Code& c : codes) {
      if (c.value != 0.f) {
        EXPECT_EQ(fp32_to_fp8_bits(c.value, *e), c.bits) << c.value;
      }
    }
    // Random magnitudes across and beyond the range, and the midpoints between neighbours (ties).
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> expo(-22.f, 18.f), sign(-1.f, 1.f);
    std::vector<float> xs;
    for (int i = 0; i < 20000; ++i) xs.push_back(std::copysign(std::exp2(expo(rng)), sign(rng)));
    std::vector<float> sorted;
    for (const Code& c : codes) sorted.push_back(c.value);
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i + 1 < sorted.size(); ++i) xs.push_back(0.5f * (sorted[i] + sorted[i + 1]));
    for (float x : xs) {
      const float got = fp8_bits_to_fp32(fp32_to_fp8_bits(x, *e), *e);
      const float want = nearest(x, *e, codes);
      ASSERT_EQ(got, want) << "x = " << x << " (" << (e == &kE4M3 ? "E4M3" : "E5M2") << ")";
    }
  }
}

// ---- casts and scaling ------------------------------------------------------------------

Tensor random_tensor(Shape shape, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, scale);
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = n(rng);
  return t;
}

float amax_of(const Tensor& t) {
  float m = 0.f;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.data<float>()[i]));
  return m;
}

Tensor fresh_meta(const ops::Fp8Options& o) {
  Tensor m = Tensor::zeros({3, o.meta_cols()}, DType::F32);
  for (int r = 0; r < 3; ++r) m.data<float>()[r * o.meta_cols() + o.scale_col()] = 1.f;
  for (int r = 0; r < 3; ++r) m.data<float>()[r * o.meta_cols() + o.scale_inv_col()] = 1.f;
  return m;
}

float& at(Tensor& meta, const ops::Fp8Options& o, int role, int col) {
  return meta.data<float>()[role * o.meta_cols() + col];
}

TEST(Fp8Cast, TensorwiseScalesByTheTensorsAmaxAndTransposes) {
  ops::Context ctx = ops::Context::cpu();
  ops::Fp8Options o;
  o.recipe = ops::Fp8Recipe::Tensorwise;
  o.margin = 1;
  Tensor meta = fresh_meta(o);
  const Tensor x = random_tensor({16, 32}, 3.f, 1);
  Tensor q = Tensor::empty({16, 32}, DType::F8E4M3), qt = Tensor::empty({32, 16}, DType::F8E4M3);
  ops::fp8_cast(ctx, o, meta, ops::kFp8Input, q, qt, x, false);
  const float amax = amax_of(x), s = 448.f / amax / 2.f;
  EXPECT_EQ(at(meta, o, ops::kFp8Input, 0), amax);
  EXPECT_FLOAT_EQ(at(meta, o, ops::kFp8Input, o.scale_col()), s);
  EXPECT_FLOAT_EQ(at(meta, o, ops::kFp8Input, o.scale_inv_col()), 1.f / s);
  // 1/scale on a 16-byte boundary (cuBLASLt's scale pointer), rows a multiple of 16 bytes.
  EXPECT_EQ(o.scale_inv_col() % 4, 0);
  EXPECT_EQ(o.meta_cols() % 4, 0);
  for (int64_t r = 0; r < 16; ++r)
    for (int64_t c = 0; c < 32; ++c) {
      const uint8_t b = q.data<uint8_t>()[r * 32 + c];
      EXPECT_EQ(b, fp32_to_fp8_bits(x.data<float>()[r * 32 + c] * s, kE4M3));
      EXPECT_EQ(b, qt.data<uint8_t>()[c * 16 + r]);
    }
}

TEST(Fp8Cast, DelayedUsesTheStoredScaleRecordsAmaxAndUpdates) {
  ops::Context ctx = ops::Context::cpu();
  ops::Fp8Options o;
  o.amax_history_len = 3;
  o.format = ops::Fp8Format::Hybrid;
  Tensor meta = fresh_meta(o);
  at(meta, o, ops::kFp8GradOutput, o.scale_col()) = 4.f;
  const Tensor dy = random_tensor({16, 16}, 0.01f, 2);
  Tensor q = Tensor::empty({16, 16}, DType::F8E5M2), none;
  ops::fp8_cast(ctx, o, meta, ops::kFp8GradOutput, q, none, dy, true);
  for (int64_t i = 0; i < dy.numel(); ++i)
    ASSERT_EQ(q.data<uint8_t>()[i], fp32_to_fp8_bits(dy.data<float>()[i] * 4.f, kE5M2));
  EXPECT_EQ(at(meta, o, ops::kFp8GradOutput, 0), amax_of(dy));
  // No record: the history stays.
  const Tensor big = random_tensor({16, 16}, 1.f, 3);
  ops::fp8_cast(ctx, o, meta, ops::kFp8GradOutput, q, none, big, false);
  EXPECT_EQ(at(meta, o, ops::kFp8GradOutput, 0), amax_of(dy));

  // The update: most_recent takes h_0, max the window; history shifts; amax 0 keeps the scale.
  Tensor metas = Tensor::zeros({1, 3, o.meta_cols()}, DType::F32);
  Tensor m = metas.view({3, o.meta_cols()});
  auto set_row = [&](int role, std::vector<float> h, float scale) {
    for (int j = 0; j < 3; ++j) at(m, o, role, j) = h[static_cast<size_t>(j)];
    at(m, o, role, o.scale_col()) = scale;
    at(m, o, role, o.scale_inv_col()) = 1.f / scale;
  };
  set_row(ops::kFp8Input, {2.f, 8.f, 1.f}, 1.f);
  set_row(ops::kFp8Weight, {0.f, 0.f, 0.f}, 5.f);
  set_row(ops::kFp8GradOutput, {1e-3f, 0.f, 0.f}, 1.f);
  ops::Fp8Options recent = o, mx = o;
  mx.amax_max = true;
  Tensor copy = metas.clone();
  ops::fp8_update_scales(ctx, recent, metas);
  EXPECT_FLOAT_EQ(at(m, o, ops::kFp8Input, o.scale_col()), 448.f / 2.f);
  EXPECT_EQ(at(m, o, ops::kFp8Input, 0), 0.f);
  EXPECT_EQ(at(m, o, ops::kFp8Input, 1), 2.f);
  EXPECT_EQ(at(m, o, ops::kFp8Input, 2), 8.f);
  EXPECT_EQ(at(m, o, ops::kFp8Weight, o.scale_col()), 5.f);  // nothing seen: kept
  EXPECT_FLOAT_EQ(at(m, o, ops::kFp8GradOutput, o.scale_col()), 57344.f / 1e-3f);  // hybrid: E5M2's range
  Tensor cm = copy.view({3, o.meta_cols()});
  mx.margin = 2;
  ops::fp8_update_scales(ctx, mx, copy);
  EXPECT_FLOAT_EQ(at(cm, o, ops::kFp8Input, o.scale_col()), 448.f / 8.f / 4.f);
  EXPECT_FLOAT_EQ(at(cm, o, ops::kFp8Input, o.scale_inv_col()), 4.f * 8.f / 448.f);
}

// ---- the linear -----------------------------------------------------------------------

// q(t * s) / s per element: the values an FP8 GEMM multiplies.
std::vector<double> dequantized(const Tensor& t, float s, const Fp8Encoding& e) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    out[static_cast<size_t>(i)] =
        static_cast<double>(fp8_bits_to_fp32(fp32_to_fp8_bits(t.data<float>()[i] * s, e), e)) / s;
  return out;
}

// (M,N) = a (M,K) b (N,K)^T with a, b given row-major with the named strides.
std::vector<double> gemm_nt(const std::vector<double>& a, const std::vector<double>& b, int64_t M, int64_t N,
                            int64_t K, bool a_t = false, bool b_t = false) {
  std::vector<double> out(static_cast<size_t>(M * N), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += a[static_cast<size_t>(a_t ? k * M + m : m * K + k)] * b[static_cast<size_t>(b_t ? k * N + n : n * K + k)];
      out[static_cast<size_t>(m * N + n)] = acc;
    }
  return out;
}

double rel_err(const Tensor& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double d = got.data<float>()[i] - want[static_cast<size_t>(i)];
    num += d * d;
    den += want[static_cast<size_t>(i)] * want[static_cast<size_t>(i)];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(Fp8Linear, ForwardAndBackwardAreTheGemmsOfTheQuantisedOperands) {
  ops::Context ctx = ops::Context::cpu();
  Arena arena(Device::CPU);
  for (const ops::Fp8Format format : {ops::Fp8Format::Hybrid, ops::Fp8Format::E4M3}) {
    ops::Fp8Options o;
    o.recipe = ops::Fp8Recipe::Tensorwise;
    o.format = format;
    ops::Fp8Linear l;
    l.options = &o;
    l.meta = fresh_meta(o);
    const int64_t M = 48, K = 32, N = 16;
    const Tensor x = random_tensor({M, K}, 1.f, 11), w = random_tensor({N, K}, 0.05f, 12),
                 dy = random_tensor({M, N}, 1e-4f, 13), res = random_tensor({M, N}, 1.f, 14);
    Tensor y = Tensor::empty({M, N}, DType::F32);
    ops::fp8_linear_forward(ctx, l, arena, y, x, w, &res, true);
    const float sx = 448.f / amax_of(x), sw = 448.f / amax_of(w);
    const Fp8Encoding& ge = format == ops::Fp8Format::Hybrid ? kE5M2 : kE4M3;
    const float sdy = ge.max_finite / amax_of(dy);
    const std::vector<double> xq = dequantized(x, sx, kE4M3), wq = dequantized(w, sw, kE4M3),
                              dyq = dequantized(dy, sdy, ge);
    std::vector<double> want = gemm_nt(xq, wq, M, N, K);
    for (int64_t i = 0; i < M * N; ++i) want[static_cast<size_t>(i)] += res.data<float>()[i];
    EXPECT_LT(rel_err(y, want), 1e-6);

    // Against the fp32 linear: FP8's 3 mantissa bits cost a few percent.
    Tensor y32 = Tensor::empty({M, N}, DType::F32);
    ops::linear_forward(ctx, y32, x, w);
    std::vector<double> exact(static_cast<size_t>(M * N));
    for (int64_t i = 0; i < M * N; ++i) exact[static_cast<size_t>(i)] = y32.data<float>()[i];
    Tensor yq = Tensor::empty({M, N}, DType::F32);
    ops::fp8_linear_forward(ctx, l, arena, yq, x, w, nullptr, true);
    EXPECT_LT(rel_err(yq, exact), 0.06);

    Tensor dx = Tensor::empty({M, K}, DType::F32), dw = Tensor::zeros({N, K}, DType::F32);
    dw.data<float>()[5] = 1.f;  // accumulate: += onto what is there
    ops::fp8_linear_backward(ctx, l, arena, &dx, dw, dy, x, w, true);
    // dx = dy @ w: as (M,K) = dyq (M,N) @ (wq^T)(K,N)^T with wq (N,K) read transposed.
    EXPECT_LT(rel_err(dx, gemm_nt(dyq, wq, M, K, N, false, true)), 1e-6);
    std::vector<double> dw_want = gemm_nt(dyq, xq, N, K, M, true, true);
    dw_want[5] += 1.0;
    EXPECT_LT(rel_err(dw, dw_want), 1e-6);
    ops::fp8_linear_backward(ctx, l, arena, &dx, dw, dy, x, w, false);  // written
    dw_want[5] -= 1.0;
    EXPECT_LT(rel_err(dw, dw_want), 1e-6);
  }
}

TEST(Fp8Linear, WeightsAreCastOncePerGeneration) {
  ops::Context ctx = ops::Context::cpu();
  Arena arena(Device::CPU);
  ops::Fp8Options o;
  ops::Fp8Linear l;
  l.options = &o;
  l.meta = fresh_meta(o);
  Tensor w = random_tensor({16, 16}, 1.f, 21);
  const Tensor x = random_tensor({16, 16}, 1.f, 22);
  Tensor y1 = Tensor::empty({16, 16}, DType::F32), y2 = Tensor::empty({16, 16}, DType::F32);
  ops::fp8_linear_forward(ctx, l, arena, y1, x, w, nullptr, true);
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 0.5f;
  ops::fp8_linear_forward(ctx, l, arena, y2, x, w, nullptr, true);  // same generation: the cached cast
  for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_EQ(y1.data<float>()[i], y2.data<float>()[i]);
  ++o.weights_generation;  // the weights changed: re-cast, as a fresh linear casts them
  ops::fp8_linear_forward(ctx, l, arena, y2, x, w, nullptr, true);
  ops::Fp8Linear fresh;
  fresh.options = &o;
  fresh.meta = fresh_meta(o);
  Tensor y3 = Tensor::empty({16, 16}, DType::F32);
  ops::fp8_linear_forward(ctx, fresh, arena, y3, x, w, nullptr, true);
  for (int64_t i = 0; i < y1.numel(); ++i) ASSERT_EQ(y2.data<float>()[i], y3.data<float>()[i]);
  EXPECT_NE(y1.data<float>()[0], y2.data<float>()[0]);
}

}  // namespace
}  // namespace primus
