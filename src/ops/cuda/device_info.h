// What a GPU is: name, SMs, memory, clocks — for preflight, logs and MFU.
#pragma once

#include <string>
#include <vector>

namespace primus::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0, free_memory = 0;
  size_t l2_cache_bytes = 0;
  int driver_version = 0, runtime_version = 0;
  // Dense bf16 tensor-core peak in TFLOP/s used for MFU (H100 SXM: 989; 0 = unknown).
  double peak_bf16_tflops = 0;
};

std::vector<DeviceInfo> list_devices();

}  // namespace primus::cuda
