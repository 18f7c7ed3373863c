// A 2+ rank MPI program that fails on purpose, for run_failure_tests.sh:
//   exit   rank 1 exits (code 3) without a word while rank 0 waits in an all_reduce;
//          mpirun must notice, name rank 1 and stop rank 0.
//   hang   rank 1 stops taking part (sleeps) while rank 0 waits in an all_reduce; rank 0's
//          timeout (CommOptions::timeout, `primus train`'s distributed_timeout_minutes) must
//          name the all_reduce and abort the job.
//   throw  rank 1 hits an error and calls abort(): the message names rank 1 and its error,
//          and the job stops.
// Usage: primus_mpi_failure_probe MODE [TIMEOUT_S] (the communicator's timeout; default 30 s).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "parallel/mpi_communicator.h"

using namespace primus;
using namespace primus::parallel;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(1000 * (argc > 2 ? std::atof(argv[2]) : 30.0)));
  auto world = make_mpi_world_communicator(options);
  world->barrier();
  const bool victim = world->rank() == 1;
  if (victim) {
    if (std::strcmp(mode, "exit") == 0) std::_Exit(3);
    if (std::strcmp(mode, "hang") == 0) std::this_thread::sleep_for(std::chrono::seconds(120));
    if (std::strcmp(mode, "throw") == 0) {
      try {
        fail("reading shard 7 of the dataset failed: /data/missing.bin does not exist");
      } catch (const Error& e) {
        world->abort(1, fmt::format("this rank failed: {}", e.what()));
      }
    }
  }
  Tensor t = Tensor::from_floats({1.f}, {1});
  world->all_reduce(t, ReduceOp::Sum);
  std::printf("rank %d finished (mode '%s')\n", world->rank(), mode);
  return 0;
}
