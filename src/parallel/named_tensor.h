// NamedTensor: one trainable parameter as the model, optimizer and checkpoint code see it:
// its name, value, fp32 gradient and which shard of the full tensor this rank holds.
#pragma once

#include <string>

#include "core/tensor.h"
#include "parallel/tensor_parallel_shard.h"

namespace primus {

struct NamedTensor {
  std::string name;             // Megatron-style, e.g. "decoder.layers.3.mlp.linear_fc1.weight"
  Tensor value;                 // the model's weight (param dtype, on the model's device)
  Tensor grad;                  // fp32, same shape; backward ACCUMULATES into it
  bool no_weight_decay = false; // norms and biases (Megatron's no-decay group)
  // Under tensor parallelism `value` is this rank's shard of the full tensor `name` names:
  // shard.full_shape, shard.dim, which piece (shard.rank of shard.count). Replicated
  // (dim -1) for norms and for every parameter of a single-rank model.
  parallel::ShardSpec shard;
  // An expert-parallel parameter (the routed experts' stacked weights under
  // expert_model_parallel_size > 1): expert_shard splits dim 0 of the full tensor over the
  // expert-parallel group, and `shard` is the tensor-parallel split of that piece (its
  // full_shape is the piece's). The gradient is summed over the expert-data-parallel group
  // instead of the data-parallel one (Megatron's allreduce = False parameters;
  // parallel/expert_parallel.h).
  bool expert_parallel = false;
  parallel::ShardSpec expert_shard;  // replicated unless expert_parallel
};

}  // namespace primus
