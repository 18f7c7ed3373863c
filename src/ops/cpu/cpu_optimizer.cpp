// AdamW (Loshchilov & Hutter 2019, decoupled weight decay) and the reductions the
// optimizer needs (sum of squares for grad norms, zero counts), on CPU.
//
// Per element, with g = grad * grad_scale and t = step:
//   p  -= lr * wd * weight_decay_mult * p            (decoupled decay, on the old p)
//   m   = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//   p  -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// then the low-precision model copy (if any) is refreshed from the fp32 master. Moments may
// be held in bf16 and the master as bf16 model + int16 remainder (ops::AdamWTensor); the
// arithmetic is the same fp32 arithmetic on the loaded values.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/master_bits.h"

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

void CpuBackend::adamw_step(std::vector<AdamWTensor>& params, const AdamWParams& p) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const float step_size = static_cast<float>(p.lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  for (AdamWTensor& t : params) {
    require_f32(t.grad, "adamw_step", "grad");
    // Scalars as locals: stores through the float pointers cannot alias them, so the loop
    // vectorizes.
    const float decay = 1.f - p.lr * p.weight_decay * t.weight_decay_mult;
    const float b1 = p.beta1, b2 = p.beta2, eps = p.eps, gs = p.grad_scale;
    const float* __restrict g = t.grad.data<float>();
    const bool split = t.master_remainder.defined();
    if (!split && t.exp_avg.dtype() == DType::F32 && t.exp_avg_sq.dtype() == DType::F32) {
      for (auto [x, name] : {std::pair{&t.master, "master"}, {&t.exp_avg, "exp_avg"}, {&t.exp_avg_sq, "exp_avg_sq"}})
        require_f32(*x, "adamw_step", name);
      float* __restrict w = t.master.data<float>();
      float* __restrict m = t.exp_avg.data<float>();
      float* __restrict v = t.exp_avg_sq.data<float>();
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
      continue;
    }
    // Precision-aware layouts (bf16 moments, a master split into bf16 model + int16
    // remainder): the same arithmetic in fp32 on values loaded from and stored to them.
    const bool m16 = t.exp_avg.dtype() == DType::BF16, v16 = t.exp_avg_sq.dtype() == DType::BF16;
    void* mp = t.exp_avg.raw();
    void* vp = t.exp_avg_sq.raw();
    float* w = split ? nullptr : t.master.data<float>();
    uint16_t* model16 = split ? static_cast<uint16_t*>(t.model.raw()) : nullptr;
    int16_t* rem = split ? t.master_remainder.data<int16_t>() : nullptr;
    auto load = [](const void* x, bool bf16, int64_t i) {
      return bf16 ? bf16_bits_to_fp32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
    };
    auto store = [](void* x, bool bf16, int64_t i, float f) {
      if (bf16) static_cast<uint16_t*>(x)[i] = fp32_to_bf16_bits(f);
      else static_cast<float*>(x)[i] = f;
    };
    const int64_t n = split ? t.model.numel() : t.master.numel();
    pool_.parallel_for(n, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float wi;
        if (split) {
          const uint32_t bits = join_master_bits(model16[i], rem[i]);
          std::memcpy(&wi, &bits, sizeof(wi));
        } else {
          wi = w[i];
        }
        const float gi = g[i] * gs;
        const float mi = b1 * load(mp, m16, i) + (1.f - b1) * gi;
        const float vi = b2 * load(vp, v16, i) + (1.f - b2) * gi * gi;
        store(mp, m16, i, mi);
        store(vp, v16, i, vi);
        wi = wi * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
        if (split) {
          uint32_t bits;
          std::memcpy(&bits, &wi, sizeof(bits));
          split_master_bits(bits, model16[i], rem[i]);
        } else {
          w[i] = wi;
        }
      }
    }, 1 << 14);
    if (!split && t.model.defined() && t.model.raw() != t.master.raw()) copy_cast(t.model, t.master);
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
