#include "parallel/nccl_communicator.h"

#ifdef PRIMUS_WITH_NCCL

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "ops/cuda/cuda_check.h"

namespace primus::parallel {
namespace {

ncclDataType_t nccl_type(DType t, const std::string& where) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
    case DType::I8: return ncclInt8;
    default: break;
  }
  fail("{}: dtype {} is not supported by NCCL (use fp32, bf16, fp16, fp64, int32, int64, int8 "
       "or uint8)", where, dtype_name(t));
}

ncclRedOp_t nccl_op(ReduceOp op, DType t, const std::string& where) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Avg:
      PRIMUS_CHECK(t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64,
                   "{}: ReduceOp::Avg needs a floating-point tensor, got {}", where, dtype_name(t));
      return ncclAvg;
  }
  return ncclSum;
}

// A CUDA event that marks the end of one operation on the communication stream.
struct Event {
  cudaEvent_t e = nullptr;
  Event() { PRIMUS_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(e); }
};

class NcclWork final : public CommWork {
 public:
  NcclWork(std::shared_ptr<Event> done, cudaStream_t compute) : done_(std::move(done)), compute_(compute) {}
  void wait() override {
    if (waited_) return;
    PRIMUS_CUDA_CHECK(cudaStreamWaitEvent(compute_, done_->e, 0));
    waited_ = true;
  }
  bool test() override {
    cudaError_t e = cudaEventQuery(done_->e);
    if (e == cudaErrorNotReady) return false;
    PRIMUS_CUDA_CHECK(e);
    return true;
  }

