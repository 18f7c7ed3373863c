// Gathering named tensors from every rank of a group onto one rank: how one process
// writes a checkpoint that holds every pipeline stage's tensors.
//
//   NamedTensorList all = gather_named_tensors_to_root(mine, groups.pp());  // rank 0: all
//
// Protocol (send/recv over `group`, one rank after the other, so a root never holds more
// than the finished list): each non-root rank sends the byte length of its metadata (one
// int64), the metadata (for each tensor: name, dtype, shape, as text), then every
// tensor's data in list order. Tensors travel on group.device() and arrive on the root as
// CPU tensors.
#pragma once

#include "core/safetensors.h"
#include "parallel/communicator.h"

namespace primus::parallel {

// Collective over `group`. On `root`: its own tensors (copied to the CPU), then rank 1's,
// rank 2's, ... in rank order; a name already taken by a lower rank is dropped when its
// shape and dtype agree (the last pipeline stage's copy of a tied embedding, equal by
// construction) and is an error naming both ranks otherwise. Other ranks get an empty
// list. Tensors must be contiguous.
NamedTensorList gather_named_tensors_to_root(const NamedTensorList& mine, Communicator& group, int root = 0);

}  // namespace primus::parallel
