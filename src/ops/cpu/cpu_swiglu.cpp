// SwiGLU on CPU (Shazeer 2020): gate_up (N, 2F) = [g | u], out (N,F) = silu(g) * u with
// silu(g) = g * sigmoid(g). Backward, with s = sigmoid(g):
//   du = dout * silu(g),   dg = dout * u * s * (1 + g * (1 - s)).
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/vec_math.h"

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
      int64_t i = 0;
      for (; i + 8 <= F; i += 8) {
        const f32x8 gv = load8(g + i);
        store8(orow + i, gv * sigmoid8(gv) * load8(u + i));
      }
      const f32x8 gv = load_tail(g + i, F - i, 0.f);
      store_tail(orow + i, gv * sigmoid8(gv) * load_tail(u + i, F - i, 0.f), F - i);
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
      auto step = [](f32x8 gv, f32x8 uv, f32x8 dyv, f32x8& dgv, f32x8& duv) {
        const f32x8 s = sigmoid8(gv);
        duv = dyv * gv * s;
        dgv = dyv * uv * s * (1.f + gv * (1.f - s));
      };
      f32x8 dgv, duv;
      int64_t i = 0;
      for (; i + 8 <= F; i += 8) {
        step(load8(g + i), load8(u + i), load8(dy + i), dgv, duv);
        store8(dg + i, dgv);
        store8(du + i, duv);
      }
      step(load_tail(g + i, F - i, 0.f), load_tail(u + i, F - i, 0.f), load_tail(dy + i, F - i, 0.f), dgv, duv);
      store_tail(dg + i, dgv, F - i);
      store_tail(du + i, duv, F - i);
    }
  }, 8);
}

}  // namespace primus::ops::cpu
