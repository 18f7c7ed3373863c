#include "safe/preflight.h"

#include <fmt/format.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/tensor.h"
#include "safe/gpu_bench.h"

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_info.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/timing.h"
#endif

namespace primus::safe {

namespace {

namespace fs = std::filesystem;

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      return p == std::string::npos ? line : line.substr(p + 2);
    }
  }
  return "unknown";
}

double mem_total_gib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb / 1048576.0;
  }
  return 0;
}

int numa_nodes() {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/devices/system/node", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("node", 0) == 0 && name.size() > 4 && std::isdigit(static_cast<unsigned char>(name[4]))) ++n;
  }
  return n;
}

std::string hostname() {
  char buf[256] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

struct Report {
  std::string md;
  bool ok = true;
  void line(const std::string& s) { md += s + "\n"; }
  void check(bool pass, const std::string& what) {
    line(fmt::format("- {} {}", pass ? "PASS" : "FAIL", what));
    ok = ok && pass;
  }
};

void host_section(Report& r) {
  struct utsname u {};
  uname(&u);
  r.line("## Host");
  r.line(fmt::format("- hostname: {}", hostname()));
  r.line(fmt::format("- kernel: {} {} ({})", u.sysname, u.release, u.machine));
  r.line(fmt::format("- CPU: {} ({} logical cores)", cpu_model(), std::thread::hardware_concurrency()));
  r.line(fmt::format("- memory: {:.1f} GiB", mem_total_gib()));
  r.line(fmt::format("- NUMA nodes: {}", numa_nodes()));
  r.line("");
}

}  // namespace

#ifndef PRIMUS_WITH_CUDA

int run_preflight(const PreflightOptions& o) {
  Report r;
  host_section(r);
  std::fputs(r.md.c_str(), stdout);
  gpu_ready("preflight");
  return kNoGpuExitCode;
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
bool gemm_sanity(cuda::CudaBackend& be, std::string& detail) {
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
  double num = 0, den = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += static_cast<double>(a[i * K + k]) * b[k * N + j];
      num += (o[i * N + j] - ref) * (o[i * N + j] - ref);
      den += ref * ref;
    }
  const double rel = std::sqrt(num / den);
  detail = fmt::format("bf16 GEMM {}x{}x{} vs fp64 host reference: relative error {:.2e}", M, N, K, rel);
  return rel < 1e-5;
}

}  // namespace

int run_preflight(const PreflightOptions& o) {
  Report r;
  r.line(fmt::format("# Primus preflight — {}", hostname()));
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  r.line(fmt::format("generated {}{}\n", when, o.quick ? " (--quick)" : ""));
  host_section(r);
  const auto devs = cuda::list_devices();
  r.line("## GPUs");
  if (devs.empty()) {
    r.line("- none visible");
    std::fputs(r.md.c_str(), stdout);
    gpu_ready("preflight");
    return kNoGpuExitCode;
  }
  for (const auto& d : devs) {
    r.line(fmt::format("- GPU {}: {} (sm_{}{}), {} SMs, {:.1f} GiB ({:.1f} GiB free), L2 {:.0f} MB, bf16 peak {} "
                       "TFLOP/s, PCIe {}",
                       d.index, d.name, d.sm_major, d.sm_minor, d.multiprocessors, d.total_memory / 1073741824.0,
                       d.free_memory / 1073741824.0, d.l2_cache_bytes / 1e6, d.peak_bf16_tflops, pcie_link(d.index)));
  }
  r.line(fmt::format("- CUDA driver API {}.{}, CUDA runtime {}.{}, cuBLASLt {}", devs[0].driver_version / 1000,
                     devs[0].driver_version % 1000 / 10, devs[0].runtime_version / 1000,
                     devs[0].runtime_version % 1000 / 10, cuda::GemmEngine::cublaslt_version()));
  r.line("");

  cuda::CudaBackend be(0);
  r.line("## Checks");
  std::string detail;
  r.check(gemm_sanity(be, detail), detail);

  // bf16 GEMM throughput on square sizes.
  std::vector<int64_t> sizes = o.quick ? std::vector<int64_t>{2048, 8192} : std::vector<int64_t>{1024, 2048, 4096, 8192};
  r.line("");
  r.line("## GEMM bf16 (fp32 accumulate, cuBLASLt heuristic algorithm, random inputs rotated past L2)");
  r.line("| size | time (us) | TFLOP/s | % of peak |");
  r.line("| --- | --- | --- | --- |");
  double last_tflops = 0;
  for (int64_t n : sizes) {
    cuda::GemmKey key;
    key.m = key.n = key.k = n;
    key.ta = false;
    key.tb = true;
    const double us = be.gemm().time_current(key, o.quick ? 3 : 5, o.quick ? 10 : 30);
    last_tflops = key.flops() / (us * 1e6);
    const double peak = devs[0].peak_bf16_tflops;
    r.line(fmt::format("| {} | {:.1f} | {:.1f} | {} |", n, us, last_tflops,
                       peak > 0 ? fmt::format("{:.1f}%", 100 * last_tflops / peak) : "n/a"));
  }
  if (o.min_gemm_tflops > 0)
    r.check(last_tflops >= o.min_gemm_tflops,
            fmt::format("GEMM {}^3 at {:.0f} TFLOP/s (minimum {:.0f})", sizes.back(), last_tflops, o.min_gemm_tflops));

  // HBM bandwidth: device-to-device copy, bytes read + written.
  {
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
    const double gbps = 2.0 * bytes / (t.median_us * 1e3);
    r.line("");
    r.line("## Memory");
    r.line(fmt::format("- HBM device-to-device copy of 1 GiB: {:.0f} GB/s (read + write)", gbps));
    if (o.min_hbm_gbps > 0) r.check(gbps >= o.min_hbm_gbps, fmt::format("HBM {:.0f} GB/s (minimum {:.0f})", gbps, o.min_hbm_gbps));
  }
  r.line("");
  r.line("## Collectives");
  if (devs.size() < 2) {
    r.line("- intra-node all-reduce / all-to-all: single GPU: skipped");
  } else {
    r.line(fmt::format("- {} GPUs visible: NCCL all-reduce/all-to-all bandwidth tests are not part of this "
                       "preflight yet (they need one process per GPU): skipped",
                       devs.size()));
  }
  r.line("- inter-node: single node: skipped");
  r.line("");
  r.line(fmt::format("**Result: {}**", r.ok ? "PASS" : "FAIL"));

  fs::create_directories(o.output_dir);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", std::localtime(&now));
  const fs::path file = fs::path(o.output_dir) / fmt::format("preflight_{}_{}.md", hostname(), stamp);
  {
    std::ofstream out(file);
    PRIMUS_CHECK(out.good(), "preflight: cannot write the report '{}'", file.string());
    out << r.md;
  }
  std::fputs(r.md.c_str(), stdout);
  std::printf("\nreport written to %s\n", file.string().c_str());
  return r.ok ? 0 : 1;
}

#endif  // PRIMUS_WITH_CUDA

}  // namespace primus::safe
