// Launcher detection from environment variables, the timeout variable, and the TCP
// rendezvous between threads of one process (the torchrun-style bootstrap).
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <thread>

#include "../test_util.h"
#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/launch_info.h"
#include "parallel/tcp_rendezvous.h"
#include "parallel/world.h"

using namespace primus;
using namespace primus::parallel;

namespace {

using primus::test::error_of;

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(s);
  return port;
}
}  // namespace

TEST(LaunchInfo, NothingSetIsOneProcess) {
  LaunchInfo l = detect_launch(env_of({}));
  EXPECT_EQ(l.launcher, Launcher::Single);
  EXPECT_EQ(l.rank, 0);
  EXPECT_EQ(l.world_size, 1);
  EXPECT_FALSE(l.distributed());
}

TEST(LaunchInfo, OpenMpiVariables) {
  LaunchInfo l = detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "3"},
                                       {"OMPI_COMM_WORLD_SIZE", "4"},
                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  EXPECT_EQ(l.launcher, Launcher::OpenMpi);
  EXPECT_EQ(l.rank, 3);
  EXPECT_EQ(l.world_size, 4);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.local_world_size, 2);
  EXPECT_TRUE(l.mpi_can_init());
  EXPECT_EQ(l.describe(), "rank 3 of 4 (local 1 of 2) via mpirun");
}

TEST(LaunchInfo, TorchrunVariablesWinOverSlurm) {
  // run_pretrain.sh inside a one-task-per-node Slurm step: the task's SLURM_* are inherited.
  LaunchInfo l = detect_launch(env_of({{"RANK", "5"},
                                       {"WORLD_SIZE", "8"},
                                       {"LOCAL_RANK", "1"},
                                       {"LOCAL_WORLD_SIZE", "4"},
                                       {"MASTER_ADDR", "node07"},
                                       {"MASTER_PORT", "1234"},
                                       {"SLURM_PROCID", "1"},
                                       {"SLURM_NTASKS", "2"}}));
  EXPECT_EQ(l.launcher, Launcher::TorchRun);
  EXPECT_EQ(l.rank, 5);
  EXPECT_EQ(l.world_size, 8);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.local_world_size, 4);
  EXPECT_EQ(l.master_addr, "node07");
  EXPECT_EQ(l.master_port, 1234);
  EXPECT_FALSE(l.mpi_can_init());
}

TEST(LaunchInfo, SlurmWithAndWithoutPmi) {
  LaunchInfo p = detect_launch(env_of({{"PMIX_RANK", "1"},
                                       {"SLURM_PROCID", "1"},
                                       {"SLURM_NTASKS", "4"},
                                       {"SLURM_LOCALID", "1"},
                                       {"SLURM_TASKS_PER_NODE", "2(x2)"}}));
  EXPECT_EQ(p.launcher, Launcher::SlurmPmi);
  EXPECT_EQ(p.world_size, 4);
  EXPECT_EQ(p.local_world_size, 2);
  EXPECT_TRUE(p.mpi_can_init());

  LaunchInfo s = detect_launch(env_of({{"SLURM_PROCID", "2"},
                                       {"SLURM_NTASKS", "4"},
                                       {"SLURM_LOCALID", "0"},
                                       {"SLURM_TASKS_PER_NODE", "2(x2)"},
                                       {"SLURM_LAUNCH_NODE_IPADDR", "10.0.0.5"}}));
  EXPECT_EQ(s.launcher, Launcher::Slurm);
  EXPECT_EQ(s.rank, 2);
  EXPECT_EQ(s.master_addr, "10.0.0.5");
  EXPECT_EQ(s.master_port, 29500);
}

