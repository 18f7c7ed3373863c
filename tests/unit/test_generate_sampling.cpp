// Sampling (src/infer/sampling.h): greedy/argmax, temperature, top-k, top-p on hand-made
// distributions whose kept sets and probabilities are known in closed form, the draw's
// frequencies, and determinism for a fixed seed.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "infer/sampling.h"

using namespace primus;
using infer::SamplingOptions;

namespace {

// Logits whose softmax is exactly `p` (up to rounding): log p_i.
std::vector<float> logits_of(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

SamplingOptions sampling(float temperature, int64_t top_k = 0, float top_p = 1.f, uint64_t seed = 1) {
  SamplingOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  return o;
}

// id -> probability of a distribution.
std::map<int32_t, double> as_map(const std::vector<std::pair<int32_t, double>>& d) {
  std::map<int32_t, double> m;
  for (const auto& [id, p] : d) m[id] = p;
  return m;
}

}  // namespace

// Ids 0..5 with probabilities 0.1, 0.4, 0.05, 0.25, 0.15, 0.05 (sorted: 1, 3, 4, 0, 2, 5).
const std::vector<double> kP = {0.1, 0.4, 0.05, 0.25, 0.15, 0.05};

TEST(GenerateSampling, ArgmaxTakesTheLowestIdOnTies) {
  EXPECT_EQ(infer::argmax(std::vector<float>{1.f, 3.f, 3.f, -2.f}), 1);
  EXPECT_EQ(infer::argmax(std::vector<float>{NAN, -1.f, 0.5f}), 2);
  EXPECT_EQ(infer::sample_token(logits_of(kP), sampling(0.f), 0, 0), 1);
}

TEST(GenerateSampling, TemperatureOneIsTheSoftmax) {
  const auto d = infer::sampling_distribution(logits_of(kP), sampling(1.f));
  ASSERT_EQ(d.size(), 6u);
  const std::vector<int32_t> order = {1, 3, 4, 0, 2, 5};  // by probability, lower id on ties
  for (size_t i = 0; i < d.size(); ++i) {
    EXPECT_EQ(d[i].first, order[i]);
    EXPECT_NEAR(d[i].second, kP[order[i]], 1e-7);
  }
}

TEST(GenerateSampling, TemperatureSharpensAndFlattens) {
  // softmax(log p / T) = p^(1/T) / sum p^(1/T)
  for (const float t : {0.5f, 2.f}) {
    double z = 0;
    for (double p : kP) z += std::pow(p, 1.0 / t);
    const auto d = as_map(infer::sampling_distribution(logits_of(kP), sampling(t)));
    for (int32_t i = 0; i < 6; ++i) EXPECT_NEAR(d.at(i), std::pow(kP[i], 1.0 / t) / z, 1e-6) << "T " << t;
  }
}

TEST(GenerateSampling, TopKKeepsTheKMostLikely) {
  const auto d = as_map(infer::sampling_distribution(logits_of(kP), sampling(1.f, 3)));
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d.at(1), 0.4 / 0.8, 1e-7);
  EXPECT_NEAR(d.at(3), 0.25 / 0.8, 1e-7);
  EXPECT_NEAR(d.at(4), 0.15 / 0.8, 1e-7);
}

TEST(GenerateSampling, TopPKeepsTheSmallestSetReachingP) {
  // Cumulative mass in order 1, 3, 4, 0, 2, 5: 0.4, 0.65, 0.8, 0.9, 0.95, 1.0.
  struct Case {
    float top_p;
    std::vector<int32_t> kept;
  };
  for (const Case& c : {Case{0.3f, {1}}, Case{0.5f, {1, 3}}, Case{0.7f, {1, 3, 4}}, Case{0.85f, {1, 3, 4, 0}},
                        Case{0.99f, {1, 3, 4, 0, 2, 5}}}) {
    const auto d = infer::sampling_distribution(logits_of(kP), sampling(1.f, 0, c.top_p));
    ASSERT_EQ(d.size(), c.kept.size()) << "top_p " << c.top_p;
    double mass = 0;
    for (int32_t id : c.kept) mass += kP[id];
    for (size_t i = 0; i < d.size(); ++i) {
      EXPECT_EQ(d[i].first, c.kept[i]) << "top_p " << c.top_p;
      EXPECT_NEAR(d[i].second, kP[c.kept[i]] / mass, 1e-7) << "top_p " << c.top_p;
    }
  }
  // top-k first, then top-p over the renormalised top-k: top-2 gives 0.4/0.65, 0.25/0.65;
  // p = 0.6 keeps only the first (0.615 >= 0.6).
  const auto d = infer::sampling_distribution(logits_of(kP), sampling(1.f, 2, 0.6f));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].first, 1);
  EXPECT_DOUBLE_EQ(d[0].second, 1.0);
}

TEST(GenerateSampling, TopKOneIsGreedy) {
  const std::vector<float> l = {0.3f, -1.f, 2.5f, 2.49f, 0.f};
  for (uint64_t step = 0; step < 50; ++step)
    EXPECT_EQ(infer::sample_token(l, sampling(1.3f, 1, 1.f, step), 0, step), infer::argmax(l));
}

TEST(GenerateSampling, DrawFrequenciesFollowTheDistribution) {
  const SamplingOptions o = sampling(1.f, 0, 0.85f, 4242);  // keeps 1, 3, 4, 0 (mass 0.9)
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int s = 0; s < n; ++s) ++counts[infer::sample_token(logits_of(kP), o, 3, static_cast<uint64_t>(s))];
  EXPECT_EQ(counts.size(), 4u);
  for (int32_t id : {1, 3, 4, 0}) {
    const double want = kP[id] / 0.9, got = static_cast<double>(counts[id]) / n;
    // 5 standard deviations of a binomial frequency
    EXPECT_NEAR(got, want, 5 * std::sqrt(want * (1 - want) / n)) << "id " << id;
  }
}

TEST(GenerateSampling, SameSeedSameTokensOtherSeedOtherTokens) {
  const std::vector<float> l = logits_of({0.2, 0.2, 0.2, 0.2, 0.2});
  auto run = [&](uint64_t seed, uint64_t sequence) {
    std::vector<int32_t> out;
    for (uint64_t s = 0; s < 64; ++s) out.push_back(infer::sample_token(l, sampling(1.f, 0, 1.f, seed), sequence, s));
    return out;
  };
  EXPECT_EQ(run(7, 0), run(7, 0));
  EXPECT_NE(run(7, 0), run(8, 0));
  EXPECT_NE(run(7, 0), run(7, 1));  // each sequence of a batch has its own stream
  const double u = infer::sampling_uniform(7, 0, 0);
  EXPECT_GE(u, 0.0);
  EXPECT_LT(u, 1.0);
}

TEST(GenerateSampling, BadOptionsAreRejected) {
  EXPECT_THROW(infer::validate(sampling(-0.1f)), Error);
  EXPECT_THROW(infer::validate(sampling(1.f, -1)), Error);
  EXPECT_THROW(infer::validate(sampling(1.f, 0, 0.f)), Error);
  EXPECT_THROW(infer::validate(sampling(1.f, 0, 1.5f)), Error);
  EXPECT_NO_THROW(infer::validate(sampling(0.f, 0, 1.f)));
}
