// The three GEMM tuning stages on a real GPU: stage 1 logs shapes, stage 2 times candidates
// and writes a table, stage 3 loads it (and refuses to start without it); results stay right.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <unistd.h>
#include <cmath>

#include "gpu_test_util.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/gemm_tuning.h"

namespace primus {
namespace {

namespace fs = std::filesystem;
using gputest::expect_close;
using gputest::gpu;
using ops::Transpose;

fs::path temp_dir(const char* name) {
  fs::path d = fs::temp_directory_path() / fmt::format("primus_gpu_{}_{}", name, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(CudaGemmTuning, ThreeStages) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  const fs::path dir = temp_dir("tuning");
  cuda::CudaBackendOptions opt;
  opt.gemm_tuning.shapes_file = (dir / "shapes.jsonl").string();
  opt.gemm_tuning.table_file = (dir / "table.json").string();

  const int64_t M = 512, N = 384, K = 256;
  const auto a = gputest::randn(rng, M * K), b = gputest::randn(rng, N * K);
  ops::Context cpu = ops::Context::cpu();
  Tensor ref = Tensor::zeros({M, N}, DType::F32);
  ops::matmul(cpu, ref, gputest::cpu_f32(a, {M, K}), Transpose::No, gputest::cpu_f32(b, {N, K}), Transpose::Yes);

  // Stage 1: two distinct shapes (the second is the same GEMM twice) -> two lines.
  {
    opt.gemm_tuning.stage = cuda::TuningStage::LogShapes;
    cuda::CudaBackend be(0, opt);
    Tensor ga = gpu(a, {M, K}, DType::BF16), gb = gpu(b, {N, K}, DType::BF16);
    Tensor out = Tensor::empty({M, N}, DType::BF16, Device::CUDA), out32 = Tensor::zeros({M, N}, DType::F32, Device::CUDA);
    be.matmul(out, ga, Transpose::No, gb, Transpose::Yes, 1.f, 0.f);
    be.matmul(out, ga, Transpose::No, gb, Transpose::Yes, 1.f, 0.f);
    be.matmul(out32, ga, Transpose::No, gb, Transpose::Yes, 1.f, 1.f);
    be.synchronize();
    const auto shapes = cuda::read_shapes_file(opt.gemm_tuning.shapes_file);
    ASSERT_EQ(shapes.size(), 2u);
    EXPECT_EQ(shapes[0].m, M);
    EXPECT_EQ(shapes[0].n, N);
    EXPECT_EQ(shapes[0].k, K);
    EXPECT_TRUE(shapes[0].tb);
    EXPECT_TRUE(shapes[1].accumulate);
    EXPECT_EQ(shapes[1].out_dtype, DType::F32);
  }
  // Stage 2 inside a run: the new shape is tuned on first sight and the table written.
  {
    opt.gemm_tuning.stage = cuda::TuningStage::Tune;
    opt.gemm_tuning.iters = 5;
    cuda::CudaBackend be(0, opt);
    Tensor out = Tensor::empty({M, N}, DType::BF16, Device::CUDA);
    be.matmul(out, gpu(a, {M, K}, DType::BF16), Transpose::No, gpu(b, {N, K}, DType::BF16), Transpose::Yes, 1.f, 0.f);
    expect_close("matmul during stage 2", out, ref, 1e-2);
    const auto table = cuda::read_tuning_table(opt.gemm_tuning.table_file);
    ASSERT_EQ(table.entries.size(), 1u);
    EXPECT_GT(table.entries[0].chosen.time_us, 0);
    EXPECT_GT(table.entries[0].candidates_timed, 0);
    // A direct tune reports heuristic vs best.
    auto r = be.gemm().tune(table.entries[0].key, 32, 2, 10);
    ASSERT_GE(r.best, 0);
    std::printf("[check] tune M=%lld N=%lld K=%lld: %zu candidates, heuristic %.2f us, best %.2f us (#%d)\n",
                static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), r.candidates.size(),
                r.heuristic_us(), r.best_us(), r.best);
    EXPECT_LE(r.best_us(), r.heuristic_us() * 1.0001);
  }
  // Stage 3: the table is used and results are right.
  {
    opt.gemm_tuning.stage = cuda::TuningStage::UseTable;
    cuda::CudaBackend be(0, opt);
    Tensor out = gpu(std::vector<float>(static_cast<size_t>(M * N), std::nanf("")), {M, N}, DType::BF16);
    be.matmul(out, gpu(a, {M, K}, DType::BF16), Transpose::No, gpu(b, {N, K}, DType::BF16), Transpose::Yes, 1.f, 0.f);
    be.synchronize();
    expect_close("matmul with the stage-3 table", out, ref, 1e-2);
  }
  // Stage 3 without a table: a clear error.
  {
    opt.gemm_tuning.table_file = (dir / "missing.json").string();
    try {
      cuda::CudaBackend be(0, opt);
      FAIL() << "stage 3 without a table must throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("not found"), std::string::npos) << e.what();
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace primus
