// Backend's default implementation of the vocabulary-parallel cross-entropy passes (the
// math is stated in backend.h). It is the reference: plain loops over fp32 rows, sums in
// double. CPU fp32 tensors are used in place; other tensors (bf16, or on a GPU whose
// backend has no kernel for these ops yet) are copied to the host and back, which is
// correct but costs a device round trip per call.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/backend.h"

namespace primus::ops {

namespace {

// fp32 host view of a tensor: the tensor's own memory when it already is CPU fp32,
// else a copy that commit() writes back.
class HostF32 {
 public:
  explicit HostF32(const Tensor& t) : t_(t) {
    if (t.device() == Device::CPU && t.dtype() == DType::F32) {
      ptr_ = t.data<float>();
    } else {
      copy_ = t.to_float_vector();
      ptr_ = copy_.data();
    }
  }
  float* data() { return ptr_; }
  void commit() {
    if (copy_.empty()) return;
    Tensor src = Tensor::from_floats(copy_, t_.shape(), t_.dtype(), t_.device());
    t_.copy_from(src);
  }

 private:
  Tensor t_;
  std::vector<float> copy_;
  float* ptr_ = nullptr;
};

std::vector<int32_t> host_ints(const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  if (t.device() == Device::CPU) {
    std::copy(t.data<int32_t>(), t.data<int32_t>() + t.numel(), v.begin());
  } else {
    const Tensor h = t.to(Device::CPU);
    std::copy(h.data<int32_t>(), h.data<int32_t>() + h.numel(), v.begin());
  }
  return v;
}

void check_local_target(int32_t t, int64_t row, int64_t Vs, const char* op) {
  PRIMUS_CHECK(t < Vs, "{}: target {} of row {} is outside this rank's {} vocabulary columns (targets must be "
               "local to the shard, negative when the label lies on another rank)", op, t, row, Vs);
}

}  // namespace

void Backend::cross_entropy_shard_stats(Tensor& stats, const Tensor& logits, const Tensor& targets) {
  const int64_t N = logits.size(0), Vs = logits.size(1);
  synchronize();
  HostF32 z(logits), st(stats);
  const std::vector<int32_t> t = host_ints(targets);
  float* out = st.data();
  for (int64_t i = 0; i < N; ++i) {
    const float* zi = z.data() + i * Vs;
    check_local_target(t[i], i, Vs, "cross_entropy_shard_stats");
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < Vs; ++j) mx = std::max(mx, zi[j]);
    double sum = 0;
    for (int64_t j = 0; j < Vs; ++j) sum += std::exp(static_cast<double>(zi[j]) - mx);
    out[i] = mx;
    out[N + i] = static_cast<float>(sum);
    out[2 * N + i] = t[i] >= 0 ? zi[t[i]] : 0.f;
  }
  st.commit();
}

void Backend::cross_entropy_shard_finish(Tensor& losses, Tensor* logits_to_grad, const Tensor& gathered_stats,
                                         const Tensor& targets, const Tensor& dloss) {
  const int64_t P = gathered_stats.size(0), N = gathered_stats.size(2);
  synchronize();
  HostF32 stats(gathered_stats), loss(losses);
  const float* s = stats.data();
  std::vector<double> lse(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    double M = -std::numeric_limits<double>::infinity(), target_logit = 0;
    for (int64_t r = 0; r < P; ++r) {
      M = std::max(M, static_cast<double>(s[(r * 3 + 0) * N + i]));
      target_logit += s[(r * 3 + 2) * N + i];
    }
    double S = 0;
    for (int64_t r = 0; r < P; ++r) S += s[(r * 3 + 1) * N + i] * std::exp(s[(r * 3 + 0) * N + i] - M);
    lse[i] = M + std::log(S);
    loss.data()[i] = static_cast<float>(lse[i] - target_logit);
  }
  loss.commit();
  if (logits_to_grad == nullptr) return;
  const int64_t Vs = logits_to_grad->size(1);
  const std::vector<int32_t> t = host_ints(targets);
  HostF32 z(*logits_to_grad), dl(dloss);
  for (int64_t i = 0; i < N; ++i) {
    check_local_target(t[i], i, Vs, "cross_entropy_shard_finish");
    float* zi = z.data() + i * Vs;
    const double w = dl.data()[i];
    for (int64_t j = 0; j < Vs; ++j) zi[j] = static_cast<float>(w * std::exp(static_cast<double>(zi[j]) - lse[i]));
    if (t[i] >= 0) zi[t[i]] -= static_cast<float>(w);
  }
  z.commit();
}

}  // namespace primus::ops
