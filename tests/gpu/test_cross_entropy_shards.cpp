// The CUDA kernels of the vocabulary-parallel cross-entropy (src/ops/cuda/cross_entropy_shards.cu)
// on one GPU, P ranks simulated by slicing one full (N, P*Vs) logits matrix into P column slices:
//   stats of each slice   vs Backend's host reference (src/ops/cross_entropy_shards.cpp) on the
//                         CPU, fp32 tensors holding the same bf16-rounded values;
//   finish (loss, grad)   vs the same reference fed the reference's gathered stats, AND vs the
//                         unsharded full-vocabulary ops::cross_entropy_fused on the CPU (an
//                         independent path: one pass over whole rows, no (max, sum) merging);
//   finish without grad   losses only.
// Rows whose label is ignored on every rank (target -1) must get a finite loss (the reference's
// lse) and dloss * softmax as gradient. Outputs are poisoned with NaN before each op; the
// gradient is written in place over the logits, so a missed element keeps its logit and fails.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace primus {
namespace {

using gputest::cpu_f32;
using gputest::cpu_i32;
using gputest::expect_close;
using gputest::fresh_rng;
using gputest::gpu;
using gputest::gpu_i32;
using gputest::poison;
using gputest::randn;

constexpr double kStatsTol = 1e-5;  // fp32 (max, sum, target logit) of identical inputs
constexpr double kLossTol = 1e-5;   // as tests/gpu/test_cuda_ops.cpp's cross_entropy checks
constexpr double kBf16Tol = 1e-2;   // gradient rounded to bf16 (relative step 2^-8)
constexpr double kF32GradTol = 1e-4;

// Columns [c0, c0 + w) of a row-major (N, V) matrix.
std::vector<float> column_slice(const std::vector<float>& m, int64_t N, int64_t V, int64_t c0, int64_t w) {
  std::vector<float> out(static_cast<size_t>(N * w));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < w; ++j) out[static_cast<size_t>(i * w + j)] = m[static_cast<size_t>(i * V + c0 + j)];
  return out;
}

// Only the rows listed.
std::vector<float> pick_rows(const std::vector<float>& m, int64_t width, const std::vector<int64_t>& rows) {
  std::vector<float> out;
  for (int64_t r : rows) out.insert(out.end(), m.begin() + r * width, m.begin() + (r + 1) * width);
  return out;
}

struct Case {
  int64_t N, Vs, P;
  DType dt;
};

