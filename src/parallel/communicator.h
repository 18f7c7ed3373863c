// Communicator: the one interface to collectives, whatever carries them.
//
// Backends (each in its own file, created through world.h or split()):
//   MPI    (mpi_communicator.cpp)            CPU tensors; Open MPI from mpirun or srun.
//   NCCL   (nccl_communicator.cpp)           CUDA tensors; stream-ordered.
//   single (single_process_communicator.cpp) world size 1; every collective is the identity.
// The same training code runs on any of them: it calls the blocking methods, or the
// `_async` ones and `wait()`s on the returned handle later (gradient-reduce overlap).
//
// Semantics shared by every backend (the MPI/NCCL meaning of each collective):
//   all_reduce(t, op)        t = op over ranks of t             (in place)
//   reduce_scatter(out, in)  in: n = size*m elements; out (m) on rank r =
//                            op over ranks of in[r*m, (r+1)*m).  `out` may be exactly
//                            that slot of `in` (in place, as the distributed optimizer does).
//   all_gather(out, in)      in: m elements; out (size*m): out[r*m, (r+1)*m) = in of rank r.
//                            `in` may be exactly this rank's slot of `out` (in place).
//   broadcast(t, root)       t = t of rank `root`
//   send(t, peer)/recv(t, peer)  point to point, matched in issue order (no tags; NCCL has none)
//   send_recv(send, to, recv, from)  sends `send` to rank `to` and receives `recv` from rank
//                            `from` as one operation, both posted before either is waited
//                            on (NCCL: one group), so that a ring shift (to = r+1, from = r-1
//                            on every rank) cannot deadlock as separate blocking sends can.
//                            send and recv share a dtype and must not overlap; counts are
//                            the caller's contract with the peers (as for send/recv). `to` is
//                            this rank exactly when `from` is: then recv = send (a copy, the
//                            counts must be equal), as in a 1-rank ring.
//   all_to_all_v(out, out_counts, in, in_counts)  (MoE expert-parallel token dispatch)
//                            `in` holds size() consecutive chunks in rank order: chunk r
//                            (in_counts[r] elements) goes to rank r. `out` receives size()
//                            consecutive chunks: chunk r (out_counts[r] elements) from rank r.
//                            Counts are elements, not bytes; in and out have the same dtype;
//                            sum(in_counts) <= in.numel() and sum(out_counts) <= out.numel()
//                            (elements past the sums are neither sent nor written); a zero
//                            count sends/receives nothing. out_counts[r] on rank q must equal
//                            in_counts[q] on rank r (the caller exchanged the counts first,
//                            e.g. with an all_gather); in and out must not overlap.
// Tensors are contiguous; shapes are ignored, only element counts matter. ReduceOp::Avg is
// the sum divided by size() (computed in fp32 for bf16/fp16).
//
// Failure handling (docs/PARALLEL.md "When a rank dies"): every wait has a deadline
// (CommOptions::timeout). A wait that passes it prints which collective on which
// communicator waited how long, then aborts the whole job (MPI_Abort / ncclCommAbort +
// exit), so no rank hangs forever. abort() is what a rank that fails on its own calls, so
// that the others stop at once with a message naming it.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace primus::parallel {

enum class ReduceOp : uint8_t { Sum, Avg, Max };
std::string_view reduce_op_name(ReduceOp op);

// Options every communicator of one job shares (split() passes them on).
struct CommOptions {
  // How long any single wait may block before the job is aborted. Generous by default:
  // the first step of a run may wait for a slow rank to load data or compile. `primus train`
  // sets it from distributed_timeout_minutes (Megatron's key, default 10), preflight and
  // node-smoke from their --distributed-timeout-minutes.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

// A collective or point-to-point operation in flight.
class CommWork {
 public:
  virtual ~CommWork() = default;
  // MPI: blocks until done. NCCL: orders the caller's stream after the operation (the
  // host does not block; Communicator::synchronize() does). Throws primus::Error on a
  // failed operation; aborts the job after the timeout. Calling it again is a no-op.
  virtual void wait() = 0;
  // True when finished (never blocks; also drives MPI's progress engine).
  virtual bool test() = 0;
};
using CommHandle = std::unique_ptr<CommWork>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's role ("world", "tp", "dp", ...) for error messages.
  virtual const std::string& name() const = 0;
  virtual std::string_view backend() const = 0;  // "mpi", "nccl", "single"
  virtual Device device() const = 0;             // where its tensors must live
  // This process's rank in the job (the world), for messages that must name a process.
  virtual int world_rank() const = 0;
  virtual const CommOptions& options() const = 0;

