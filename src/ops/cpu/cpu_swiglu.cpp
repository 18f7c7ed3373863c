// SwiGLU on CPU (Shazeer 2020): gate_up (N, 2F) = [g | u], out (N,F) = silu(g) * u with
// silu(g) = g * sigmoid(g). Backward, with s = sigmoid(g):
//   du = dout * silu(g),   dg = dout * u * s * (1 + g * (1 - s)).
#include <cmath>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

void CpuBackend::swiglu_forward(Tensor& out, const Tensor& gate_up) {
  require_f32(out, "swiglu_forward", "out");
  require_f32(gate_up, "swiglu_forward", "gate_up");
  const int64_t F = out.size(-1), N = out.numel() / F;
  const float* gu = gate_up.data<float>();
  float* o = out.data<float>();
  pool_.parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = gu + r * 2 * F, *u = g + F;
      float* orow = o + r * F;
      for (int64_t i = 0; i < F; ++i) orow[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  }, 8);
}

void CpuBackend::swiglu_backward(Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) {
  require_f32(dgate_up, "swiglu_backward", "dgate_up");
  require_f32(dout, "swiglu_backward", "dout");
  require_f32(gate_up, "swiglu_backward", "gate_up");
  const int64_t F = dout.size(-1), N = dout.numel() / F;
  const float *gu = gate_up.data<float>(), *pd = dout.data<float>();
  float* dgu = dgate_up.data<float>();
  pool_.parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = gu + r * 2 * F, *u = g + F, *dy = pd + r * F;
      float *dg = dgu + r * 2 * F, *du = dg + F;
      for (int64_t i = 0; i < F; ++i) {
        const float s = 1.f / (1.f + std::exp(-g[i]));
        du[i] = dy[i] * g[i] * s;
        dg[i] = dy[i] * u[i] * s * (1.f + g[i] * (1.f - s));
      }
    }
  }, 8);
}

}  // namespace primus::ops::cpu