void run_case(const Case& cs, std::mt19937_64& rng) {
  const int64_t N = cs.N, Vs = cs.Vs, P = cs.P, V = P * Vs;
  const std::string tag = fmt::format("N={} Vs={} P={} {}", N, Vs, P, dtype_name(cs.dt));
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();

  // Logits with a spread of several units (softmax far from uniform), rounded to the kernel's
  // dtype so the CPU reference sees the very numbers the GPU reads.
  const std::vector<float> full = gputest::round_to(randn(rng, static_cast<size_t>(N * V), 3.f, false), cs.dt);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(V - 1));
  std::vector<int32_t> targets(static_cast<size_t>(N));
  std::vector<int64_t> kept, ignored;
  for (int64_t i = 0; i < N; ++i) {
    // Every third row (from row 2 on) is ignored on every rank; the first and last columns of
    // the full vocabulary and of each slice boundary appear as labels too.
    if (i % 3 == 2) targets[static_cast<size_t>(i)] = -1;
    else if (i % 7 == 1) targets[static_cast<size_t>(i)] = static_cast<int32_t>((i / 7) % P * Vs);
    else if (i % 7 == 4) targets[static_cast<size_t>(i)] = static_cast<int32_t>(((i / 7) % P + 1) * Vs - 1);
    else targets[static_cast<size_t>(i)] = pick(rng);
    (targets[static_cast<size_t>(i)] < 0 ? ignored : kept).push_back(i);
  }
  // dloss nonzero on every row, ignored ones included, so their gradient (dloss * softmax) is checked.
  std::uniform_real_distribution<float> w(0.5f, 1.5f);
  std::vector<float> dloss(static_cast<size_t>(N));
  for (auto& d : dloss) d = w(rng) / static_cast<float>(N);
  const Tensor gdloss = gpu(dloss, {N}, DType::F32);

  // ---- pass 1 per rank -------------------------------------------------------------------
  std::vector<std::vector<float>> slices(static_cast<size_t>(P));
  std::vector<std::vector<int32_t>> local(static_cast<size_t>(P));
  std::vector<Tensor> gslices, gtargets;
  Tensor ggathered = Tensor::empty({P, 3, N}, DType::F32, Device::CUDA);
  Tensor cgathered = Tensor::empty({P, 3, N}, DType::F32);
  for (int64_t r = 0; r < P; ++r) {
    auto& sl = slices[static_cast<size_t>(r)];
    auto& lt = local[static_cast<size_t>(r)];
    sl = column_slice(full, N, V, r * Vs, Vs);
    for (int32_t t : targets) lt.push_back(t >= r * Vs && t < (r + 1) * Vs ? static_cast<int32_t>(t - r * Vs) : -1);
    gslices.push_back(gpu(sl, {N, Vs}, cs.dt));
    gtargets.push_back(gpu_i32(lt));

    Tensor cstats = Tensor::empty({3, N}, DType::F32);
    ops::cross_entropy_shard_stats(c, cstats, cpu_f32(sl, {N, Vs}), cpu_i32(lt));
    Tensor gstats = Tensor::empty({3, N}, DType::F32, Device::CUDA);
    poison(g, gstats);
    ops::cross_entropy_shard_stats(g, gstats, gslices.back(), gtargets.back());
    g.synchronize();
    expect_close(fmt::format("shard_stats rank {} {}", r, tag), gstats, cstats, kStatsTol);
    // The all-gather, done by hand: rank r's (3,N) goes to gathered[r].
    ggathered.view({P, 3 * N}).rows(r, r + 1).copy_from(gstats);
    cgathered.view({P, 3 * N}).rows(r, r + 1).copy_from(cstats);
  }

  // ---- the unsharded reference: one fused pass over whole rows on the CPU ------------------
  Tensor full_grad = cpu_f32(full, {N, V});
  Tensor full_loss = Tensor::empty({N}, DType::F32);
  ops::cross_entropy_fused(c, full_loss, full_grad, cpu_i32(targets), cpu_f32(dloss, {N}));
  const std::vector<float> full_loss_v = full_loss.to_float_vector(), full_grad_v = full_grad.to_float_vector();

  // ---- pass 2, losses only (every rank computes the same losses; rank 0's inputs) --------
  Tensor closs = Tensor::empty({N}, DType::F32);
  ops::cross_entropy_shard_finish(c, closs, nullptr, cgathered, cpu_i32(local[0]), Tensor());
  const std::vector<float> closs_v = closs.to_float_vector();
  Tensor gloss = Tensor::empty({N}, DType::F32, Device::CUDA);
  poison(g, gloss);
  ops::cross_entropy_shard_finish(g, gloss, nullptr, ggathered, gtargets[0], Tensor());
  expect_close("shard_finish loss (no grad) " + tag, gloss, closs_v, kLossTol);
  // Labelled rows: the full-vocabulary loss.
  expect_close("shard_finish loss vs unsharded " + tag, cpu_f32(pick_rows(gloss.to_float_vector(), 1, kept),
                                                              {static_cast<int64_t>(kept.size())}),
               pick_rows(full_loss_v, 1, kept), kLossTol);
  // Ignored rows: finite (checked by expect_close) and equal to the reference's logsumexp.
  if (!ignored.empty()) {
    expect_close("shard_finish loss of ignored rows " + tag,
                 cpu_f32(pick_rows(gloss.to_float_vector(), 1, ignored), {static_cast<int64_t>(ignored.size())}),
                 pick_rows(closs_v, 1, ignored), kLossTol);
  }

  // ---- pass 2 with the gradient, per rank --------------------------------------------------
  const double grad_tol = cs.dt == DType::F32 ? kF32GradTol : kBf16Tol;
  for (int64_t r = 0; r < P; ++r) {
    const auto& sl = slices[static_cast<size_t>(r)];
    Tensor cgrad = cpu_f32(sl, {N, Vs});
    Tensor closs_r = Tensor::empty({N}, DType::F32);
    ops::cross_entropy_shard_finish(c, closs_r, &cgrad, cgathered, cpu_i32(local[static_cast<size_t>(r)]),
                                    cpu_f32(dloss, {N}));
    Tensor& ggrad = gslices[static_cast<size_t>(r)];
    poison(g, gloss);
    ops::cross_entropy_shard_finish(g, gloss, &ggrad, ggathered, gtargets[static_cast<size_t>(r)], gdloss);
    const std::string rt = fmt::format("rank {} {}", r, tag);
    expect_close("shard_finish loss " + rt, gloss, closs_r, kLossTol);
    expect_close("shard_finish grad vs reference " + rt, ggrad, cgrad, grad_tol);
    // Labelled rows against the unsharded gradient's columns of this rank (ignored rows differ
    // by definition: the unsharded op zeroes them, the sharded one leaves masking to dloss).
    const std::vector<float> full_cols = column_slice(full_grad_v, N, V, r * Vs, Vs);
    expect_close("shard_finish grad vs unsharded " + rt,
                 cpu_f32(pick_rows(ggrad.to_float_vector(), Vs, kept), {static_cast<int64_t>(kept.size()), Vs}),
                 pick_rows(full_cols, Vs, kept), grad_tol);
  }
}

TEST(CudaCrossEntropyShards, StatsAndFinishMatchReferenceAndUnsharded) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  for (int64_t N : {1, 7, 300})
    for (int64_t Vs : {7, 1003, 32000})
      for (int64_t P : {1, 2, 4}) {
        run_case({N, Vs, P, DType::BF16}, rng);
        // fp32 logits take the same kernels' other instantiation; the small shapes suffice.
        if (N * Vs * P <= 300000) run_case({N, Vs, P, DType::F32}, rng);
        if (::testing::Test::HasFailure()) return;  // one failing shape is enough to read
      }
}

}  // namespace
}  // namespace primus
