// On-device weight init (src/ops/cuda/init_normal.cu) against the host reference
// (core/rng.h CounterRng::fill_normal): the same Philox counters and Box-Muller, so every
// element must equal the host value rounded to the tensor's dtype (fp32: to within 1 ulp of
// the double-precision log/cos of two libraries; bf16: equal but for rare rounding ties).
// Sharded runs (a row-parallel slice: one run per row) map to their full-tensor indices. Then a
// whole Llama initialised on the GPU equals the CPU-initialised one rounded to bf16.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "gpu_test_util.h"
#include "model/decoder.h"
#include "ops/ops.h"

namespace primus {
namespace {

// Count of elements whose value differs from the reference by more than `ulps` units of the
// dtype's last place (bf16: 2^-8 relative, fp32: 2^-23).
int64_t count_off(const std::vector<float>& got, const std::vector<float>& ref, DType dt, double ulps) {
  const double unit = dt == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -23);
  int64_t off = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = ulps * unit * std::max(std::fabs(static_cast<double>(ref[i])), 1e-30);
    if (!(std::fabs(static_cast<double>(got[i]) - ref[i]) <= tol)) ++off;
  }
  return off;
}

TEST(CudaInitNormal, MatchesHostStreamAcrossShardRuns) {
  PRIMUS_REQUIRE_GPU();
  ops::Context ctx = ops::Context::cuda();
  const uint64_t seed = 1234, stream = stream_id("decoder.layers.7.mlp.linear_fc2.weight");
  const float std = 0.02f;
  // The (rows, cols/2) right half of a (rows, cols) tensor: one run per row.
  const int64_t rows = 300, cols = 2 * 1000, half = cols / 2;
  std::vector<ops::Backend::NormalRun> runs;
  for (int64_t r = 0; r < rows; ++r) runs.push_back({r * half, r * cols + half, half});
  const CounterRng rng(seed, stream);
  std::vector<float> ref(static_cast<size_t>(rows * half));
  for (const auto& r : runs)
    for (int64_t j = 0; j < r.numel; ++j)
      ref[static_cast<size_t>(r.local_offset + j)] = std * rng.normal(static_cast<uint64_t>(r.full_offset + j));
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor t = Tensor::empty({rows, half}, dt, Device::CUDA);
    gputest::poison(ctx, t);
    ops::fill_normal(ctx, t, seed, stream, 0.f, std, runs);
    const std::vector<float> got = t.to_float_vector();
    const std::vector<float> want = gputest::round_to(ref, dt);
    EXPECT_EQ(count_off(got, want, dt, dt == DType::F32 ? 1.0 : 0.0) > static_cast<int64_t>(want.size() / 10000), false)
        << dtype_name(dt) << ": more than 0.01% of the elements differ from the host stream";
    EXPECT_EQ(count_off(got, want, dt, 1.0), 0) << dtype_name(dt) << ": an element is more than one ulp off";
  }
  // A single long run (> one 64K piece) at an offset.
  Tensor big = Tensor::empty({200001}, DType::F32, Device::CUDA);
  gputest::poison(ctx, big);
  ops::fill_normal(ctx, big, seed, stream, 0.5f, 2.f, {{0, 12345, 200001}});
  std::vector<float> big_ref(200001);
  for (int64_t j = 0; j < 200001; ++j) big_ref[static_cast<size_t>(j)] = 0.5f + 2.f * rng.normal(12345 + j);
  EXPECT_EQ(count_off(big.to_float_vector(), big_ref, DType::F32, 1.0), 0);
}

TEST(CudaInitNormal, LlamaInitOnGpuEqualsCpuInit) {
  PRIMUS_REQUIRE_GPU();
  const ModelConfig c = gputest::tiny_llama("init-test", /*untied=*/true);
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  DecoderOptions host_opts, dev_opts;
  dev_opts.param_dtype = DType::BF16;
  DecoderModel on_cpu(c, cpu, host_opts), on_gpu(c, cuda, dev_opts);
  const auto a = on_cpu.parameters(), b = on_gpu.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]->name, b[i]->name);
    const std::vector<float> want = gputest::round_to(a[i]->value.to_float_vector(), DType::BF16);
    EXPECT_EQ(count_off(b[i]->value.to_float_vector(), want, DType::BF16, 1.0), 0) << a[i]->name;
  }
}

}  // namespace
}  // namespace primus
