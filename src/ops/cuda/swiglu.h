// SwiGLU: out = silu(gate) * up with gate_up (N, 2F) = [gate | up] per row.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace primus::cuda {

// out (N,F), gate_up (N,2F)
void launch_swiglu_forward(void* out, const void* gate_up, DType dt, int64_t N, int64_t F, cudaStream_t stream);
// dgate_up (N,2F) written: [dout*up*silu'(gate) | dout*silu(gate)], dout (N,F), gate_up (N,2F)
void launch_swiglu_backward(void* dgate_up, const void* dout, const void* gate_up, DType dt, int64_t N, int64_t F,
                            cudaStream_t stream);

}  // namespace primus::cuda
