// KvCache: what every layer's attention block caches for B sequences, preallocated to max_len
// positions, so that decoding one token reads the past instead of recomputing it.
//
//   layers[l]    the tensors layer l's attention block asks for (AttentionBlock::
//                cache_entry_shapes), each (B, max_len, entry...) in the decoder's compute
//                dtype on its device: GQA caches k and v (B, max_len, Hkv, D) after RoPE;
//                position p of sequence b holds that token's entries.
//   lengths[b]   how many positions of sequence b are filled (the next token's position).
//   positions    int32 (B) on the cache's device: lengths as the decode kernels read them
//                (prefill and CachedDecoder::decode upload them; decode_step advances them on
//                the device, together with the host's lengths, so no copy is needed per step).
//
// The (B, max_len, ...) layout keeps one sequence's first L positions contiguous (rows
// b*max_len .. b*max_len+L of a (B*max_len, entry) view), which the prefill copy and the
// decode attention both rely on.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace primus::infer {

struct KvCache {
  int64_t batch = 0, max_len = 0;
  std::vector<std::vector<Tensor>> layers;  // per layer, per cached tensor
  std::vector<int64_t> lengths;             // host, one per sequence
  Tensor positions;                         // int32 (batch) on the device: lengths, device side

  // Zero-initialised cache: layer l holds one (batch, max_len, shape...) tensor per shape of
  // entry_shapes[l]. Throws naming the sizes when any is not positive.
  static KvCache allocate(const std::vector<std::vector<Shape>>& entry_shapes, int64_t batch, int64_t max_len,
                          DType dtype, Device device);
  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  size_t bytes() const;
};

}  // namespace primus::infer
