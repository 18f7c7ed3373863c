// TcpRendezvous: the small bootstrap for torchrun-style launches (no MPI).
//
// Rank 0 listens on MASTER_PORT; every other rank connects to MASTER_ADDR:MASTER_PORT
// (retrying until the timeout, since rank 0 may start later) and says its rank. The
// connections stay open for small exchanges through rank 0 (a star): enough to hand out
// the NCCL unique id and to check that every rank arrived. It carries no tensors; the
// collectives run on NCCL or MPI.
//
// Wire format, all integers little-endian uint32: hello = rank; message = length, bytes.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace primus::parallel {

class TcpRendezvous {
 public:
  // Blocks until all `world_size` ranks are connected. Throws primus::Error naming the
  // address and, on rank 0, the ranks that never arrived within `timeout`.
  TcpRendezvous(int rank, int world_size, const std::string& master_addr, int master_port,
                std::chrono::milliseconds timeout);
  ~TcpRendezvous();
  TcpRendezvous(const TcpRendezvous&) = delete;
  TcpRendezvous& operator=(const TcpRendezvous&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // Every rank passes its bytes; every rank gets all of them in rank order.
  std::vector<std::string> all_gather(const std::string& mine);
  // Returns rank 0's `bytes` on every rank (others' argument is ignored).
  std::string broadcast_from_rank0(const std::string& bytes);

 private:
  int rank_;
  int world_size_;
  std::string where_;  // "MASTER_ADDR:MASTER_PORT" for messages
  std::chrono::milliseconds timeout_;
  int listen_fd_ = -1;
  std::vector<int> peer_fds_;  // rank 0: fd of rank r at [r] (-1 at [0]); others: [0] = rank 0
};

}  // namespace primus::parallel
