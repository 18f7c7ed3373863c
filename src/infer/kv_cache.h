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
//
// Slots (continuous batching, infer/generate.h): the B rows are SLOTS. A slot holds one
// sequence at a time; when it finishes, the next waiting prompt is prefilled into the same
// slot (CachedDecoder::prefill_slots: its positions restart at 0, its length and device
// position are reset, the other slots are not touched). Nothing needs clearing between
// occupants: a query at position p reads positions 0..p of its own slot only, and every one
// of those was written by the new occupant.
//
// Sizing from a memory budget (plan_kv_cache): a slot costs
//   bytes_per_slot = max_len x values_per_token x dtype size    (values_per_token: every
//                    layer's cache entries of one position, CachedDecoder::cache_values_per_token)
// and the cache gets S = min(budget / bytes_per_slot, sequences, max_batch) slots.
#pragma once

#include <cstdint>
#include <string>
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

// How many slots of how many positions a generation's cache gets, and from what.
struct KvCacheBudget {
  int64_t memory_bytes = 0;  // 0: no budget (one slot per sequence)
  int64_t max_batch = 0;     // 0: no cap; else at most this many slots
  // The option names that errors and the plan's description use (the CLI's flags, or a
  // config key such as GRPO's generation_kv_cache_memory).
  std::string memory_key = "--kv-cache-memory";
  std::string max_batch_key = "--max-batch";
};

struct KvCachePlan {
  int64_t slots = 0;           // S
  int64_t max_len = 0;         // positions per slot
  int64_t bytes_per_slot = 0;  // max_len x values_per_token x dtype size
  int64_t bytes = 0;           // slots x bytes_per_slot
  std::string limited_by;      // "sequences", "memory" or "max_batch": what set S
};

// S = min(sequences, max_batch if > 0, memory_bytes / bytes_per_slot if > 0). Throws naming
// budget.memory_key and the minimum (one slot, in bytes and MiB) when the budget holds no
// slot, and naming max_batch_key when it is negative.
KvCachePlan plan_kv_cache(int64_t values_per_token, DType dtype, int64_t max_len, int64_t sequences,
                          const KvCacheBudget& budget);

// "2GiB", "512MiB", "1.5GB", "4096" (bytes): binary units KiB/MiB/GiB/TiB (also K/M/G/T),
// decimal KB/MB/GB/TB, case-insensitive, an optional B. Throws naming `key` with examples.
int64_t parse_memory_size(const std::string& text, const std::string& key);
// 2147483648 -> "2.00 GiB" (for stats lines).
std::string format_bytes(int64_t bytes);

}  // namespace primus::infer
