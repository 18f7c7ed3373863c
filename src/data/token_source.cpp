#include "data/token_source.h"

#include <fmt/core.h>

#include "core/error.h"

namespace primus::data {

namespace {
uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
}  // namespace

MockTokenSource::MockTokenSource(int64_t vocab_size, int32_t eod, uint64_t seed, int64_t mean_length, int64_t count)
    : vocab_(vocab_size), mean_(mean_length), count_(count), eod_(eod), seed_(seed) {
  PRIMUS_CHECK(vocab_size >= 2, "mock_data needs vocab_size >= 2 (got {})", vocab_size);
  PRIMUS_CHECK(mean_length >= 1, "mock_data needs seq_length >= 1 (got {})", mean_length);
  PRIMUS_CHECK(eod >= 0 && eod < vocab_size, "mock_data: eod token {} is outside the vocabulary [0, {})", eod,
               vocab_size);
}

int32_t MockTokenSource::sequence_length(int64_t i) const {
  return static_cast<int32_t>(1 + mix(seed_ ^ mix(static_cast<uint64_t>(i))) % static_cast<uint64_t>(2 * mean_));
}

void MockTokenSource::read(int64_t i, int64_t offset, int64_t length, int32_t* out) const {
  const int32_t n = sequence_length(i);
  PRIMUS_CHECK(offset >= 0 && length >= 0 && offset + length <= n, "mock_data: read [{}, {}) of document {} of length {}",
               offset, offset + length, i, n);
  const uint64_t doc = mix(seed_ * 31 + static_cast<uint64_t>(i) + 1);
  for (int64_t k = 0; k < length; ++k) {
    const int64_t pos = offset + k;
    if (pos == n - 1) {
      out[k] = eod_;
      continue;
    }
    // An id in [0, vocab) skipping eod.
    int64_t v = static_cast<int64_t>(mix(doc ^ static_cast<uint64_t>(pos)) % static_cast<uint64_t>(vocab_ - 1));
    if (v >= eod_) ++v;
    out[k] = static_cast<int32_t>(v);
  }
}

std::string MockTokenSource::cache_key() const {
  return fmt::format("mock:{}:{}:{}:{}:{}", vocab_, eod_, seed_, mean_, count_);
}

}  // namespace primus::data
