#include "parallel/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace primus::parallel {
namespace {

using clock = std::chrono::steady_clock;

int remaining_ms(clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

// Waits until fd is readable/writable; false when the deadline passed first.
bool wait_fd(int fd, short events, clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

void send_all(int fd, const void* data, size_t n, clock::time_point deadline, const std::string& who) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    if (!wait_fd(fd, POLLOUT, deadline)) fail("rendezvous: timed out sending to {}", who);
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) fail("rendezvous: sending to {} failed: {} (did that process exit?)", who, std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void recv_all(int fd, void* data, size_t n, clock::time_point deadline, const std::string& who) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    if (!wait_fd(fd, POLLIN, deadline)) fail("rendezvous: timed out waiting for {}", who);
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k == 0) fail("rendezvous: {} closed the connection (that process exited)", who);
    if (k < 0) fail("rendezvous: receiving from {} failed: {}", who, std::strerror(errno));
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t read_u32(int fd, clock::time_point deadline, const std::string& who) {
  unsigned char b[4];
  recv_all(fd, b, 4, deadline, who);
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}

void send_message(int fd, const std::string& bytes, clock::time_point deadline, const std::string& who) {
  std::string framed;
  put_u32(framed, static_cast<uint32_t>(bytes.size()));
  framed += bytes;
  send_all(fd, framed.data(), framed.size(), deadline, who);
}

std::string recv_message(int fd, clock::time_point deadline, const std::string& who) {
  uint32_t n = read_u32(fd, deadline, who);
  PRIMUS_CHECK(n <= (64u << 20), "rendezvous: {} announced a {} byte message (limit 64 MiB): "
               "is something else listening on this port?", who, n);
  std::string s(n, '\0');
  recv_all(fd, s.data(), n, deadline, who);
  return s;
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

TcpRendezvous::TcpRendezvous(int rank, int world_size, const std::string& master_addr,
                             int master_port, std::chrono::milliseconds timeout)
    : rank_(rank), world_size_(world_size), where_(fmt::format("{}:{}", master_addr, master_port)),
      timeout_(timeout) {
  PRIMUS_CHECK(world_size >= 1 && rank >= 0 && rank < world_size,
               "rendezvous: rank {} of world size {} is not a valid rank", rank, world_size);
  PRIMUS_CHECK(master_port > 0 && master_port < 65536,
               "rendezvous: MASTER_PORT={} is not a TCP port (1..65535)", master_port);
  const auto deadline = clock::now() + timeout_;
  peer_fds_.assign(rank == 0 ? world_size : 1, -1);
  if (world_size == 1) return;

  if (rank == 0) {
    listen_fd_ = ::socket(AF_INET6, SOCK_STREAM, 0);
    bool v6 = listen_fd_ >= 0;
    if (!v6) listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    PRIMUS_CHECK(listen_fd_ >= 0, "rendezvous: socket() failed: {}", std::strerror(errno));
    int one = 1, zero = 0;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc;
    if (v6) {
      ::setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));  // v4 too
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_any;
      a.sin6_port = htons(static_cast<uint16_t>(master_port));
      rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    } else {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);
      a.sin_port = htons(static_cast<uint16_t>(master_port));
      rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    }
    if (rc != 0) {
      int err = errno;
      ::close(listen_fd_);
      fail("rendezvous: rank 0 cannot listen on port {}: {}. Another job may use it: pick a free "
           "MASTER_PORT", master_port, std::strerror(err));
    }
    PRIMUS_CHECK(::listen(listen_fd_, world_size) == 0, "rendezvous: listen() failed: {}",
                 std::strerror(errno));
    int arrived = 1;
    while (arrived < world_size) {
      if (!wait_fd(listen_fd_, POLLIN, deadline)) {
        std::string missing;
        for (int r = 1; r < world_size; ++r)
          if (peer_fds_[r] < 0) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        fail("rendezvous at {}: rank(s) {} of {} did not connect within {:.1f} s; check that they "
             "started, that MASTER_ADDR points at rank 0's node and the port is reachable",
             where_, missing, world_size, timeout_.count() / 1000.0);
      }
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      set_nodelay(fd);
      uint32_t r = read_u32(fd, deadline, "a connecting rank");
      if (r == 0 || static_cast<int>(r) >= world_size || peer_fds_[r] >= 0) {
        ::close(fd);
        fail("rendezvous at {}: a process introduced itself as rank {}, which is not a free rank "
             "of world size {} (two jobs sharing MASTER_PORT?)", where_, r, world_size);
      }
      peer_fds_[r] = fd;
      ++arrived;
    }
    return;
  }

