// ShardSpec: how one rank's tensor relates to the full (single-rank) tensor under tensor
// parallelism, and the copies between the two layouts (checkpoints across a change of
// tensor-parallel size, tests that compare TP runs with a single-rank run).
//
// Layout rule. Along `dim`, the full tensor is the concatenation of `parts` (their
// lengths in the full tensor; no parts = one part spanning the whole dim). Each part is
// cut into `count` equal contiguous pieces and rank `rank` holds piece `rank` of every
// part, concatenated in part order. Examples (Megatron's per-rank layouts):
//
//   column-parallel linear_fc1 (2F, C), parts {F, F}:   local [gate rows r | up rows r]
//   column-parallel linear_qkv ((Hq+2Hkv)D, C), parts {Hq D, Hkv D, Hkv D}:
//                                                       local [q heads r | k groups r | v groups r]
//   row-parallel linear_proj (C, Hq D), dim 1:          local columns r (this rank's heads)
//   vocab-parallel embedding / output layer (V, C):     local vocabulary rows r
//   norms: dim = -1 (replicated, every rank holds the full tensor)
//
// The copies below work on CPU tensors directly; device tensors go through the host
// (they are for checkpoints and tests, not the training step).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace primus::parallel {

class Communicator;

struct ShardSpec {
  int dim = -1;                // -1: replicated
  int rank = 0, count = 1;     // this rank's piece of each part, out of `count`
  std::vector<int64_t> parts;  // lengths along `dim` in the full tensor; empty = one part
  Shape full_shape;            // the single-rank shape (empty = same as the local tensor)

  static ShardSpec replicated(Shape full);
  // Throws (naming `what`, the shape and the count) when a part does not divide by count.
  static ShardSpec split(Shape full, int dim, int rank, int count, std::vector<int64_t> parts = {},
                         const std::string& what = "tensor");

  bool sharded() const { return dim >= 0 && count > 1; }
  Shape local_shape() const;
  std::string describe() const;  // "dim 0 parts [64, 32, 32], piece 1 of 2 of [128, 64]"
};

// One contiguous run of elements shared by the local and the full tensor (row-major).
struct ShardRun {
  int64_t full_offset, local_offset, numel;
};
// The runs that make up the local tensor, in local order (they cover it exactly once).
// A replicated spec gives one run over the whole tensor.
std::vector<ShardRun> shard_runs(const ShardSpec& spec);
// Two splits in a row (an expert-parallel piece of dim 0, then `inner` of that piece, as routed
// experts are under EP x TP): the runs of the local tensor in the full one. `outer` must be a
// dim-0 split or replicated (one contiguous run); inner.full_shape is outer's local shape.
std::vector<ShardRun> shard_runs(const ShardSpec& inner, const ShardSpec& outer);

// This rank's shard of `full` (full_shape), as a new CPU tensor of local_shape().
Tensor slice_shard(const Tensor& full, const ShardSpec& spec);
// Writes `local` into this rank's positions of `full` (CPU, full_shape).
void place_shard(Tensor& full, const Tensor& local, const ShardSpec& spec);
// The full tensor from every rank's shard (shards[r] = rank r's local tensor, same dtype),
// e.g. read from the files of a TP=2 checkpoint. CPU result.
Tensor assemble_shards(const std::vector<Tensor>& shards, const ShardSpec& spec);
// Collective over `tp` (every rank of the group, same order): the full tensor on every
// rank, as a CPU tensor. A replicated spec returns a CPU copy of `local`.
Tensor gather_shards(const Tensor& local, const ShardSpec& spec, Communicator& tp);

}  // namespace primus::parallel
