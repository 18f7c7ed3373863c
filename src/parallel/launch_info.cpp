#include "parallel/launch_info.h"

#include <charconv>
#include <cstdlib>

#include "core/error.h"

namespace primus::parallel {

std::string_view launcher_name(Launcher l) {
  switch (l) {
    case Launcher::Single: return "single process";
    case Launcher::OpenMpi: return "mpirun";
    case Launcher::TorchRun: return "torchrun-style environment";
    case Launcher::SlurmPmi: return "srun with PMI";
    case Launcher::Slurm: return "srun";
  }
  return "?";
}

std::string LaunchInfo::describe() const {
  std::string s = fmt::format("rank {} of {} (local {} of {}) via {}", rank, world_size, local_rank,
                              local_world_size, launcher_name(launcher));
  if (!master_addr.empty()) s += fmt::format(", rendezvous {}:{}", master_addr, master_port);
  return s;
}

EnvLookup process_env() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

namespace {

std::optional<int> read_int(const EnvLookup& env, std::string_view name) {
  std::optional<std::string> v = env(name);
  if (!v) return std::nullopt;
  int out = 0;
  const char* b = v->data();
  const char* e = b + v->size();
  auto [p, ec] = std::from_chars(b, e, out);
  if (ec != std::errc() || p != e || v->empty()) {
    fail("launcher environment: {}='{}' is not an integer", name, *v);
  }
  return out;
}

int require_int(const EnvLookup& env, std::string_view name, std::string_view because) {
  std::optional<int> v = read_int(env, name);
  if (!v) fail("launcher environment: {} is set but {} is not; {}", because, name,
               "a launcher sets both (or unset the first to run a single process)");
  return *v;
}

// SLURM_TASKS_PER_NODE looks like "2(x3),1": the first count is this node's when all
// nodes run the same number, which is what our launchers do.
std::optional<int> slurm_tasks_on_first_node(const EnvLookup& env) {
  std::optional<std::string> v = env("SLURM_TASKS_PER_NODE");
  if (!v || v->empty()) return std::nullopt;
  int out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || out <= 0) return std::nullopt;
  return out;
}

void read_rendezvous(const EnvLookup& env, LaunchInfo& info) {
  if (auto a = env("MASTER_ADDR"); a && !a->empty()) info.master_addr = *a;
  if (auto p = read_int(env, "MASTER_PORT")) {
    if (*p <= 0 || *p > 65535)
      fail("launcher environment: MASTER_PORT={} is not a TCP port (1..65535)", *p);
    info.master_port = *p;
  }
}

void validate(LaunchInfo& info, std::string_view rank_var, std::string_view size_var) {
  if (info.world_size < 1)
    fail("launcher environment: {}={} must be at least 1", size_var, info.world_size);
  if (info.rank < 0 || info.rank >= info.world_size)
    fail("launcher environment: {}={} is outside [0, {}={})", rank_var, info.rank, size_var,
         info.world_size);
  if (info.local_world_size < 1) info.local_world_size = 1;
  if (info.local_rank < 0 || info.local_rank >= info.local_world_size)
    fail("launcher environment ({}): local rank {} is outside [0, {}) processes on this node",
         launcher_name(info.launcher), info.local_rank, info.local_world_size);
}

}  // namespace

LaunchInfo detect_launch(const EnvLookup& env) {
  LaunchInfo info;
  read_rendezvous(env, info);

  if (auto r = read_int(env, "OMPI_COMM_WORLD_RANK")) {
    info.launcher = Launcher::OpenMpi;
    info.rank = *r;
    info.world_size = require_int(env, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK");
    info.local_rank = read_int(env, "OMPI_COMM_WORLD_LOCAL_RANK").value_or(0);
    info.local_world_size = read_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE").value_or(1);
    validate(info, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
    return info;
  }

  if (auto r = read_int(env, "RANK")) {
    info.launcher = Launcher::TorchRun;
    info.rank = *r;
    info.world_size = require_int(env, "WORLD_SIZE", "RANK");
    info.local_rank = read_int(env, "LOCAL_RANK").value_or(0);
    info.local_world_size = read_int(env, "LOCAL_WORLD_SIZE").value_or(info.local_rank + 1);
    validate(info, "RANK", "WORLD_SIZE");
    if (info.world_size > 1 && (info.master_addr.empty() || info.master_port == 0)) {
      fail("launcher environment: RANK={} WORLD_SIZE={} need MASTER_ADDR and MASTER_PORT for the "
           "rendezvous (got MASTER_ADDR='{}', MASTER_PORT={}); examples/run_pretrain.sh sets them",
           info.rank, info.world_size, info.master_addr, info.master_port);
    }
    return info;
  }

  const bool in_slurm_step = env("SLURM_PROCID").has_value();
  std::optional<int> pmi_rank = read_int(env, "PMIX_RANK");
  std::string_view pmi_rank_var = "PMIX_RANK";
  if (!pmi_rank) {
    pmi_rank = read_int(env, "PMI_RANK");
    pmi_rank_var = "PMI_RANK";
  }
  if (pmi_rank) {
    info.launcher = Launcher::SlurmPmi;
    info.rank = *pmi_rank;
    std::optional<int> size = read_int(env, "PMI_SIZE");
    if (!size) size = read_int(env, "SLURM_NTASKS");
    if (!size) fail("launcher environment: {} is set but neither PMI_SIZE nor SLURM_NTASKS is", pmi_rank_var);
    info.world_size = *size;
    info.local_rank = read_int(env, "SLURM_LOCALID").value_or(read_int(env, "PMI_LOCAL_RANK").value_or(0));
    info.local_world_size = slurm_tasks_on_first_node(env).value_or(
        read_int(env, "PMI_LOCAL_SIZE").value_or(info.local_rank + 1));
    validate(info, pmi_rank_var, "PMI_SIZE/SLURM_NTASKS");
    return info;
  }

  if (in_slurm_step) {
    info.launcher = Launcher::Slurm;
    info.rank = *read_int(env, "SLURM_PROCID");
    info.world_size = require_int(env, "SLURM_NTASKS", "SLURM_PROCID");
    info.local_rank = read_int(env, "SLURM_LOCALID").value_or(0);
    info.local_world_size = slurm_tasks_on_first_node(env).value_or(info.local_rank + 1);
    validate(info, "SLURM_PROCID", "SLURM_NTASKS");
    // srun sets the address of the node it ran on; the first task lives there.
    if (info.master_addr.empty()) {
      if (auto ip = env("SLURM_LAUNCH_NODE_IPADDR"); ip && !ip->empty()) info.master_addr = *ip;
    }
    if (info.master_port == 0) info.master_port = 29500;
    return info;
  }

  return info;  // a single process
}

}  // namespace primus::parallel
