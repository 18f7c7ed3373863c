#include "core/rng.h"

#include <cmath>
#include <numbers>

namespace primus {

std::array<uint32_t, 4> philox4x32(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // Philox multipliers
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

uint64_t stream_id(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {
// 24 random bits -> a float in [0, 1): exact, never 1.
inline float to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
}  // namespace

uint64_t CounterRng::bits64(uint64_t i) const {
  auto r = philox4x32(i, stream_, seed_);
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

float CounterRng::uniform(uint64_t i) const { return to_unit(philox4x32(i, stream_, seed_)[0]); }

float CounterRng::normal(uint64_t i) const {
  // Box-Muller on two words of the block for element i; (0,1] keeps log finite.
  auto r = philox4x32(i, stream_, seed_);
  const double u1 = (static_cast<double>(r[0]) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(r[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
}

void CounterRng::fill_normal(Tensor& t, float mean, float std, uint64_t offset) const {
  PRIMUS_CHECK(t.device() == Device::CPU, "fill_normal needs a CPU tensor, got {}", t.describe());
  const int64_t n = t.numel();
  if (t.dtype() == DType::F32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = mean + std * normal(offset + static_cast<uint64_t>(i));
  } else if (t.dtype() == DType::BF16) {
    uint16_t* p = t.data<uint16_t>();
    for (int64_t i = 0; i < n; ++i)
      p[i] = fp32_to_bf16_bits(mean + std * normal(offset + static_cast<uint64_t>(i)));
  } else {
    fail("fill_normal: unsupported dtype {}", dtype_name(t.dtype()));
  }
}

void CounterRng::fill_uniform(Tensor& t, float lo, float hi, uint64_t offset) const {
  PRIMUS_CHECK(t.device() == Device::CPU && t.dtype() == DType::F32,
               "fill_uniform needs a CPU fp32 tensor, got {}", t.describe());
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = lo + (hi - lo) * uniform(offset + static_cast<uint64_t>(i));
}

}  // namespace primus
