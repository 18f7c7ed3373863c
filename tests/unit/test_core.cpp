// Core: tensors, dtype conversions, the counter-based RNG, the arena, string helpers.
#include <gtest/gtest.h>

#include <cmath>

#include "core/arena.h"
#include "core/rng.h"
#include "core/strings.h"
#include "core/tensor.h"

using namespace primus;

TEST(Tensor, ViewRowsAndCopy) {
  Tensor t = Tensor::from_floats({0, 1, 2, 3, 4, 5}, {3, 2});
  EXPECT_EQ(t.numel(), 6);
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), (Shape{2, 3}));
  Tensor r = t.rows(1, 3);
  EXPECT_EQ(r.shape(), (Shape{2, 2}));
  EXPECT_EQ(r.data<float>()[0], 2.f);
  Tensor c = t.clone();
  c.data<float>()[0] = 42.f;
  EXPECT_EQ(t.data<float>()[0], 0.f);
  EXPECT_THROW(t.view({4, 2}), Error);
  EXPECT_THROW(t.rows(2, 4), Error);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_bits_to_fp32(fp32_to_bf16_bits(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_bits_to_fp32(fp32_to_bf16_bits(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_bits_to_fp32(fp32_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_bits_to_fp32(fp32_to_bf16_bits(NAN))));
}

TEST(DType, Fp16RoundTrip) {
  for (float f : {0.f, 1.f, -2.5f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, 1e-3f}) {
    EXPECT_NEAR(fp16_bits_to_fp32(fp32_to_fp16_bits(f)), f, std::fabs(f) * 1e-3f + 1e-8f) << f;
  }
  EXPECT_TRUE(std::isinf(fp16_bits_to_fp32(fp32_to_fp16_bits(1e6f))));
}

TEST(Rng, PhiloxKnownAnswer) {
  // Random123's published known-answer test for philox4x32_10: counter 0, key 0.
  auto r = philox4x32(0, 0, 0);
  EXPECT_EQ(r[0], 0x6627e8d5u);
  EXPECT_EQ(r[1], 0xe169c58du);
  EXPECT_EQ(r[2], 0xbc57ac4cu);
  EXPECT_EQ(r[3], 0x9b00dbd8u);
}

TEST(Rng, ShardsSeeTheirSliceOfTheFullTensor) {
  CounterRng rng(1234, stream_id("layer.0.weight"));
  Tensor full = Tensor::empty({8, 4}, DType::F32);
  rng.fill_normal(full, 0.f, 0.02f);
  Tensor shard = Tensor::empty({4, 4}, DType::F32);
  rng.fill_normal(shard, 0.f, 0.02f, /*offset=*/16);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(shard.data<float>()[i], full.data<float>()[16 + i]);
}

TEST(Rng, NormalMoments) {
  CounterRng rng(7, 0);
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = rng.normal(i);
    s += x;
    s2 += x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
}

TEST(Arena, BumpsAlignsAndResets) {
  Arena arena(Device::CPU, 1 << 12);
  Tensor a = arena.alloc({10}, DType::F32);
  Tensor b = arena.alloc({10}, DType::F32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % 256, 0u);
  EXPECT_NE(a.raw(), b.raw());
  Tensor big = arena.alloc({4096}, DType::F32);  // larger than a chunk: its own chunk
  EXPECT_EQ(big.numel(), 4096);
  const size_t hw = arena.high_water_bytes();
  arena.reset();
  Tensor c = arena.alloc({10}, DType::F32);
  EXPECT_EQ(c.raw(), a.raw());
  EXPECT_EQ(arena.high_water_bytes(), hw);
}

TEST(Strings, NearestName) {
  std::vector<std::string> names = {"train", "preprocess", "convert", "generate"};
  EXPECT_EQ(nearest_name("trian", names), "train");
  EXPECT_EQ(nearest_name("preproces", names), "preprocess");
  EXPECT_EQ(nearest_name("zzzzzzzz", names), "");
  EXPECT_EQ(did_you_mean("genrate", names), ", did you mean 'generate'?");
  // A short option inside a typo is no hint: "--hf-dri" means --hf-dir, not -h.
  std::vector<std::string> options = {"-h", "--help", "--hf-dir", "--output", "--force"};
  EXPECT_EQ(nearest_name("--hf-dri", options), "--hf-dir");
  EXPECT_EQ(nearest_name("--outptu", options), "--output");
}
