// The CUDA backend (Primus-Turbo): bf16 activations, fp32 master weights and grads,
// cuBLASLt GEMMs, fused kernels. Built only when PRIMUS_WITH_CUDA is defined.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace primus::ops {

std::shared_ptr<Backend> make_cuda_backend(int device_index);

}  // namespace primus::ops
