// NamedTensor: one trainable parameter as the model, optimizer and checkpoint code see it.
#pragma once

#include <string>

#include "core/tensor.h"

namespace primus {

struct NamedTensor {
  std::string name;             // Megatron-style, e.g. "decoder.layers.3.mlp.linear_fc1.weight"
  Tensor value;                 // the model's weight (param dtype, on the model's device)
  Tensor grad;                  // fp32, same shape; backward ACCUMULATES into it
  bool no_weight_decay = false; // norms and biases (Megatron's no-decay group)
};

}  // namespace primus
