// Cross-entropy over the vocabulary on CPU, one row per token:
//   loss[i] = logsumexp(z[i]) - z[i, t_i],   dz[i] = dloss[i] * (softmax(z[i]) - onehot(t_i)).
// A negative target marks an ignored token: loss 0 and gradient 0.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/vec_math.h"

namespace primus::ops::cpu {

namespace {

void check_target(int32_t t, int64_t row, int64_t V, const char* op) {
  PRIMUS_CHECK(t < V, "{}: target {} of row {} is outside the vocabulary of {} logits (labels must be "
               "< padded_vocab_size; use a negative label to ignore a token)", op, t, row, V);
}

}  // namespace

void CpuBackend::cross_entropy_forward(Tensor& losses, const Tensor& logits, const Tensor& targets) {
  require_f32(losses, "cross_entropy_forward", "losses");
  require_f32(logits, "cross_entropy_forward", "logits");
  const int64_t V = logits.size(-1), N = logits.numel() / V;
  const float* z = logits.data<float>();
  const int32_t* t = targets.data<int32_t>();
  float* loss = losses.data<float>();
  pool_.parallel_for(N, [&](int64_t r0, int64_t r1) {
    std::vector<float> scratch(static_cast<size_t>(V));
    for (int64_t i = r0; i < r1; ++i) {
      check_target(t[i], i, V, "cross_entropy_forward");
      if (t[i] < 0) {
        loss[i] = 0.f;
        continue;
      }
      const float* zi = z + i * V;
      const float mx = row_max(zi, V);
      const double sum = exp_shift(zi, scratch.data(), V, mx);
      loss[i] = static_cast<float>(mx + std::log(sum) - zi[t[i]]);
    }
  }, 4);
}

void CpuBackend::cross_entropy_fused(Tensor& losses, Tensor& logits_to_grad, const Tensor& targets,
                                     const Tensor& dloss) {
  require_f32(losses, "cross_entropy_fused", "losses");
  require_f32(logits_to_grad, "cross_entropy_fused", "logits_to_grad");
  require_f32(dloss, "cross_entropy_fused", "dloss");
  const int64_t V = logits_to_grad.size(-1), N = logits_to_grad.numel() / V;
  float* z = logits_to_grad.data<float>();
  const int32_t* t = targets.data<int32_t>();
  const float* dl = dloss.data<float>();
  float* loss = losses.data<float>();
  pool_.parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      check_target(t[i], i, V, "cross_entropy_fused");
      float* zi = z + i * V;
      if (t[i] < 0) {
        loss[i] = 0.f;
        for (int64_t j = 0; j < V; ++j) zi[j] = 0.f;
        continue;
      }
      const float mx = row_max(zi, V), target_logit = zi[t[i]];
      const double sum = exp_shift(zi, zi, V, mx);  // zi = exp(z - max)
      loss[i] = static_cast<float>(mx + std::log(sum) - target_logit);
      const float w = dl[i], scale = static_cast<float>(w / sum);
      for (int64_t j = 0; j < V; ++j) zi[j] *= scale;
      zi[t[i]] -= w;
    }
  }, 4);
}

}  // namespace primus::ops::cpu
