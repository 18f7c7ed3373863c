// Vectorized float math for the CPU backend's softmax, cross-entropy and SwiGLU loops.
//
// std::exp is a library call per element and keeps those loops scalar (the compiler may
// not vectorize comparisons or calls under strict IEEE flags), so exp is written here on
// 8-float GCC/Clang vector types (portable: they lower to whatever the target has, AVX2
// with -march=x86-64-v3). Rows are processed 8 at a time; a tail is padded to a full
// vector, so every element goes through the same arithmetic.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>

namespace primus::ops::cpu {

using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));

inline f32x8 splat(float v) { return f32x8{} + v; }
inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }
// The first n < 8 lanes from p, the others `pad`.
inline f32x8 load_tail(const float* p, int64_t n, float pad) {
  f32x8 v = splat(pad);
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
inline void store_tail(float* p, f32x8 v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

// exp(x) within 2 ulp of the correctly rounded value for x in [-87.3, 88]; saturates
// outside (exp(-87.3) ~ 1.2e-38 below, exp(88) above): softmax and cross-entropy call it
// on x - max(x) <= 0, where that tail is far below the resolution of the row sum.
// Method (Cody-Waite / Cephes): n = round(x / ln 2), r = x - n ln 2 with ln 2 split into
// two constants so r stays exact, exp(r) on |r| <= ln2/2 by a degree-6 polynomial, then
// times 2^n built in the exponent bits.
inline f32x8 exp8(f32x8 x) {
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  // round to nearest: adding 1.5 * 2^23 pushes the fraction bits out of the mantissa
  const f32x8 n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const f32x8 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  f32x8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
  return p * std::bit_cast<f32x8>(bits);
}

inline float exp_approx(float x) { return exp8(splat(x))[0]; }

// max over x[0, n)
inline float row_max(const float* x, int64_t n) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  f32x8 m = splat(kNegInf);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const f32x8 v = load8(x + j);
    m = v > m ? v : m;
  }
  const f32x8 v = load_tail(x + j, n - j, kNegInf);
  m = v > m ? v : m;
  float out = m[0];
  for (int i = 1; i < 8; ++i) out = std::max(out, m[i]);
  return out;
}

// out[j] = exp(in[j] - shift) for j < n (in may equal out); returns the sum of the
// outputs, accumulated in float within blocks of 256 elements and in double across them.
inline double exp_shift(const float* in, float* out, int64_t n, float shift) {
  double total = 0;
  f32x8 acc = splat(0.f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const f32x8 v = exp8(load8(in + j) - shift);
    store8(out + j, v);
    acc += v;
    if ((j & 255) == 248) {
      for (int i = 0; i < 8; ++i) total += acc[i];
      acc = splat(0.f);
    }
  }
  if (j < n) {
    const f32x8 v = exp8(load_tail(in + j, n - j, shift) - shift);
    store_tail(out + j, v, n - j);
    for (int64_t i = 0; i < n - j; ++i) total += v[i];
  }
  for (int i = 0; i < 8; ++i) total += acc[i];
  return total;
}

// 1 / (1 + exp(-x)), 8 lanes
inline f32x8 sigmoid8(f32x8 x) { return 1.f / (1.f + exp8(-x)); }

}  // namespace primus::ops::cpu
