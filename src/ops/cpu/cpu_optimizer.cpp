// AdamW (Loshchilov & Hutter 2019, decoupled weight decay) and the reductions the
// optimizer needs (sum of squares for grad norms, zero counts), on CPU.
//
// Per element, with g = grad * grad_scale and t = step:
//   p  -= lr * wd * weight_decay_mult * p            (decoupled decay, on the old p)
//   m   = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//   p  -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// then the low-precision model copy (if any) is refreshed from the fp32 master.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

void CpuBackend::adamw_step(std::vector<AdamWTensor>& params, const AdamWParams& p) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const float step_size = static_cast<float>(p.lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  for (AdamWTensor& t : params) {
    for (auto [x, name] : {std::pair{&t.master, "master"}, {&t.grad, "grad"}, {&t.exp_avg, "exp_avg"},
                           {&t.exp_avg_sq, "exp_avg_sq"}})
      require_f32(*x, "adamw_step", name);
    float* __restrict w = t.master.data<float>();
    float* __restrict m = t.exp_avg.data<float>();
    float* __restrict v = t.exp_avg_sq.data<float>();
    const float* __restrict g = t.grad.data<float>();
    // Scalars as locals: stores through the float pointers cannot alias them, so the loop
    // vectorizes.
    const float decay = 1.f - p.lr * p.weight_decay * t.weight_decay_mult;
    const float b1 = p.beta1, b2 = p.beta2, eps = p.eps, gs = p.grad_scale;
    pool_.parallel_for(t.master.numel(), [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float gi = g[i] * gs;
        const float mi = b1 * m[i] + (1.f - b1) * gi;
        const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
      }
    }, 1 << 14);
    if (t.model.defined() && t.model.raw() != t.master.raw()) copy_cast(t.model, t.master);
  }
}

namespace {

// Sums f(partial range) over fixed ranges of n elements, in range order (deterministic).
template <typename Acc, typename F>
Acc reduce_ranges(ThreadPool& pool, int64_t n, F f) {
  const int parts = pool.size();
  std::vector<Acc> partial(static_cast<size_t>(parts), Acc{});
  const int64_t chunk = (n + parts - 1) / parts;
  pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) partial[p] = f(std::min(n, p * chunk), std::min(n, (p + 1) * chunk));
  });
  Acc total{};
  for (Acc a : partial) total += a;
  return total;
}

void require_float(const Tensor& t, const char* op) {
  PRIMUS_CHECK(is_float_type(t.dtype()), "{}: expected an fp32/bf16/fp16 tensor, got {}", op, t.describe());
}

}  // namespace

double CpuBackend::sum_of_squares(const std::vector<Tensor>& tensors) {
  double total = 0;
  for (const Tensor& t : tensors) {
    require_float(t, "sum_of_squares");
    if (t.dtype() == DType::F32) {
      const float* x = t.data<float>();
      total += reduce_ranges<double>(pool_, t.numel(), [&](int64_t b, int64_t e) {
        // 8 independent double lanes (vectorizable without reassociating a single sum).
        double lanes[8] = {};
        int64_t i = b;
        for (; i + 8 <= e; i += 8)
          for (int l = 0; l < 8; ++l) lanes[l] += static_cast<double>(x[i + l]) * x[i + l];
        double s = 0;
        for (; i < e; ++i) s += static_cast<double>(x[i]) * x[i];
        for (double lane : lanes) s += lane;
        return s;
      });
    } else {
      total += reduce_ranges<double>(pool_, t.numel(), [&](int64_t b, int64_t e) {
        double s = 0;
        for (int64_t i = b; i < e; ++i) {
          const double xi = load_as_f32(t, i);
          s += xi * xi;
        }
        return s;
      });
    }
  }
  return total;
}

int64_t CpuBackend::count_zeros(const std::vector<Tensor>& tensors) {
  int64_t total = 0;
  for (const Tensor& t : tensors) {
    require_float(t, "count_zeros");
    total += reduce_ranges<int64_t>(pool_, t.numel(), [&](int64_t b, int64_t e) {
      int64_t z = 0;
      for (int64_t i = b; i < e; ++i) z += load_as_f32(t, i) == 0.f;
      return z;
    });
  }
  return total;
}

}  // namespace primus::ops::cpu
