// copy_into: one tensor's values into another of any float dtype, on any device (checkpoint
// loads and optimizer-state moves, where a tensor saved in one dtype or on the host lands in a
// buffer of another).
#pragma once

#include "ops/ops.h"

namespace primus::ops {

// dst = src, same number of elements: a plain copy when the dtypes match (any devices), else
// src moved to dst's device (when it is not there) and cast (copy_cast: fp32 / bf16 / fp16).
void copy_into(Context& ctx, Tensor& dst, const Tensor& src);

}  // namespace primus::ops
