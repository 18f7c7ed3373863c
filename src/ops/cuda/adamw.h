// Multi-tensor AdamW: one launch updates many parameters (fp32 master, grad and moments) and
// refreshes their low-precision model copies. Moments may be bf16 and the master split into
// bf16 model + int16 remainder (ops::AdamWTensor); the arithmetic is fp32 throughout.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace primus::cuda {

struct AdamWRef {
  float* master = nullptr;      // (n) fp32, or null with `remainder`
  int16_t* remainder = nullptr; // (n) store_param_remainders: master = join(model (bf16), remainder)
  const void* grad = nullptr;   // (n) fp32, or bf16 with grad_bf16 (grad_reduce_in_bf16)
  bool grad_bf16 = false;
  void* exp_avg = nullptr;      // (n) fp32, or bf16 with exp_avg_bf16
  void* exp_avg_sq = nullptr;   // (n) fp32, or bf16 with exp_avg_sq_bf16
  bool exp_avg_bf16 = false, exp_avg_sq_bf16 = false;
  void* model = nullptr;        // (n) bf16/fp16 copy to refresh, or null (with `remainder`: bf16, required)
  DType model_dtype = DType::BF16;
  int64_t n = 0;
  float weight_decay = 0.f;     // already multiplied by the tensor's weight_decay_mult
};

struct AdamWHyper {
  float lr, beta1, beta2, eps, grad_scale;
  int64_t step;  // 1-based
};

// For each tensor: g = grad*grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p = p (1 - lr wd) - lr/(1-b1^step) * m / (sqrt(v)/sqrt(1-b2^step) + eps); model = cast(p).
void launch_adamw(const std::vector<AdamWRef>& tensors, const AdamWHyper& h, cudaStream_t stream);

}  // namespace primus::cuda
