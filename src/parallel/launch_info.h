// LaunchInfo: who started this process and where it sits in the job.
//
// Read from the environment each launcher sets, in this order of precedence:
//   mpirun (Open MPI)       OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   torchrun-style          RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE,
//                           MASTER_ADDR / MASTER_PORT (examples/run_pretrain.sh sets these)
//   srun with PMIx or PMI-2 PMIX_RANK or PMI_RANK / PMI_SIZE (MPI can initialise: srun --mpi=pmix)
//   srun without PMI        SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
//   nothing                 a single process (rank 0 of 1)
// Explicit torchrun-style variables win over Slurm's because run_pretrain.sh spawns its
// processes from inside a Slurm task (one task per node) and sets them per process.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace primus::parallel {

enum class Launcher : uint8_t { Single, OpenMpi, TorchRun, SlurmPmi, Slurm };
std::string_view launcher_name(Launcher l);

struct LaunchInfo {
  Launcher launcher = Launcher::Single;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        // which GPU of this node (CUDA device index)
  int local_world_size = 1;  // processes on this node
  // Rendezvous for the NCCL id when MPI is not there (torchrun-style, plain Slurm).
  std::string master_addr;   // empty when not given
  int master_port = 0;       // 0 when not given

  // MPI_Init can succeed in this process (mpirun, or srun with a PMI plugin).
  bool mpi_can_init() const { return launcher == Launcher::OpenMpi || launcher == Launcher::SlurmPmi; }
  bool distributed() const { return world_size > 1; }
  // "rank 1 of 4 (local 1 of 2) via mpirun"
  std::string describe() const;
};

// Looks a variable up; std::nullopt when unset. Tests pass a map, the program getenv.
using EnvLookup = std::function<std::optional<std::string>(std::string_view)>;
EnvLookup process_env();

// Throws primus::Error naming the variable, its value and what was expected when the
// environment is inconsistent (rank outside [0, size), non-numbers, missing partners).
LaunchInfo detect_launch(const EnvLookup& env);
inline LaunchInfo detect_launch() { return detect_launch(process_env()); }

}  // namespace primus::parallel
