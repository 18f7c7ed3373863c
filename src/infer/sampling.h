// Next-token choice from a row of logits: greedy, or sampling with temperature, top-k
// and top-p (nucleus), reproducible from a seed.
//
// With temperature T > 0 the candidates are, in this order (HF's order):
//   1. scaled logits z_i = logit_i / T over the allowed ids [0, vocab_limit);
//   2. top-k (k > 0): the k largest z (ties broken by the lower id);
//   3. softmax p_i over what is left;
//   4. top-p (0 < p < 1): the smallest prefix of the candidates sorted by p (descending)
//      whose total probability reaches p, i.e. a candidate is kept when the probability
//      of the candidates before it is < p (the first one is always kept);
//   5. renormalise and draw by inverting the cumulative distribution with one uniform
//      u in [0, 1).
// u comes from CounterRng(seed, stream_id("generate.sample")) at counter
// (sequence << 32) + step: a prompt's samples depend on the seed, its index in the batch
// and the step only (not on the other prompts or on timing).
// Temperature 0 is greedy: the argmax (lowest id on ties); top-k = 1 gives the same.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace primus::infer {

struct SamplingOptions {
  float temperature = 0.f;  // 0: greedy
  int64_t top_k = 0;        // 0: no top-k
  float top_p = 1.f;        // 1: no top-p
  uint64_t seed = 1234;

  bool greedy() const { return temperature <= 0.f; }
};

// Throws naming the option when a value is out of range (temperature < 0, top_k < 0,
// top_p outside (0, 1]).
void validate(const SamplingOptions& o);

// Index of the largest value (lowest index on ties); NaNs are never chosen unless all are.
int32_t argmax(std::span<const float> logits);

// The candidates of steps 1-4 with their renormalised probabilities, most likely first
// (ties by lower id). Needs temperature > 0.
std::vector<std::pair<int32_t, double>> sampling_distribution(std::span<const float> logits,
                                                              const SamplingOptions& o);

// The draw for (sequence, step): a uniform in [0, 1) with 53 random bits.
double sampling_uniform(uint64_t seed, uint64_t sequence, uint64_t step);

// Step 5 (or the argmax when greedy). `logits` are the allowed ids only (callers pass
// the first vocab_limit entries of a padded row).
int32_t sample_token(std::span<const float> logits, const SamplingOptions& o, uint64_t sequence, uint64_t step);

}  // namespace primus::infer
