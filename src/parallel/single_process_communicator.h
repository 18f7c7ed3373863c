// SingleProcessCommunicator: the communicator of a job with one rank.
//
// Every collective over one rank is the identity (copying when out and in differ), so
// a single-GPU or single-CPU run goes through exactly the code path of a distributed
// one, with no MPI or NCCL underneath.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace primus::parallel {

std::unique_ptr<Communicator> make_single_process_communicator(Device device,
                                                               std::string name = "world",
                                                               CommOptions options = {});

}  // namespace primus::parallel
