// MPI backend of Communicator: CPU tensors, over Open MPI (Debian's libopenmpi).
//
// Used for CPU training (the reference path, and the multi-rank tests in CI) and as the
// bootstrap that hands NCCL its unique id when the job was started by mpirun or srun.
// Data types: fp32, fp64, int32, int64, uint8 natively; bf16 and fp16 as a 2-byte MPI
// type with user-defined sum/max that add in fp32 and round to nearest even per step
// (what NCCL does for bf16). Avg = sum, then a division by the group size.
//
// Every wait polls MPI_Test against CommOptions::timeout; past it the job is aborted with
// MPI_Abort and a message naming the operation and the communicator. Errors are returned
// (MPI_ERRORS_RETURN), not fatal, and become primus::Error naming the operation.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace primus::parallel {

// True when this binary was built with MPI (PRIMUS_WITH_MPI).
bool mpi_built();

// Initializes MPI if needed (MPI_THREAD_FUNNELED: only the thread that created the
// communicators calls them) and returns a communicator over a duplicate of
// MPI_COMM_WORLD named "world". MPI_Finalize runs when it and every communicator split
// from it are gone; work handles must not outlive their communicator. Throws in a build
// without MPI. Must be called once per process (the launcher must be mpirun or srun).
std::unique_ptr<Communicator> make_mpi_world_communicator(CommOptions options = {});

}  // namespace primus::parallel
