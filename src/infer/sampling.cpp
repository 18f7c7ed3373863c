#include "infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace primus::infer {

void validate(const SamplingOptions& o) {
  PRIMUS_CHECK(std::isfinite(o.temperature) && o.temperature >= 0.f,
               "--temperature must be >= 0 (0 = greedy), got {}", o.temperature);
  PRIMUS_CHECK(o.top_k >= 0, "--top-k must be >= 0 (0 = off), got {}", o.top_k);
  PRIMUS_CHECK(o.top_p > 0.f && o.top_p <= 1.f, "--top-p must be in (0, 1] (1 = off), got {}", o.top_p);
}

int32_t argmax(std::span<const float> logits) {
  PRIMUS_CHECK(!logits.empty(), "argmax: empty logits");
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[static_cast<size_t>(best)] || (std::isnan(logits[static_cast<size_t>(best)]) && !std::isnan(logits[i])))
      best = static_cast<int32_t>(i);
  return best;
}

std::vector<std::pair<int32_t, double>> sampling_distribution(std::span<const float> logits, const SamplingOptions& o) {
  validate(o);
  PRIMUS_CHECK(!o.greedy(), "sampling_distribution: temperature must be > 0 (0 is greedy)");
  PRIMUS_CHECK(!logits.empty(), "sampling_distribution: empty logits");
  const size_t n = logits.size();
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Most likely first, lower id first on ties; NaN logits are treated as -inf.
  auto value = [&](int32_t i) {
    const float v = logits[static_cast<size_t>(i)];
    return std::isnan(v) ? -INFINITY : v;
  };
  auto before = [&](int32_t a, int32_t b) { return value(a) > value(b) || (value(a) == value(b) && a < b); };
  size_t keep = n;
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < n) {
    keep = static_cast<size_t>(o.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), before);
  } else {
    std::sort(order.begin(), order.end(), before);
  }
  order.resize(keep);
  // Softmax of z = logit / T over the kept candidates, in double.
  const double inv_t = 1.0 / static_cast<double>(o.temperature);
  const double zmax = static_cast<double>(value(order[0])) * inv_t;
  PRIMUS_CHECK(std::isfinite(zmax), "sampling: the largest logit is {} (not finite)", value(order[0]));
  std::vector<std::pair<int32_t, double>> out;
  out.reserve(keep);
  double total = 0;
  for (int32_t id : order) {
    const double p = std::exp(static_cast<double>(value(id)) * inv_t - zmax);
    out.emplace_back(id, p);
    total += p;
  }
  for (auto& e : out) e.second /= total;
  if (o.top_p < 1.f) {
    double before_mass = 0;
    size_t k = 0;
    while (k < out.size() && (k == 0 || before_mass < static_cast<double>(o.top_p))) before_mass += out[k++].second;
    out.resize(k);
    double kept = 0;
    for (const auto& e : out) kept += e.second;
    for (auto& e : out) e.second /= kept;
  }
  return out;
}

double sampling_uniform(uint64_t seed, uint64_t sequence, uint64_t step) {
  static const uint64_t kStream = stream_id("generate.sample");  // hashed once (DeviceSampler draws B x steps)
  const CounterRng rng(seed, kStream);
  return static_cast<double>(rng.bits64((sequence << 32) + step) >> 11) * 0x1.0p-53;
}

int32_t sample_token(std::span<const float> logits, const SamplingOptions& o, uint64_t sequence, uint64_t step) {
  if (o.greedy()) return argmax(logits);
  const auto dist = sampling_distribution(logits, o);
  const double u = sampling_uniform(o.seed, sequence, step);
  double cum = 0;
  for (const auto& [id, p] : dist) {
    cum += p;
    if (u < cum) return id;
  }
  return dist.back().first;  // u within rounding of 1
}

}  // namespace primus::infer
