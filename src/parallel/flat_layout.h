// FlatLayout: where each parameter lives in one flat buffer cut into buckets.
//
// Data-parallel gradient reduction and the distributed optimizer both work on a flat
// buffer rather than on tensors one by one: a bucket of many small gradients is one
// collective. The layout is pure arithmetic (no memory), shared by the gradient buffer
// and, for the distributed optimizer, by a parameter buffer of the same shape:
//
//   flat: | bucket 0                      | bucket 1              | ...
//         | p0 | pad | p1 | ... | padding | p5 | ... | padding    |
//   - params are placed in the given order (pass them in the order backward finishes
//     their gradients, i.e. the reverse of the forward order, for the best overlap);
//   - each param starts at a multiple of `align` elements (256 bytes of fp32: aligned,
//     vectorisable views);
//   - a bucket closes once it holds at least `bucket_numel` elements (a param is never
//     split between buckets), and is padded to a multiple of shard_count * align so that
//     the distributed optimizer's shard s of it, [begin + s*S, begin + (s+1)*S) with
//     S = size / shard_count, is aligned too. Padding elements are zero and stay zero.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace primus::parallel {

struct ParamSpec {
  std::string name;
  Shape shape;
};

struct FlatLayoutOptions {
  int64_t bucket_numel = 40'000'000;  // elements per bucket (at least); <= 0: one bucket
  int shard_count = 1;                // data-parallel size when the buffer is sharded
  int64_t align = 64;                 // elements
};

class FlatLayout {
 public:
  struct Param {
    std::string name;
    Shape shape;
    int64_t numel = 0;
    int64_t offset = 0;  // in the flat buffer
    int bucket = 0;
  };
  struct Bucket {
    int64_t begin = 0, end = 0;  // [begin, end) in the flat buffer, padding included
    std::vector<size_t> params;  // indices into params()
    int64_t numel() const { return end - begin; }
  };

  // Throws naming the param when a name repeats or a shape has a negative dim.
  static FlatLayout build(const std::vector<ParamSpec>& params, const FlatLayoutOptions& options);

  const std::vector<Param>& params() const { return params_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  int64_t total_numel() const { return total_; }
  int shard_count() const { return shard_count_; }
  int64_t shard_numel(int bucket) const { return buckets_.at(bucket).numel() / shard_count_; }
  // Index of the param called `name`; throws with the nearest name when unknown.
  size_t index_of(std::string_view name) const;

  // Views into a 1-D buffer of total_numel() elements laid out by this layout (any dtype).
  Tensor param_view(const Tensor& flat, size_t param) const;
  Tensor bucket_view(const Tensor& flat, int bucket) const;
  Tensor shard_view(const Tensor& flat, int bucket, int shard) const;

 private:
  void check_flat(const Tensor& flat) const;

  std::vector<Param> params_;
  std::vector<Bucket> buckets_;
  int64_t total_ = 0;
  int shard_count_ = 1;
};

}  // namespace primus::parallel
