#include "ops/cuda/device_info.h"

#include "ops/cuda/cuda_check.h"

namespace primus::cuda {

namespace {
// Published dense bf16 peaks (no sparsity) by product name; used only for MFU.
double peak_bf16_for(const std::string& name) {
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) {
    return name.find("PCIe") != std::string::npos ? 756.0 : 989.0;
  }
  if (name.find("A100") != std::string::npos) return 312.0;
  if (name.find("B200") != std::string::npos) return 2250.0;
  return 0.0;
}
}  // namespace

std::vector<DeviceInfo> list_devices() {
  std::vector<DeviceInfo> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return out;
  }
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    PRIMUS_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.sm_major = p.major;
    d.sm_minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.total_memory = p.totalGlobalMem;
    d.l2_cache_bytes = static_cast<size_t>(p.l2CacheSize);
    d.driver_version = driver;
    d.runtime_version = runtime;
    int prev = 0;
    cudaGetDevice(&prev);
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t f = 0, t = 0;
      if (cudaMemGetInfo(&f, &t) == cudaSuccess) d.free_memory = f;
      cudaSetDevice(prev);
    }
    d.peak_bf16_tflops = peak_bf16_for(d.name);
    out.push_back(d);
  }
  return out;
}

}  // namespace primus::cuda
