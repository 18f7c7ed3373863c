// FP8 casts and scaling-state kernels (the CUDA side of ops/fp8.h). Inputs bf16; every
// dimension a multiple of 16 and pointers 16-byte aligned (ops/fp8.cpp checks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace primus::cuda {

// How a cast finds its scale s:
//   scale_from_amax false  s = *scale                                  (delayed scaling)
//   scale_from_amax true   s = fmax / *amax / 2^margin (1 when *amax is 0 or not finite), and
//                          the kernel writes *scale = s, *scale_inv = 1/s   (tensorwise)
// out (R,C) and out_t (C,R) (either null) = fp8(x (R,C) * s), E5M2 when e5m2 else E4M3
// (round to nearest even, saturating). record_amax: max(|x|) max-ed into *amax.
struct Fp8CastArgs {
  float* scale = nullptr;
  float* scale_inv = nullptr;
  float* amax = nullptr;
  bool scale_from_amax = false;
  bool record_amax = false;
  bool e5m2 = false;
  float fmax = 448.f;
  int margin = 0;
};
void launch_fp8_cast_transpose(const void* x, int64_t R, int64_t C, void* out, void* out_t, const Fp8CastArgs& a,
                               cudaStream_t stream);

// *amax = max(*amax, max |x|) over n bf16 values (n % 8 == 0).
void launch_bf16_amax(const void* x, int64_t n, float* amax, cudaStream_t stream);

// Delayed scaling's update of `rows` meta rows of `cols` floats, history h_0 .. h_{H-1} first,
// scale and 1/scale at the given columns (row r is role r % 3: fmax = grad_max for role 2, else
// fwd_max): see ops::fp8_update_scales.
void launch_fp8_update_scales(float* metas, int64_t rows, int H, int64_t cols, int64_t scale_col,
                              int64_t scale_inv_col, float fwd_max, float grad_max, int margin, bool amax_max,
                              cudaStream_t stream);

}  // namespace primus::cuda
