// The world communicator for this process, chosen from how it was launched.
//
//   world size 1                    -> single-process communicator (no MPI, no NCCL)
//   CPU tensors, mpirun / srun+PMI  -> MPI
//   CPU tensors, torchrun-style     -> error: CPU ranks talk through MPI; use mpirun
//   CUDA tensors                    -> NCCL; its unique id travels by MPI broadcast when MPI
//                                      can initialise (MPI is finalised right after), else
//                                      through the TCP rendezvous at MASTER_ADDR:MASTER_PORT
#pragma once

#include <memory>

#include "parallel/communicator.h"
#include "parallel/launch_info.h"

namespace primus::parallel {

struct WorldOptions {
  Device device = Device::CPU;
  int cuda_device = -1;            // -1: LOCAL_RANK
  void* cuda_stream = nullptr;     // the compute stream NCCL orders against (nullptr: default)
  CommOptions comm;  // the timeout: distributed_timeout_minutes
};

std::unique_ptr<Communicator> create_world_communicator(const LaunchInfo& launch,
                                                        const WorldOptions& options);

}  // namespace primus::parallel
