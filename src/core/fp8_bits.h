// FP8 encodings (OCP 8-bit floating point, as Hopper's tensor cores and cuda_fp8.h define them)
// and their fp32 conversions, for the CPU reference of FP8 training (ops/fp8.h).
//
//   format  bits (sign|exp|mant)  bias  largest finite   smallest subnormal   inf / NaN
//   E4M3    1|4|3                 7     448  (0x7E)      2^-9                 no inf; S.1111.111 = NaN
//   E5M2    1|5|2                 15    57344 (0x7B)     2^-16                S.11111.00 = inf, .01-.11 NaN
//
// fp32 -> fp8 rounds to nearest, ties to even, and saturates: a finite value (or infinity)
// beyond the largest finite becomes the largest finite of its sign (cuda_fp8.h's
// __NV_SATFINITE); NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>

namespace primus {

struct Fp8Encoding {
  int exp_bits, mant_bits, bias;
  float max_finite;
};
inline constexpr Fp8Encoding kE4M3{4, 3, 7, 448.f};
inline constexpr Fp8Encoding kE5M2{5, 2, 15, 57344.f};

inline uint8_t fp32_to_fp8_bits(float f, const Fp8Encoding& e) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return sign | 0x7F;  // E4M3: S.1111.111, E5M2: S.11111.11
  float a = std::fabs(f);
  if (a >= e.max_finite) a = e.max_finite;  // saturate (inf included)
  const int min_normal_exp = 1 - e.bias;
  // The spacing of representable values around a: 2^(max(exp(a), min normal exp) - mant_bits).
  int ex = 0;
  std::frexp(a, &ex);  // a = m 2^ex, m in [0.5, 1): exp(a) = ex - 1
  const int qexp = (a == 0.f ? min_normal_exp : std::max(ex - 1, min_normal_exp)) - e.mant_bits;
  const float q = std::ldexp(1.f, qexp);
  float r = std::nearbyint(a / q) * q;  // exact division by a power of two; ties to even
  if (r > e.max_finite) r = e.max_finite;
  if (r == 0.f) return sign;
  std::frexp(r, &ex);
  const int rexp = ex - 1;
  if (rexp < min_normal_exp) {  // subnormal: mantissa counts units of 2^(min normal exp - mant_bits)
    const int mant = static_cast<int>(std::ldexp(r, e.mant_bits - min_normal_exp));
    return sign | static_cast<uint8_t>(mant);
  }
  const int mant = static_cast<int>(std::ldexp(r, e.mant_bits - rexp)) - (1 << e.mant_bits);
  return sign | static_cast<uint8_t>(((rexp + e.bias) << e.mant_bits) | mant);
}

inline float fp8_bits_to_fp32(uint8_t b, const Fp8Encoding& e) {
  const bool neg = (b & 0x80) != 0;
  const int exp_field = (b >> e.mant_bits) & ((1 << e.exp_bits) - 1);
  const int mant = b & ((1 << e.mant_bits) - 1);
  const int exp_max = (1 << e.exp_bits) - 1;
  float v;
  if (e.mant_bits == 3 && exp_field == exp_max && mant == 7) {
    v = NAN;
  } else if (e.mant_bits == 2 && exp_field == exp_max) {
    v = mant == 0 ? INFINITY : NAN;
  } else if (exp_field == 0) {
    v = std::ldexp(static_cast<float>(mant), 1 - e.bias - e.mant_bits);
  } else {
    v = std::ldexp(1.f + static_cast<float>(mant) / static_cast<float>(1 << e.mant_bits), exp_field - e.bias);
  }
  return neg ? -v : v;
}

}  // namespace primus
