// The per-tensor FP8 scale rule (Transformer Engine's), one definition for the CPU reference
// (ops/fp8.cpp) and the CUDA kernels (ops/cuda/fp8.cu), which must agree bit for bit:
//   s = F / amax / 2^margin   (F the format's largest finite value)
//   1 when amax is 0 or not finite; the largest float when s overflows.
#pragma once

#include <cfloat>
#include <cmath>

#include "core/host_device.h"

namespace primus {

PRIMUS_HOST_DEVICE inline float fp8_scale_from_amax(float fmax, float amax, int margin) {
  if (!(amax > 0.f) || !(amax <= FLT_MAX)) return 1.f;  // 0, NaN or infinity
  const float s = ldexpf(fmax / amax, -margin);
  return s <= FLT_MAX ? s : FLT_MAX;
}

}  // namespace primus
