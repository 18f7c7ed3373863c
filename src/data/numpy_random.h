// numpy.random.RandomState(seed).shuffle, bit for bit: MT19937 seeded by init_genrand and
// numpy's bounded integers by masked rejection (random_interval). Megatron shuffles its
// document and sample indices with it, so the same seed gives the same sample order.
#pragma once

#include <cstdint>
#include <span>

namespace primus::data {

class NumpyRandomState {
 public:
  explicit NumpyRandomState(uint32_t seed);
  uint32_t next_u32();
  uint64_t next_u64() {
    const uint64_t hi = next_u32();
    return (hi << 32) | next_u32();
  }
  // Uniform integer in [0, max] (numpy's random_interval).
  uint64_t interval(uint64_t max);
  // RandomState.shuffle of a 1-d array: Fisher-Yates from the end.
  template <typename T>
  void shuffle(std::span<T> a) {
    for (size_t i = a.size(); i-- > 1;) {
      const size_t j = static_cast<size_t>(interval(i));
      T tmp = a[i];
      a[i] = a[j];
      a[j] = tmp;
    }
  }

 private:
  void generate();
  uint32_t mt_[624];
  int pos_ = 624;
};

}  // namespace primus::data