  virtual CommHandle all_reduce_async(Tensor& t, ReduceOp op) = 0;
  virtual CommHandle reduce_scatter_async(Tensor& out, const Tensor& in, ReduceOp op) = 0;
  virtual CommHandle all_gather_async(Tensor& out, const Tensor& in) = 0;
  virtual CommHandle broadcast_async(Tensor& t, int root) = 0;
  virtual CommHandle send_async(const Tensor& t, int peer) = 0;
  virtual CommHandle recv_async(Tensor& t, int peer) = 0;
  virtual CommHandle send_recv_async(const Tensor& send, int to, Tensor& recv, int from) = 0;
  virtual CommHandle all_to_all_v_async(Tensor& out, std::vector<int64_t> out_counts,
                                        const Tensor& in, std::vector<int64_t> in_counts) = 0;

  // Blocks the host until every rank of this communicator arrived (with the timeout).
  virtual void barrier() = 0;
  // Host-waits for every operation issued so far (NCCL: the stream; MPI: nothing pending
  // after wait()). Use before reading results on the host.
  virtual void synchronize() = 0;

  // Collective over this communicator: ranks with the same `color` form a new group,
  // ordered by (key, rank). color < 0: this rank joins no group and gets nullptr.
  virtual std::unique_ptr<Communicator> split(int color, int key, std::string name) = 0;

  // Stops the whole job now: prints "[primus] rank R (...): reason" to stderr and makes
  // every other rank exit too (MPI_Abort / ncclCommAbort + exit). For a rank that hit an
  // error it cannot recover from while others may be waiting on it.
  [[noreturn]] virtual void abort(int exit_code, std::string_view reason) = 0;

  // Blocking forms: the async call followed by wait().
  void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum) { all_reduce_async(t, op)->wait(); }
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::Sum) {
    reduce_scatter_async(out, in, op)->wait();
  }
  void all_gather(Tensor& out, const Tensor& in) { all_gather_async(out, in)->wait(); }
  void broadcast(Tensor& t, int root) { broadcast_async(t, root)->wait(); }
  void send(const Tensor& t, int peer) { send_async(t, peer)->wait(); }
  void recv(Tensor& t, int peer) { recv_async(t, peer)->wait(); }
  void send_recv(const Tensor& send, int to, Tensor& recv, int from) {
    send_recv_async(send, to, recv, from)->wait();
  }
  void all_to_all_v(Tensor& out, std::vector<int64_t> out_counts, const Tensor& in,
                    std::vector<int64_t> in_counts) {
    all_to_all_v_async(out, std::move(out_counts), in, std::move(in_counts))->wait();
  }

  // One number reduced over the group (loss, grad-norm², token counts), returned on the
  // host. Uses a one-element fp64 tensor on device().
  double all_reduce_value(double v, ReduceOp op = ReduceOp::Sum);
  // The same for a vector of numbers, element by element (per-layer MoE statistics).
  std::vector<double> all_reduce_values(std::vector<double> v, ReduceOp op = ReduceOp::Sum);

  // "mpi communicator 'dp' (rank 1 of 2, world rank 3)"
  std::string describe() const;
};

// Argument checks every backend runs before issuing an operation; each names the
// communicator, the operation and the tensor, with the value seen and the value expected.
namespace comm_checks {
void tensor(const Communicator& c, const char* op, const char* what, const Tensor& t);
void reduce_scatter(const Communicator& c, const Tensor& out, const Tensor& in);
void all_gather(const Communicator& c, const Tensor& out, const Tensor& in);
void peer(const Communicator& c, const char* op, int peer);
// Both tensors defined on device(), one dtype, not overlapping; both peers ranks of the group
// (this rank allowed); `to` is this rank exactly when `from` is, and then the counts agree.
void send_recv(const Communicator& c, const Tensor& send, int to, const Tensor& recv, int from);
// Both counts vectors have size() entries, none negative, their sums fit `out` / `in`, this
// rank's own chunk has the same count both ways, in and out share dtype and device and the
// parts they send / receive do not overlap.
void all_to_all_v(const Communicator& c, const Tensor& out, const std::vector<int64_t>& out_counts,
                  const Tensor& in, const std::vector<int64_t>& in_counts);
// Byte offset of `part` inside `whole` when it lies entirely within it, else -1.
int64_t byte_offset_within(const Tensor& part, const Tensor& whole);
}  // namespace comm_checks

}  // namespace primus::parallel
