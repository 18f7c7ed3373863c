// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11).
//
// A value depends only on (seed, stream, index): a tensor's init is the same whatever the
// number of ranks, and a shard can generate its slice of the full tensor directly by
// passing its global element offsets. Streams separate independent uses (one per
// parameter, one per dropout site, one for data shuffling).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "core/tensor.h"

namespace primus {

// Four 32-bit random words for 128-bit counter `counter` under 64-bit key `key`.
std::array<uint32_t, 4> philox4x32(uint64_t counter_lo, uint64_t counter_hi, uint64_t key);

// Stable 64-bit id for a name (FNV-1a): e.g. the stream of "decoder.layers.3.mlp.fc1.weight".
uint64_t stream_id(std::string_view name);

class CounterRng {
 public:
  CounterRng(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  // Element `i` of the uniform [0,1) / standard normal sequences of this stream.
  float uniform(uint64_t i) const;
  float normal(uint64_t i) const;
  uint64_t bits64(uint64_t i) const;

  // Fill a CPU fp32/bf16 tensor with N(mean, std^2) values for global elements
  // [offset, offset + numel): shards pass their offset into the full tensor.
  void fill_normal(Tensor& t, float mean, float std, uint64_t offset = 0) const;
  void fill_uniform(Tensor& t, float lo, float hi, uint64_t offset = 0) const;

 private:
  uint64_t seed_, stream_;
};

}  // namespace primus
