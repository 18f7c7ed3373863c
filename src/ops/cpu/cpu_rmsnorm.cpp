// RMSNorm on CPU (Zhang & Sennrich 2019):
//   rstd = 1 / sqrt(mean(x^2) + eps),  xhat = x * rstd,  y = xhat * w.
// Backward with g = dy * w:
//   dx = rstd * (g - xhat * mean(g * xhat)),  dw = sum over rows of dy * xhat.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

void CpuBackend::rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, float eps) {
  for (auto [t, name] : {std::pair{&y, "y"}, {&rstd, "rstd"}}) require_f32(*t, "rmsnorm_forward", name);
  require_f32(x, "rmsnorm_forward", "x");
  require_f32(w, "rmsnorm_forward", "w");
  const int64_t C = x.size(-1), N = x.numel() / C;
  const float *px = x.data<float>(), *pw = w.data<float>();
  float *py = y.data<float>(), *pr = rstd.data<float>();
  pool_.parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* xi = px + i * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xi[c]) * xi[c];
      const float r = static_cast<float>(1.0 / std::sqrt(ss / C + eps));
      pr[i] = r;
      float* yi = py + i * C;
      for (int64_t c = 0; c < C; ++c) yi[c] = xi[c] * r * pw[c];
    }
  }, 16);
}

void CpuBackend::rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                  const Tensor& rstd) {
  for (auto [t, name] : {std::pair{&dx, "dx"}, {&dw, "dw"}}) require_f32(*t, "rmsnorm_backward", name);
  for (auto [t, name] : {std::pair{&dy, "dy"}, {&x, "x"}, {&w, "w"}, {&rstd, "rstd"}})
    require_f32(*t, "rmsnorm_backward", name);
  const int64_t C = x.size(-1), N = x.numel() / C;
  const float *px = x.data<float>(), *pw = w.data<float>(), *pdy = dy.data<float>(), *pr = rstd.data<float>();
  float* pdx = dx.data<float>();
  // dw partial sums per thread range (fixed ranges: deterministic), reduced in order.
  const int parts = pool_.size();
  std::vector<float> partial(static_cast<size_t>(parts * C), 0.f);
  const int64_t chunk = (N + parts - 1) / parts;
  pool_.parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* dwp = partial.data() + p * C;
      for (int64_t i = p * chunk; i < std::min(N, (p + 1) * chunk); ++i) {
        const float *xi = px + i * C, *gi = pdy + i * C;
        const float r = pr[i];
        double dot = 0;  // sum_c (dy*w)_c * xhat_c
        for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(gi[c]) * pw[c] * xi[c] * r;
        const float m = static_cast<float>(dot / C);
        float* dxi = pdx + i * C;
        for (int64_t c = 0; c < C; ++c) {
          const float xhat = xi[c] * r;
          dxi[c] += r * (gi[c] * pw[c] - xhat * m);
          dwp[c] += gi[c] * xhat;
        }
      }
    }
  });
  float* pdw = dw.data<float>();
  for (int p = 0; p < parts; ++p)
    for (int64_t c = 0; c < C; ++c) pdw[c] += partial[p * C + c];
}

}  // namespace primus::ops::cpu
