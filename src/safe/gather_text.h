// Text (a hostname, a JSON object of results) from every rank of a communicator, on every
// rank: how the preflight brings each rank's measurements to rank 0 over the job's own
// Communicator (MPI on CPU ranks, NCCL on GPUs), with no side channel.
//
//   all_gather_text(comm, mine)[r] == the `mine` of rank r
// Two all_gathers: the byte lengths (int64), then the bytes padded to the longest.
#pragma once

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace primus::safe {

// Collective over `comm`: every rank calls it, in the same order as its other collectives.
std::vector<std::string> all_gather_text(parallel::Communicator& comm, const std::string& mine);

}  // namespace primus::safe
