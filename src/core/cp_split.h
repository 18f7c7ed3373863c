// The load-balanced context-parallel split of a sequence (parallel/context_parallel.h), as one
// function host and device code share: cp rank `rank` of `size` holds chunks rank and
// 2 size - 1 - rank of the 2 size chunks of c tokens each, in that order, as its 2c local
// columns. Local column t -> its position in the whole sequence. size 1: the identity.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace primus {

PRIMUS_HOST_DEVICE inline int64_t context_parallel_position(int64_t t, int64_t local_columns, int rank, int size) {
  const int64_t c = local_columns / 2;
  return t < c ? static_cast<int64_t>(rank) * c + t : (2 * static_cast<int64_t>(size) - 1 - rank) * c + (t - c);
}

}  // namespace primus

