// Stands in for `primus train` in the launcher tests: reports where it sits in the job,
// checks that it can reach every other rank, and writes "$PRIMUS_PROBE_DIR/rank<R>".
//   MPI launches (mpirun, srun --mpi=pmix): an all_reduce of the ranks over MPI.
//   torchrun-style (run_pretrain.sh's per-process variables): an all_gather over the
//   TCP rendezvous at MASTER_ADDR:MASTER_PORT.
// PRIMUS_PROBE_FAIL_RANK=R makes rank R exit with code 3 at once (launcher failure tests).
// Its communication waits give up after 30 s (a test's ranks that cannot meet fail fast).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "parallel/launch_info.h"
#include "parallel/mpi_communicator.h"
#include "parallel/tcp_rendezvous.h"

using namespace primus;
using namespace primus::parallel;

int main(int argc, char** argv) {
  try {
    LaunchInfo launch = detect_launch();
    if (const char* f = std::getenv("PRIMUS_PROBE_FAIL_RANK"); f && std::atoi(f) == launch.rank) {
      std::fprintf(stderr, "probe: rank %d failing on purpose\n", launch.rank);
      return 3;
    }
    std::string peers;
    CommOptions comm;
    comm.timeout = std::chrono::seconds(30);
    if (launch.world_size > 1 && launch.mpi_can_init()) {
      auto world = make_mpi_world_communicator(comm);
      double sum = world->all_reduce_value(world->rank());
      const int n = world->size();
      PRIMUS_CHECK(sum == n * (n - 1) / 2.0, "probe: MPI sum of ranks {} != {}", sum, n * (n - 1) / 2.0);
      peers = fmt::format("mpi all_reduce over {} ranks", n);
    } else if (launch.world_size > 1) {
      TcpRendezvous rdv(launch.rank, launch.world_size, launch.master_addr, launch.master_port,
                        comm.timeout);
      auto all = rdv.all_gather(std::to_string(launch.rank));
      for (int r = 0; r < launch.world_size; ++r)
        PRIMUS_CHECK(all[r] == std::to_string(r), "probe: rendezvous slot {} holds '{}'", r, all[r]);
      peers = fmt::format("tcp rendezvous with {} ranks", launch.world_size);
    } else {
      peers = "alone";
    }
    std::string args;
    for (int i = 1; i < argc; ++i) args += std::string(i > 1 ? " " : "") + argv[i];
    std::string line = fmt::format("primus-probe {} | {} | args: {}", launch.describe(), peers, args);
    if (const char* job = std::getenv("SLURM_JOB_ID")) line += fmt::format(" | slurm job {}", job);
    std::printf("%s\n", line.c_str());
    if (const char* dir = std::getenv("PRIMUS_PROBE_DIR")) {
      std::ofstream(fmt::format("{}/rank{}", dir, launch.rank)) << line << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe: %s\n", e.what());
    return 1;
  }
}
