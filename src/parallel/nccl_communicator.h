// NCCL backend of Communicator: CUDA tensors, stream-ordered.
//
// Each communicator owns a non-blocking CUDA stream for its collectives. An operation
// waits (on the GPU) for everything issued so far on the caller's compute stream, runs
// on the communication stream, and its handle's wait() makes the compute stream wait for
// it: the host never blocks, so gradient reduction overlaps the rest of backward.
// synchronize() host-waits with the timeout and checks NCCL's asynchronous errors.
//
// Built only when the CUDA build found NCCL (PRIMUS_WITH_NCCL); elsewhere the factory
// throws a message saying so. The unique id that every rank needs is created on rank 0
// and handed around by the caller (world.cpp: MPI broadcast under mpirun/srun, or the TCP
// rendezvous at MASTER_ADDR:MASTER_PORT under torchrun-style variables).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace primus::parallel {

bool nccl_built();

struct NcclWorldSpec {
  int rank = 0;
  int size = 1;
  int cuda_device = 0;               // usually LOCAL_RANK
  void* compute_stream = nullptr;    // cudaStream_t of the ops; nullptr = the default stream
  CommOptions options;
};

// Given rank 0's bytes (on rank 0), returns them on every rank: a broadcast over the
// bootstrap channel.
using ShareFromRank0 = std::function<std::string(const std::string& bytes_on_rank0)>;

std::unique_ptr<Communicator> make_nccl_world_communicator(const NcclWorldSpec& spec,
                                                           const ShareFromRank0& share);

}  // namespace primus::parallel
