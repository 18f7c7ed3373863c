// The CPU side of rank_checks.h: fp32 OpenBLAS sgemm (correctness against fp64, TFLOP/s) and
// DRAM copy bandwidth on this host.
#include <cblas.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "safe/outliers.h"
#include "safe/rank_checks.h"

namespace primus::safe {

namespace {

using Clock = std::chrono::steady_clock;

void sgemm(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), 1.f, a, static_cast<blasint>(k), b, static_cast<blasint>(n), 0.f, c,
              static_cast<blasint>(n));
}

// Median seconds of `iters` timed calls after `warmup` untimed ones.
template <typename F>
double median_seconds(int warmup, int iters, F&& body) {
  for (int i = 0; i < warmup; ++i) body();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto start = Clock::now();
    body();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return median_of(t);
}

CheckLine gemm_sanity() {
  const int64_t M = 192, N = 160, K = 96;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(M * K), b(K * N), o(M * N);
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  sgemm(M, N, K, a.data(), b.data(), o.data());
  const double rel = gemm_relative_error(a.data(), b.data(), o.data(), M, N, K);
  return {"gemm_sanity", rel < 1e-5,
          fmt::format("fp32 sgemm {}x{}x{} vs fp64 host reference: relative error {:.2e}", M, N, K, rel)};
}

}  // namespace

RankCompute run_cpu_checks(const ComputeCheckOptions& o) {
  RankCompute r;
  r.kind = "cpu";
  r.host_summary = host_summary();
  r.device = "CPU (OpenBLAS fp32 sgemm, host DRAM)";
  r.checks.push_back(gemm_sanity());

  const std::vector<int64_t> sizes = o.quick ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{512, 1024};
  for (int64_t n : sizes) {
    std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
    const double sec = median_seconds(1, o.quick ? 3 : 5, [&] { sgemm(n, n, n, a.data(), b.data(), c.data()); });
    r.gemm.push_back({n, 2.0 * n * n * n / sec / 1e12});
  }
  r.gemm_tflops = r.gemm.back().tflops;

  // Copy bandwidth: 64 MiB, well past the caches; read + write bytes per copy.
  const size_t bytes = size_t{64} << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const double sec = median_seconds(1, o.quick ? 3 : 5, [&] { std::memcpy(dst.data(), src.data(), bytes); });
  r.mem_gbps = 2.0 * static_cast<double>(bytes) / sec / 1e9;
  apply_thresholds(r, o);
  return r;
}

}  // namespace primus::safe
