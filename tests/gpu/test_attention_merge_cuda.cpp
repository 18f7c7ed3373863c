// Context parallel's pieces on the GPU (parallel/context_parallel.h builds ring attention from
// them; the ring itself is tested on MPI ranks, tests/parallel/test_context_parallel.cpp):
//   - attention_merge's CUDA kernel against the CPU reference (fp32 and bf16, a head dim that is
//     not a multiple of 32, rows with -inf on either side, a partial block at an offset);
//   - attention of query chunks over key chunks with the backend's kernels (cuDNN / flash /
//     simple, whichever the backend picks), merged, equals the attention over all the keys, and
//     the backward of each block given the FINAL out and lse sums to the full backward: the
//     contract ring attention relies on (the kernels' lse is the natural-log log-sum-exp and their
//     backward takes Delta from the out it is given).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "gpu_test_util.h"
#include "ops/ops.h"

using namespace primus;
using namespace primus::gputest;

namespace {

// Columns [j c, (j+1) c) of a (B, 2c, row) host vector.
std::vector<float> chunk(const std::vector<float>& x, int64_t B, int64_t c, int64_t row, int j) {
  std::vector<float> out(static_cast<size_t>(B * c * row));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < c; ++t)
      for (int64_t e = 0; e < row; ++e)
        out[static_cast<size_t>((b * c + t) * row + e)] = x[static_cast<size_t>((b * 2 * c + j * c + t) * row + e)];
  return out;
}
// Columns [j c, (j+1) c) of an lse (B, H, 2c).
std::vector<float> lse_chunk(const std::vector<float>& x, int64_t BH, int64_t c, int j) {
  std::vector<float> out(static_cast<size_t>(BH * c));
  for (int64_t r = 0; r < BH; ++r)
    for (int64_t t = 0; t < c; ++t) out[static_cast<size_t>(r * c + t)] = x[static_cast<size_t>(r * 2 * c + j * c + t)];
  return out;
}

}  // namespace

TEST(AttentionMergeCuda, MatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu();
  ops::Context gpu_ctx = ops::Context::cuda();
  auto rng = fresh_rng();
  const int64_t B = 2, T = 37, H = 3, Dv = 72, Tp = 20, t0 = 9;
  for (DType dt : {DType::F32, DType::BF16}) {
    const std::vector<float> acc = round_to(randn(rng, B * T * H * Dv), dt), part = round_to(randn(rng, B * Tp * H * Dv), dt);
    std::vector<float> acc_lse = randn(rng, B * H * T, 2.f, false), part_lse = randn(rng, B * H * Tp, 2.f, false);
    const float ninf = -std::numeric_limits<float>::infinity();
    acc_lse[static_cast<size_t>(0 * T + t0 + 1)] = ninf;      // nothing accumulated yet
    part_lse[static_cast<size_t>(1 * Tp + 3)] = ninf;         // the part saw no key
    Tensor c_out = cpu_f32(acc, {B, T, H, Dv}), c_lse = cpu_f32(acc_lse, {B, H, T});
    ops::attention_merge(cpu, c_out, c_lse, cpu_f32(part, {B, Tp, H, Dv}), cpu_f32(part_lse, {B, H, Tp}), t0);
    Tensor g_out = gpu(acc, {B, T, H, Dv}, dt), g_lse = gpu(acc_lse, {B, H, T}, DType::F32);
    ops::attention_merge(gpu_ctx, g_out, g_lse, gpu(part, {B, Tp, H, Dv}, dt), gpu(part_lse, {B, H, Tp}, DType::F32),
                         t0);
    gpu_ctx.synchronize();
    const double tol = dt == DType::F32 ? 1e-6 : 8e-3;
    expect_close("attention_merge out " + std::string(dtype_name(dt)), g_out, c_out, tol);
    expect_close("attention_merge lse " + std::string(dtype_name(dt)), g_lse, c_lse, 1e-6);
  }
}

