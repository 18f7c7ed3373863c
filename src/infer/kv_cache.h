// KvCache: the keys and values of every layer for B sequences, preallocated to max_len
// positions, so that decoding one token reads the past instead of recomputing it.
//
//   k[l], v[l]   (B, max_len, Hkv, D) in the decoder's compute dtype, on its device;
//                position p of sequence b holds the (RoPE-rotated) key / the value of the
//                token at position p of that sequence.
//   lengths[b]   how many positions of sequence b are filled (the next token's position).
//
// The (B, max_len, Hkv, D) layout keeps one sequence's first L positions contiguous
// (rows b*max_len .. b*max_len+L of a (B*max_len, Hkv*D) view), which the prefill copy
// and the decode attention both rely on.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace primus::infer {

struct KvCache {
  int64_t batch = 0, max_len = 0, kv_heads = 0, head_dim = 0;
  std::vector<Tensor> k, v;       // one per layer
  std::vector<int64_t> lengths;   // host, one per sequence

  // Zero-initialised cache; throws naming the sizes when any is not positive.
  static KvCache allocate(int64_t num_layers, int64_t batch, int64_t max_len, int64_t kv_heads, int64_t head_dim,
                          DType dtype, Device device);
  int64_t num_layers() const { return static_cast<int64_t>(k.size()); }
  size_t bytes() const;
};

}  // namespace primus::infer