 private:
  std::shared_ptr<Event> done_;
  cudaStream_t compute_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t compute, int world_rank,
                   std::string name, CommOptions options)
      : comm_(comm), device_(device), compute_(compute), world_rank_(world_rank),
        name_(std::move(name)), options_(options) {
    PRIMUS_CUDA_CHECK(cudaSetDevice(device_));
    PRIMUS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    PRIMUS_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    PRIMUS_NCCL_CHECK(ncclCommCount(comm_, &size_));
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  std::string_view backend() const override { return "nccl"; }
  Device device() const override { return Device::CUDA; }
  int world_rank() const override { return world_rank_; }
  const CommOptions& options() const override { return options_; }

  CommHandle all_reduce_async(Tensor& t, ReduceOp op) override {
    comm_checks::tensor(*this, "all_reduce", "t", t);
    const std::string w = what("all_reduce");
    return enqueue("all_reduce", [&] {
      return ncclAllReduce(t.raw(), t.raw(), static_cast<size_t>(t.numel()), nccl_type(t.dtype(), w),
                           nccl_op(op, t.dtype(), w), comm_, stream_);
    });
  }

  CommHandle reduce_scatter_async(Tensor& out, const Tensor& in, ReduceOp op) override {
    comm_checks::reduce_scatter(*this, out, in);
    const std::string w = what("reduce_scatter");
    const int64_t offset = comm_checks::byte_offset_within(out, in);
    PRIMUS_CHECK(offset < 0 || offset == static_cast<int64_t>(rank_ * out.nbytes()),
                 "{}: `out` overlaps `in` at byte {} but in-place reduce_scatter needs it exactly "
                 "at this rank's slot (byte {})", w, offset, rank_ * out.nbytes());
    return enqueue("reduce_scatter", [&] {
      return ncclReduceScatter(in.raw(), out.raw(), static_cast<size_t>(out.numel()),
                               nccl_type(in.dtype(), w), nccl_op(op, in.dtype(), w), comm_, stream_);
    });
  }

  CommHandle all_gather_async(Tensor& out, const Tensor& in) override {
    comm_checks::all_gather(*this, out, in);
    const std::string w = what("all_gather");
    const int64_t offset = comm_checks::byte_offset_within(in, out);
    PRIMUS_CHECK(offset < 0 || offset == static_cast<int64_t>(rank_ * in.nbytes()),
                 "{}: `in` overlaps `out` at byte {} but in-place all_gather needs it exactly at "
                 "this rank's slot (byte {})", w, offset, rank_ * in.nbytes());
    return enqueue("all_gather", [&] {
      return ncclAllGather(in.raw(), out.raw(), static_cast<size_t>(in.numel()),
                           nccl_type(in.dtype(), w), comm_, stream_);
    });
  }

  CommHandle broadcast_async(Tensor& t, int root) override {
    comm_checks::tensor(*this, "broadcast", "t", t);
    const std::string w = what("broadcast");
    PRIMUS_CHECK(root >= 0 && root < size_, "{}: root {} is not a rank of this group (0..{})", w,
                 root, size_ - 1);
    return enqueue("broadcast", [&] {
      return ncclBroadcast(t.raw(), t.raw(), static_cast<size_t>(t.numel()), nccl_type(t.dtype(), w),
                           root, comm_, stream_);
    });
  }

  CommHandle send_async(const Tensor& t, int peer) override {
    comm_checks::tensor(*this, "send", "t", t);
    comm_checks::peer(*this, "send", peer);
    const std::string w = what("send");
    return enqueue("send", [&] {
      return ncclSend(t.raw(), static_cast<size_t>(t.numel()), nccl_type(t.dtype(), w), peer, comm_,
                      stream_);
    });
  }

  CommHandle recv_async(Tensor& t, int peer) override {
    comm_checks::tensor(*this, "recv", "t", t);
    comm_checks::peer(*this, "recv", peer);
    const std::string w = what("recv");
    return enqueue("recv", [&] {
      return ncclRecv(t.raw(), static_cast<size_t>(t.numel()), nccl_type(t.dtype(), w), peer, comm_,
                      stream_);
    });
  }

  // One NCCL group of the send and the receive (a self pair included: NCCL copies it).
  CommHandle send_recv_async(const Tensor& send, int to, Tensor& recv, int from) override {
    comm_checks::send_recv(*this, send, to, recv, from);
    const std::string w = what("send_recv");
    const ncclDataType_t type = nccl_type(send.dtype(), w);
    return enqueue("send_recv", [&] {
      ncclResult_t st = ncclGroupStart();
      if (st != ncclSuccess) return st;
      st = ncclSend(send.raw(), static_cast<size_t>(send.numel()), type, to, comm_, stream_);
      if (st == ncclSuccess)
        st = ncclRecv(recv.raw(), static_cast<size_t>(recv.numel()), type, from, comm_, stream_);
      const ncclResult_t end = ncclGroupEnd();  // always closes the group it opened
      return st != ncclSuccess ? st : end;
    });
  }

  // One NCCL group of a send and a receive per peer with a nonzero count (NCCL has no
  // all-to-all-v of its own; grouped point-to-point is how it is done, self included).
  CommHandle all_to_all_v_async(Tensor& out, std::vector<int64_t> out_counts, const Tensor& in,
                                std::vector<int64_t> in_counts) override {
    comm_checks::all_to_all_v(*this, out, out_counts, in, in_counts);
    const std::string w = what("all_to_all_v");
    const ncclDataType_t type = nccl_type(in.dtype(), w);
    const size_t es = dtype_size(in.dtype());
    return enqueue("all_to_all_v", [&] {
      ncclResult_t st = ncclGroupStart();
      if (st != ncclSuccess) return st;
      size_t send_off = 0, recv_off = 0;  // bytes
      for (int r = 0; r < size_ && st == ncclSuccess; ++r) {
        const auto n_send = static_cast<size_t>(in_counts[r]);
        const auto n_recv = static_cast<size_t>(out_counts[r]);
        if (n_send > 0) {
          st = ncclSend(static_cast<const char*>(in.raw()) + send_off, n_send, type, r, comm_,
                        stream_);
        }
        if (n_recv > 0 && st == ncclSuccess) {
          st = ncclRecv(static_cast<char*>(out.raw()) + recv_off, n_recv, type, r, comm_,
                        stream_);
        }
        send_off += n_send * es;
        recv_off += n_recv * es;
      }
      const ncclResult_t end = ncclGroupEnd();  // always closes the group it opened
      return st != ncclSuccess ? st : end;
    });
  }

  void barrier() override {
    Tensor one = Tensor::zeros({1}, DType::I32, Device::CUDA);
    all_reduce_async(one, ReduceOp::Sum)->wait();
    synchronize();
  }

  // Host-waits for the communication stream and then the compute stream, polling so that a
  // hang (a dead peer) or an asynchronous NCCL error ends the job instead of blocking it.
  void synchronize() override {
    poll_until_idle(stream_, "synchronize (communication stream)");
    poll_until_idle(compute_, "synchronize (compute stream)");
  }

  std::unique_ptr<Communicator> split(int color, int key, std::string name) override {
    ncclComm_t sub = nullptr;
    PRIMUS_NCCL_CHECK(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr));
    if (sub == nullptr) return nullptr;
    return std::make_unique<NcclCommunicator>(sub, device_, compute_, world_rank_, std::move(name),
                                              options_);
  }

  [[noreturn]] void abort(int exit_code, std::string_view reason) override {
    std::fflush(stdout);
    std::fprintf(stderr, "[primus] rank %d (%s): %.*s\n", world_rank_, describe().c_str(),
                 static_cast<int>(reason.size()), reason.data());
    std::fflush(stderr);
    ncclCommAbort(comm_);
    std::_Exit(exit_code);
  }

 private:
  static constexpr int kTimeoutExitCode = 124;

  std::string what(const char* op) const { return fmt::format("{} on {}", op, describe()); }

  template <typename F>
  CommHandle enqueue(const char* op, F&& issue) {
    // The collective must see every write the compute stream issued before this call.
    auto ready = std::make_shared<Event>();
    PRIMUS_CUDA_CHECK(cudaEventRecord(ready->e, compute_));
    PRIMUS_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready->e, 0));
    ncclResult_t st = issue();
    if (st != ncclSuccess) fail("{}: NCCL error {}", what(op), ncclGetErrorString(st));
    auto done = std::make_shared<Event>();
    PRIMUS_CUDA_CHECK(cudaEventRecord(done->e, stream_));
    return std::make_unique<NcclWork>(std::move(done), compute_);
  }

  void poll_until_idle(cudaStream_t s, const char* op) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    for (;;) {
      cudaError_t e = cudaStreamQuery(s);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) PRIMUS_CUDA_CHECK(e);
      ncclResult_t async_err = ncclSuccess;
      PRIMUS_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_err));
      if (async_err != ncclSuccess && async_err != ncclInProgress) {
        abort(1, fmt::format("{}: NCCL reported an asynchronous error: {}. Aborting every rank.",
                             op, ncclGetErrorString(async_err)));
      }
      const auto waited = clock::now() - start;
      if (waited > options_.timeout) {
        abort(kTimeoutExitCode,
              fmt::format("{} did not complete within {:.1f} s (distributed_timeout_minutes). Another "
                          "rank has exited or hangs; the launcher's log names a rank that exited. "
                          "Aborting every rank.",
                          op, std::chrono::duration<double>(waited).count()));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  ncclComm_t comm_;
  int device_;
  cudaStream_t compute_;
  cudaStream_t stream_ = nullptr;
  int world_rank_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> make_nccl_world_communicator(const NcclWorldSpec& spec,
                                                           const ShareFromRank0& share) {
  PRIMUS_CHECK(spec.size >= 1 && spec.rank >= 0 && spec.rank < spec.size,
               "NCCL world: rank {} of {} is not a valid rank", spec.rank, spec.size);
  PRIMUS_CUDA_CHECK(cudaSetDevice(spec.cuda_device));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  std::string mine;
  if (spec.rank == 0) {
    PRIMUS_NCCL_CHECK(ncclGetUniqueId(&id));
    mine.assign(reinterpret_cast<const char*>(&id), sizeof(id));
  }
  std::string got = share(mine);
  PRIMUS_CHECK(got.size() == sizeof(id),
               "NCCL bootstrap: rank {} received {} bytes of the unique id, expected {}", spec.rank,
               got.size(), sizeof(id));
  std::memcpy(&id, got.data(), sizeof(id));
  ncclComm_t comm = nullptr;
  ncclResult_t st = ncclCommInitRank(&comm, spec.size, id, spec.rank);
  PRIMUS_CHECK(st == ncclSuccess,
               "ncclCommInitRank failed on rank {} of {} (CUDA device {}): {}. Check that every "
               "rank runs on its own GPU (LOCAL_RANK) and can reach the others (NCCL_DEBUG=INFO "
               "shows the details).",
               spec.rank, spec.size, spec.cuda_device, ncclGetErrorString(st));
  return std::make_unique<NcclCommunicator>(comm, spec.cuda_device,
                                            static_cast<cudaStream_t>(spec.compute_stream), spec.rank,
                                            "world", spec.options);
}

}  // namespace primus::parallel

#else  // built without NCCL

namespace primus::parallel {

bool nccl_built() { return false; }

std::unique_ptr<Communicator> make_nccl_world_communicator(const NcclWorldSpec&,
                                                           const ShareFromRank0&) {
  fail("this primus was built without NCCL, so CUDA tensors cannot be communicated; build on a "
       "machine with CUDA and NCCL (/usr/local/cuda/include/nccl.h) or train on CPU with MPI");
}

}  // namespace primus::parallel

#endif