TEST(AttentionMergeCuda, BlocksMergedEqualFullAttentionForwardAndBackward) {
  PRIMUS_REQUIRE_GPU();
  ops::Context ctx = ops::Context::cuda();
  auto rng = fresh_rng();
  const int64_t B = 2, c = 128, Hq = 8, Hkv = 2, D = 64, T = 2 * c;
  const DType dt = DType::BF16;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const std::vector<float> q = randn(rng, B * T * Hq * D), k = randn(rng, B * T * Hkv * D),
                           v = randn(rng, B * T * Hkv * D), dout = randn(rng, B * T * Hq * D);
  // The reference: every query over all 2c keys (no mask: the blocks a ring step sees in full).
  Tensor out = Tensor::empty({B, T, Hq, D}, dt, Device::CUDA), lse = Tensor::empty({B, Hq, T}, DType::F32, Device::CUDA);
  const Tensor gq = gpu(q, {B, T, Hq, D}, dt), gk = gpu(k, {B, T, Hkv, D}, dt), gv = gpu(v, {B, T, Hkv, D}, dt),
               gdo = gpu(dout, {B, T, Hq, D}, dt);
  ops::attention_forward(ctx, out, lse, gq, gk, gv, scale, false);
  Tensor dq = Tensor::empty(gq.shape(), dt, Device::CUDA), dk = Tensor::empty(gk.shape(), dt, Device::CUDA),
         dv = Tensor::empty(gv.shape(), dt, Device::CUDA);
  ops::attention_backward(ctx, dq, dk, dv, gdo, gq, gk, gv, out, lse, scale, false);
  ctx.synchronize();
  const std::vector<float> out_h = out.to_float_vector(), lse_h = lse.to_float_vector();
  const std::vector<float> dq_h = dq.to_float_vector(), dk_h = dk.to_float_vector(), dv_h = dv.to_float_vector();
  const Shape qs{B, c, Hq, D}, ks{B, c, Hkv, D};
  std::vector<float> dk_sum[2], dv_sum[2];
  for (int j = 0; j < 2; ++j) {
    dk_sum[j].assign(static_cast<size_t>(B * c * Hkv * D), 0.f);
    dv_sum[j].assign(static_cast<size_t>(B * c * Hkv * D), 0.f);
  }
  for (int i = 0; i < 2; ++i) {  // query chunk i over key chunks 0 then 1, merged
    const Tensor qi = gpu(chunk(q, B, c, Hq * D, i), qs, dt);
    Tensor acc = Tensor::empty(qs, dt, Device::CUDA), acc_lse = Tensor::empty({B, Hq, c}, DType::F32, Device::CUDA);
    Tensor part = Tensor::empty(qs, dt, Device::CUDA), part_lse = Tensor::empty({B, Hq, c}, DType::F32, Device::CUDA);
    for (int j = 0; j < 2; ++j) {
      const Tensor kj = gpu(chunk(k, B, c, Hkv * D, j), ks, dt), vj = gpu(chunk(v, B, c, Hkv * D, j), ks, dt);
      ops::attention_forward(ctx, j == 0 ? acc : part, j == 0 ? acc_lse : part_lse, qi, kj, vj, scale, false);
      if (j == 1) ops::attention_merge(ctx, acc, acc_lse, part, part_lse, 0);
    }
    ctx.synchronize();
    expect_close("merged out, query chunk " + std::to_string(i), acc, chunk(out_h, B, c, Hq * D, i), 2e-2);
    expect_close("merged lse, query chunk " + std::to_string(i), acc_lse, lse_chunk(lse_h, B * Hq, c, i), 1e-3);
    // Backward of each block with the full attention's out and lse.
    const Tensor oi = gpu(chunk(out_h, B, c, Hq * D, i), qs, dt), li = gpu(lse_chunk(lse_h, B * Hq, c, i), {B, Hq, c}, DType::F32);
    const Tensor doi = gpu(chunk(dout, B, c, Hq * D, i), qs, dt);
    std::vector<float> dq_sum(static_cast<size_t>(B * c * Hq * D), 0.f);
    for (int j = 0; j < 2; ++j) {
      const Tensor kj = gpu(chunk(k, B, c, Hkv * D, j), ks, dt), vj = gpu(chunk(v, B, c, Hkv * D, j), ks, dt);
      Tensor bq = Tensor::empty(qs, dt, Device::CUDA), bk = Tensor::empty(ks, dt, Device::CUDA),
             bv = Tensor::empty(ks, dt, Device::CUDA);
      ops::attention_backward(ctx, bq, bk, bv, doi, qi, kj, vj, oi, li, scale, false);
      ctx.synchronize();
      const std::vector<float> a = bq.to_float_vector(), bkh = bk.to_float_vector(), bvh = bv.to_float_vector();
      for (size_t e = 0; e < a.size(); ++e) dq_sum[e] += a[e];
      for (size_t e = 0; e < bkh.size(); ++e) dk_sum[j][e] += bkh[e], dv_sum[j][e] += bvh[e];
    }
    expect_close("block dq summed, query chunk " + std::to_string(i), cpu_f32(dq_sum, qs), chunk(dq_h, B, c, Hq * D, i),
                 3e-2);
  }
  for (int j = 0; j < 2; ++j) {
    expect_close("block dk summed, key chunk " + std::to_string(j), cpu_f32(dk_sum[j], ks), chunk(dk_h, B, c, Hkv * D, j),
                 3e-2);
    expect_close("block dv summed, key chunk " + std::to_string(j), cpu_f32(dv_sum[j], ks), chunk(dv_h, B, c, Hkv * D, j),
                 3e-2);
  }
}