  // Other ranks: resolve and connect, retrying while rank 0 is not listening yet.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(master_port);
  int gai = ::getaddrinfo(master_addr.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) fail("rendezvous: cannot resolve MASTER_ADDR='{}': {}", master_addr, ::gai_strerror(gai));
  int fd = -1;
  std::string last_error = "no address";
  while (fd < 0) {
    for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
      int s = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (s < 0) continue;
      if (::connect(s, a->ai_addr, a->ai_addrlen) == 0) {
        fd = s;
      } else {
        last_error = std::strerror(errno);
        ::close(s);
      }
    }
    if (fd >= 0) break;
    if (clock::now() >= deadline) {
      ::freeaddrinfo(res);
      fail("rendezvous: rank {} could not connect to rank 0 at {} within {:.1f} s (last error: "
           "{}); is rank 0 running and MASTER_ADDR/MASTER_PORT the same for every rank?",
           rank, where_, timeout_.count() / 1000.0, last_error);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::freeaddrinfo(res);
  set_nodelay(fd);
  peer_fds_[0] = fd;
  std::string hello;
  put_u32(hello, static_cast<uint32_t>(rank));
  send_all(fd, hello.data(), hello.size(), deadline, "rank 0 at " + where_);
}

TcpRendezvous::~TcpRendezvous() {
  for (int fd : peer_fds_)
    if (fd >= 0) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::vector<std::string> TcpRendezvous::all_gather(const std::string& mine) {
  const auto deadline = clock::now() + timeout_;
  std::vector<std::string> all(world_size_);
  if (world_size_ == 1) {
    all[0] = mine;
    return all;
  }
  if (rank_ == 0) {
    all[0] = mine;
    for (int r = 1; r < world_size_; ++r)
      all[r] = recv_message(peer_fds_[r], deadline, fmt::format("rank {}", r));
    std::string packed;
    for (const std::string& s : all) {
      put_u32(packed, static_cast<uint32_t>(s.size()));
      packed += s;
    }
    for (int r = 1; r < world_size_; ++r)
      send_message(peer_fds_[r], packed, deadline, fmt::format("rank {}", r));
    return all;
  }
  const std::string who = "rank 0 at " + where_;
  send_message(peer_fds_[0], mine, deadline, who);
  std::string packed = recv_message(peer_fds_[0], deadline, who);
  size_t pos = 0;
  for (int r = 0; r < world_size_; ++r) {
    PRIMUS_CHECK(pos + 4 <= packed.size(), "rendezvous: truncated all_gather reply from {}", who);
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n |= uint32_t(static_cast<unsigned char>(packed[pos + i])) << (8 * i);
    pos += 4;
    PRIMUS_CHECK(pos + n <= packed.size(), "rendezvous: truncated all_gather reply from {}", who);
    all[r] = packed.substr(pos, n);
    pos += n;
  }
  return all;
}

std::string TcpRendezvous::broadcast_from_rank0(const std::string& bytes) {
  const auto deadline = clock::now() + timeout_;
  if (world_size_ == 1) return bytes;
  if (rank_ == 0) {
    for (int r = 1; r < world_size_; ++r)
      send_message(peer_fds_[r], bytes, deadline, fmt::format("rank {}", r));
    return bytes;
  }
  return recv_message(peer_fds_[0], deadline, "rank 0 at " + where_);
}

}  // namespace primus::parallel