TEST(LaunchInfo, InconsistentEnvironmentsNameTheVariable) {
  std::string m = error_of([] { detect_launch(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}})); });
  EXPECT_NE(m.find("RANK=2 is outside [0, WORLD_SIZE=2)"), std::string::npos) << m;
  m = error_of([] { detect_launch(env_of({{"RANK", "0"}})); });
  EXPECT_NE(m.find("WORLD_SIZE is not"), std::string::npos) << m;
  m = error_of([] { detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}})); });
  EXPECT_NE(m.find("need MASTER_ADDR and MASTER_PORT"), std::string::npos) << m;
  m = error_of([] { detect_launch(env_of({{"OMPI_COMM_WORLD_RANK", "x1"}, {"OMPI_COMM_WORLD_SIZE", "2"}})); });
  EXPECT_NE(m.find("OMPI_COMM_WORLD_RANK='x1' is not an integer"), std::string::npos) << m;
  m = error_of([] { detect_launch(env_of({{"MASTER_PORT", "70000"}})); });
  EXPECT_NE(m.find("MASTER_PORT=70000 is not a TCP port"), std::string::npos) << m;
  m = error_of([] {
    detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"},
                          {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}));
  });
  EXPECT_NE(m.find("local rank 3 is outside [0, 2)"), std::string::npos) << m;
}

TEST(CommOptions, TheTimeoutIsTheCallersNotTheEnvironments) {
  // 10 minutes unless the caller says (primus train: distributed_timeout_minutes); the retired
  // PRIMUS_COMM_TIMEOUT_S changes nothing here (the primus binary refuses it at start-up).
  ::setenv("PRIMUS_COMM_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(CommOptions{}.timeout, std::chrono::minutes(10));
  EXPECT_EQ(WorldOptions{}.comm.timeout, std::chrono::minutes(10));
  ::unsetenv("PRIMUS_COMM_TIMEOUT_S");
  WorldOptions o;
  o.comm.timeout = std::chrono::minutes(3);
  auto world = create_world_communicator(detect_launch(env_of({})), o);
  EXPECT_EQ(world->options().timeout, std::chrono::minutes(3));
}

TEST(World, CpuTorchrunLaunchExplainsThatMpiIsNeeded) {
  LaunchInfo l = detect_launch(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "localhost"}, {"MASTER_PORT", "1"}}));
  WorldOptions o;
  o.device = Device::CPU;
  std::string m = error_of([&] { create_world_communicator(l, o); });
  EXPECT_NE(m.find("CPU ranks communicate through MPI"), std::string::npos) << m;
  EXPECT_NE(m.find("PRIMUS_LAUNCHER=mpirun"), std::string::npos) << m;
}

TEST(TcpRendezvous, ThreeRanksExchangeBytes) {
  const int port = free_port();
  constexpr int kWorld = 3;
  std::vector<std::vector<std::string>> gathered(kWorld);
  std::vector<std::string> broadcast(kWorld);
  std::vector<std::string> errors(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      try {
        TcpRendezvous rdv(r, kWorld, "127.0.0.1", port, std::chrono::seconds(20));
        gathered[r] = rdv.all_gather("hello from " + std::to_string(r));
        broadcast[r] = rdv.broadcast_from_rank0(r == 0 ? std::string("id\0bytes", 8) : "");
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(gathered[r], (std::vector<std::string>{"hello from 0", "hello from 1", "hello from 2"}));
    EXPECT_EQ(broadcast[r], std::string("id\0bytes", 8));
  }
}

TEST(TcpRendezvous, MissingRankIsNamedWithinTheTimeout) {
  const int port = free_port();
  std::string rank0_error, rank1_error;
  std::thread r1([&] {
    try {
      TcpRendezvous rdv(1, 3, "127.0.0.1", port, std::chrono::milliseconds(1500));
    } catch (const Error& e) {
      rank1_error = e.what();
    }
  });
  auto start = std::chrono::steady_clock::now();
  try {
    TcpRendezvous rdv(0, 3, "127.0.0.1", port, std::chrono::milliseconds(500));  // rank 2 never comes
  } catch (const Error& e) {
    rank0_error = e.what();
  }
  r1.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_NE(rank0_error.find("rank(s) 2 of 3 did not connect"), std::string::npos) << rank0_error;
}
