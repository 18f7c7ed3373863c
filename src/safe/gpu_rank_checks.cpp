// The GPU side of rank_checks.h: a bf16 GEMM correctness check against fp64, GEMM TFLOP/s on
// square sizes (cuBLASLt's heuristic algorithm), and HBM device-to-device copy bandwidth.
#include <fmt/format.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "safe/rank_checks.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <fstream>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/timing.h"
#endif

namespace primus::safe {

#ifndef PRIMUS_WITH_CUDA

int visible_gpu_count() { return 0; }

RankCompute run_gpu_checks(int, const ComputeCheckOptions&) {
  fail("this primus was built without CUDA, so it has no GPU checks; rebuild with nvcc (cmake -DPRIMUS_CUDA=ON) or "
       "check the CPU with --device cpu");
}

#else

namespace {

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string pcie_link(int device) {
  char bus[64] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof(bus), device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "unknown";
  }
  std::string id(bus);
  for (auto& c : id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // sysfs uses a 4-hex-digit domain; CUDA may print 8.
  if (id.size() > 12 && id.find(':') == 8) id = id.substr(4);
  const std::string base = "/sys/bus/pci/devices/" + id + "/";
  const std::string w = read_first_line(base + "current_link_width"), mw = read_first_line(base + "max_link_width");
  const std::string s = read_first_line(base + "current_link_speed");
  if (w.empty()) return fmt::format("{} (link width not readable)", bus);
  return fmt::format("{}: x{} of x{}, {}", bus, w, mw, s);
}

// Small GEMM checked against a double-precision host product (an independent reference).
CheckLine gemm_sanity(cuda::CudaBackend& be) {
  const int64_t M = 192, N = 160, K = 96;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(M * K), b(K * N);
  for (auto& x : a) x = bf16_bits_to_fp32(fp32_to_bf16_bits(d(rng)));
  for (auto& x : b) x = bf16_bits_to_fp32(fp32_to_bf16_bits(d(rng)));
  Tensor ga = Tensor::from_floats(a, {M, K}, DType::BF16, Device::CUDA);
  Tensor gb = Tensor::from_floats(b, {K, N}, DType::BF16, Device::CUDA);
  Tensor go = Tensor::empty({M, N}, DType::F32, Device::CUDA);
  be.matmul(go, ga, ops::Transpose::No, gb, ops::Transpose::No, 1.f, 0.f);
  be.synchronize();
  const auto o = go.to_float_vector();
  const double rel = gemm_relative_error(a.data(), b.data(), o.data(), M, N, K);
  return {"gemm_sanity", rel < 1e-5,
          fmt::format("bf16 GEMM {}x{}x{} vs fp64 host reference: relative error {:.2e}", M, N, K, rel)};
}

}  // namespace

int visible_gpu_count() { return static_cast<int>(cuda::list_devices().size()); }

RankCompute run_gpu_checks(int device, const ComputeCheckOptions& o) {
  const auto devs = cuda::list_devices();
  PRIMUS_CHECK(device >= 0 && device < static_cast<int>(devs.size()),
               "GPU checks: CUDA device {} is not visible ({} visible; check CUDA_VISIBLE_DEVICES and LOCAL_RANK)",
               device, devs.size());
  const auto& d = devs[static_cast<size_t>(device)];
  RankCompute r;
  r.kind = "gpu";
  r.host_summary = host_summary();
  r.device = fmt::format("GPU {}: {} (sm_{}{}), {} SMs, {:.1f} GiB, bf16 peak {} TFLOP/s, PCIe {}", d.index, d.name,
                         d.sm_major, d.sm_minor, d.multiprocessors, d.total_memory / 1073741824.0, d.peak_bf16_tflops,
                         pcie_link(d.index));
  PRIMUS_CUDA_CHECK(cudaSetDevice(device));
  cuda::CudaBackend be(device);
  r.checks.push_back(gemm_sanity(be));

  const std::vector<int64_t> sizes =
      o.quick ? std::vector<int64_t>{2048, 8192} : std::vector<int64_t>{1024, 2048, 4096, 8192};
  for (int64_t n : sizes) {
    cuda::GemmKey key;
    key.m = key.n = key.k = n;
    key.ta = false;
    key.tb = true;
    const double us = be.gemm().time_current(key, o.quick ? 3 : 5, o.quick ? 10 : 30);
    r.gemm.push_back({n, key.flops() / (us * 1e6)});
  }
  r.gemm_tflops = r.gemm.back().tflops;

  // HBM bandwidth: device-to-device copy of 1 GiB, bytes read + written.
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  PRIMUS_CUDA_CHECK(cudaMalloc(&a, bytes));
  PRIMUS_CUDA_CHECK(cudaMalloc(&b, bytes));
  cuda::launch_fill_uniform(a, DType::BF16, static_cast<int64_t>(bytes / 2), 3, -1.f, 1.f, be.stream());
  const auto t = cuda::time_on_stream(be.stream(), 2, o.quick ? 5 : 20, [&](int) {
    PRIMUS_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, be.stream()));
  });
  cudaFree(a);
  cudaFree(b);
  r.mem_gbps = 2.0 * bytes / (t.median_us * 1e3);
  apply_thresholds(r, o);
  return r;
}

#endif  // PRIMUS_WITH_CUDA

}  // namespace primus::safe
