#include "parallel/world.h"

#include <cstring>

#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/single_process_communicator.h"
#include "parallel/tcp_rendezvous.h"

namespace primus::parallel {

std::unique_ptr<Communicator> create_world_communicator(const LaunchInfo& launch,
                                                        const WorldOptions& options) {
  if (launch.world_size == 1) return make_single_process_communicator(options.device, "world", options.comm);

  if (options.device == Device::CPU) {
    if (!launch.mpi_can_init()) {
      fail("{}: CPU ranks communicate through MPI, which this launch cannot start. Launch CPU "
           "runs with `mpirun -np N primus ...`, `srun --mpi=pmix ...`, or "
           "`PRIMUS_LAUNCHER=mpirun bash examples/run_pretrain.sh`",
           launch.describe());
    }
    auto world = make_mpi_world_communicator(options.comm);
    PRIMUS_CHECK(world->size() == launch.world_size && world->rank() == launch.rank,
                 "MPI sees rank {} of {} but the launcher environment says {}; were the variables "
                 "of another launcher left in the environment?",
                 world->rank(), world->size(), launch.describe());
    return world;
  }

  NcclWorldSpec spec;
  spec.rank = launch.rank;
  spec.size = launch.world_size;
  spec.cuda_device = options.cuda_device >= 0 ? options.cuda_device : launch.local_rank;
  spec.compute_stream = options.cuda_stream;
  spec.options = options.comm;

  if (launch.mpi_can_init() && mpi_built()) {
    std::unique_ptr<Communicator> mpi = make_mpi_world_communicator(options.comm);
    auto comm = make_nccl_world_communicator(spec, [&](const std::string& on_rank0) {
      Tensor bytes = Tensor::zeros({128}, DType::U8);
      PRIMUS_CHECK(on_rank0.size() <= 128 || launch.rank != 0, "NCCL id larger than 128 bytes");
      if (launch.rank == 0) std::memcpy(bytes.raw(), on_rank0.data(), on_rank0.size());
      mpi->broadcast(bytes, 0);
      return std::string(static_cast<const char*>(bytes.raw()), 128);
    });
    return comm;  // `mpi` is destroyed here: MPI_Finalize, NCCL carries everything from now on
  }

  PRIMUS_CHECK(!launch.master_addr.empty() && launch.master_port > 0,
               "{}: the NCCL id exchange needs MASTER_ADDR and MASTER_PORT (rank 0's host and a "
               "free port)", launch.describe());
  TcpRendezvous rdv(launch.rank, launch.world_size, launch.master_addr, launch.master_port,
                    options.comm.timeout);
  return make_nccl_world_communicator(
      spec, [&](const std::string& on_rank0) { return rdv.broadcast_from_rank0(on_rank0); });
}

}  // namespace primus::parallel
