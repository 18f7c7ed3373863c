#include "parallel/mpi_communicator.h"

#ifdef PRIMUS_WITH_MPI

// Only the C API: Open MPI's deprecated C++ bindings would need libmpi_cxx at link time.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "core/dtype.h"

namespace primus::parallel {
namespace {

// ---- bf16 / fp16 reductions (MPI has no 16-bit float types) ------------------------
// Each element: widen both to fp32, combine, round back (nearest even). The result of an
// n-rank sum therefore depends on MPI's reduction order, exactly as with NCCL's bf16.
template <float (*Load)(uint16_t), uint16_t (*Store)(float), bool kMax>
void combine_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    float x = Load(a[i]), y = Load(b[i]);
    b[i] = Store(kMax ? (x > y ? x : y) : x + y);
  }
}

// What MPI_Init gave us, shared by every communicator of the process: MPI_Finalize runs
// when the last one is destroyed (no global state of our own).
struct MpiRuntime {
  bool owns_init = false;
  MPI_Datatype two_bytes = MPI_DATATYPE_NULL;
  MPI_Op bf16_sum = MPI_OP_NULL, bf16_max = MPI_OP_NULL, f16_sum = MPI_OP_NULL,
         f16_max = MPI_OP_NULL;

  MpiRuntime() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      PRIMUS_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed with code {}; was this process "
                   "started by mpirun or srun --mpi=pmix?", rc);
      owns_init = true;
    }
    // Errors come back as codes we turn into primus::Error (with names) instead of
    // MPI's default of killing the job without saying which call failed.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Type_contiguous(2, MPI_BYTE, &two_bytes);
    MPI_Type_commit(&two_bytes);
    MPI_Op_create(&combine_16bit<bf16_bits_to_fp32, fp32_to_bf16_bits, false>, 1, &bf16_sum);
    MPI_Op_create(&combine_16bit<bf16_bits_to_fp32, fp32_to_bf16_bits, true>, 1, &bf16_max);
    MPI_Op_create(&combine_16bit<fp16_bits_to_fp32, fp32_to_fp16_bits, false>, 1, &f16_sum);
    MPI_Op_create(&combine_16bit<fp16_bits_to_fp32, fp32_to_fp16_bits, true>, 1, &f16_max);
  }
  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (MPI_Op* op : {&bf16_sum, &bf16_max, &f16_sum, &f16_max})
      if (*op != MPI_OP_NULL) MPI_Op_free(op);
    if (two_bytes != MPI_DATATYPE_NULL) MPI_Type_free(&two_bytes);
    if (owns_init) MPI_Finalize();
  }

  MPI_Datatype datatype(DType t, const std::string& where) const {
    switch (t) {
      case DType::F32: return MPI_FLOAT;
      case DType::F64: return MPI_DOUBLE;
      case DType::I32: return MPI_INT32_T;
      case DType::I64: return MPI_INT64_T;
      case DType::U8: return MPI_UINT8_T;
      case DType::I8: return MPI_INT8_T;
      case DType::BF16: case DType::F16: return two_bytes;
      default: break;
    }
    fail("{}: dtype {} is not supported by the MPI communicator (use fp32, bf16, fp16, fp64, "
         "int32, int64, int8 or uint8)", where, dtype_name(t));
  }

  MPI_Op op(DType t, ReduceOp r, const std::string& where) const {
    bool max = r == ReduceOp::Max;
    if (t == DType::BF16) return max ? bf16_max : bf16_sum;
    if (t == DType::F16) return max ? f16_max : f16_sum;
    if (r == ReduceOp::Avg) {
      PRIMUS_CHECK(t == DType::F32 || t == DType::F64,
                   "{}: ReduceOp::Avg needs a floating-point tensor, got {}; reduce with Sum "
                   "and divide", where, dtype_name(t));
    }
    return max ? MPI_MAX : MPI_SUM;
  }
};

// t *= alpha on the host, in t's own precision (fp32 math for 16-bit types).
void scale_host(Tensor& t, double alpha) {
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::F32: {
      auto* p = t.data<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(p[i] * alpha);
      break;
    }
    case DType::F64: {
      auto* p = t.data<double>();
      for (int64_t i = 0; i < n; ++i) p[i] *= alpha;
      break;
    }
    case DType::BF16: {
      auto* p = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i)
        p[i] = fp32_to_bf16_bits(static_cast<float>(bf16_bits_to_fp32(p[i]) * alpha));
      break;
    }
    case DType::F16: {
      auto* p = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i)
        p[i] = fp32_to_fp16_bits(static_cast<float>(fp16_bits_to_fp32(p[i]) * alpha));
      break;
    }
    default: fail("cannot average a {} tensor", dtype_name(t.dtype()));
  }
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(text, static_cast<size_t>(len));
}

int as_count(int64_t n, const std::string& where) {
  PRIMUS_CHECK(n <= INT_MAX, "{}: {} elements exceed MPI's int count limit ({}); split the "
               "buffer into smaller buckets (bucket_size)", where, n, INT_MAX);
  return static_cast<int>(n);
}

// all_to_all_v's byte count or displacement for one rank, as MPI's int.
int as_byte_count(int64_t bytes, const char* dir, const char* kind, int rank,
                  const std::string& where) {
  PRIMUS_CHECK(bytes <= INT_MAX, "{}: the {} {} for rank {} is {} bytes, over MPI's int limit "
               "({}); dispatch fewer tokens per call", where, dir, kind, rank, bytes, INT_MAX);
  return static_cast<int>(bytes);
}

class MpiCommunicator;

class MpiWork final : public CommWork {
 public:
  // `keep_alive` holds what MPI reads until the request completes (all_to_all_v's count
  // and displacement arrays); it is released with the work object.
  MpiWork(MpiCommunicator* comm, const char* op, MPI_Request req, std::function<void()> on_done,
          std::shared_ptr<const void> keep_alive = nullptr)
      : comm_(comm), op_(op), reqs_{req, MPI_REQUEST_NULL}, on_done_(std::move(on_done)),
        keep_alive_(std::move(keep_alive)) {}
  // Two requests that complete together (send_recv's send and receive).
  // (The count argument keeps `MpiWork(comm, op, req, nullptr)` calls on the constructor above:
  // Open MPI's MPI_Request is a pointer, so nullptr would otherwise pick this one.)
  MpiWork(MpiCommunicator* comm, const char* op, MPI_Request first, MPI_Request second, int count)
      : comm_(comm), op_(op), reqs_{first, second}, count_(count) {}
  ~MpiWork() override;
  void wait() override;
  bool test() override;

 private:
  void complete() {
    done_ = true;
    if (on_done_) on_done_();
  }
  MpiCommunicator* comm_;
  const char* op_;
  MPI_Request reqs_[2];
  int count_ = 1;
  std::function<void()> on_done_;
  std::shared_ptr<const void> keep_alive_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(std::shared_ptr<MpiRuntime> rt, MPI_Comm comm, std::string name,
                  CommOptions options)
      : rt_(std::move(rt)), comm_(comm), name_(std::move(name)), options_(options) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  std::string_view backend() const override { return "mpi"; }
  Device device() const override { return Device::CPU; }
  int world_rank() const override { return world_rank_; }
  const CommOptions& options() const override { return options_; }

  CommHandle all_reduce_async(Tensor& t, ReduceOp op) override {
    comm_checks::tensor(*this, "all_reduce", "t", t);
    const std::string where = what("all_reduce");
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), as_count(t.numel(), where),
                         rt_->datatype(t.dtype(), where), rt_->op(t.dtype(), op, where), comm_,
                         &req),
          "all_reduce");
    std::function<void()> after;
    if (op == ReduceOp::Avg && size_ > 1) after = [t, n = size_]() mutable { scale_host(t, 1.0 / n); };
    return std::make_unique<MpiWork>(this, "all_reduce", req, std::move(after));
  }

  CommHandle reduce_scatter_async(Tensor& out, const Tensor& in, ReduceOp op) override {
    comm_checks::reduce_scatter(*this, out, in);
    const std::string where = what("reduce_scatter");
    // MPI forbids send and receive buffers that overlap, and its MPI_IN_PLACE puts the
    // result at the start of the buffer rather than in this rank's slot: when `out` lies
    // inside `in` (the distributed optimizer's in-place shard), receive into scratch.
    const bool overlaps = comm_checks::byte_offset_within(out, in) >= 0;
    Tensor recv = overlaps ? Tensor::empty({out.numel()}, out.dtype()) : out;
    MPI_Request req;
    check(MPI_Ireduce_scatter_block(in.raw(), recv.raw(), as_count(out.numel(), where),
                                    rt_->datatype(in.dtype(), where),
                                    rt_->op(in.dtype(), op, where), comm_, &req),
          "reduce_scatter");
    std::function<void()> after;
    if (overlaps || (op == ReduceOp::Avg && size_ > 1)) {
      after = [out, recv, overlaps, avg = op == ReduceOp::Avg, n = size_]() mutable {
        if (avg && n > 1) scale_host(recv, 1.0 / n);
        if (overlaps) out.copy_from(recv);
      };
    }
    return std::make_unique<MpiWork>(this, "reduce_scatter", req, std::move(after));
  }

  CommHandle all_gather_async(Tensor& out, const Tensor& in) override {
    comm_checks::all_gather(*this, out, in);
    const std::string where = what("all_gather");
    const int64_t offset = comm_checks::byte_offset_within(in, out);
    const bool in_place = offset == static_cast<int64_t>(rank_ * in.nbytes());
    PRIMUS_CHECK(offset < 0 || in_place,
                 "{}: `in` overlaps `out` at byte {} but in-place all_gather needs it exactly "
                 "at this rank's slot (byte {})", where, offset, rank_ * in.nbytes());
    MPI_Datatype dt = rt_->datatype(in.dtype(), where);
    int count = as_count(in.numel(), where);
    MPI_Request req;
    check(MPI_Iallgather(in_place ? MPI_IN_PLACE : in.raw(), count, dt, out.raw(), count, dt,
                         comm_, &req),
          "all_gather");
    return std::make_unique<MpiWork>(this, "all_gather", req, nullptr);
  }

  CommHandle broadcast_async(Tensor& t, int root) override {
    comm_checks::tensor(*this, "broadcast", "t", t);
    PRIMUS_CHECK(root >= 0 && root < size_, "{}: root {} is not a rank of this group (0..{})",
                 what("broadcast"), root, size_ - 1);
    const std::string where = what("broadcast");
    MPI_Request req;
    check(MPI_Ibcast(t.raw(), as_count(t.numel(), where), rt_->datatype(t.dtype(), where), root,
                     comm_, &req),
          "broadcast");
    return std::make_unique<MpiWork>(this, "broadcast", req, nullptr);
  }

  CommHandle send_async(const Tensor& t, int peer) override {
    comm_checks::tensor(*this, "send", "t", t);
    comm_checks::peer(*this, "send", peer);
    const std::string where = what("send");
    MPI_Request req;
    check(MPI_Isend(t.raw(), as_count(t.numel(), where), rt_->datatype(t.dtype(), where), peer,
                    kTag, comm_, &req),
          "send");
    return std::make_unique<MpiWork>(this, "send", req, nullptr);
  }

  CommHandle recv_async(Tensor& t, int peer) override {
    comm_checks::tensor(*this, "recv", "t", t);
    comm_checks::peer(*this, "recv", peer);
    const std::string where = what("recv");
    MPI_Request req;
    check(MPI_Irecv(t.raw(), as_count(t.numel(), where), rt_->datatype(t.dtype(), where), peer,
                    kTag, comm_, &req),
          "recv");
    return std::make_unique<MpiWork>(this, "recv", req, nullptr);
  }

  // Both posted before either is waited on (MPI_Sendrecv's non-blocking form, which MPI 3.1
  // lacks), with send/recv's tag: they match in issue order with plain sends and receives,
  // as NCCL's do; a pair with this rank itself is matched by MPI like any other.
  CommHandle send_recv_async(const Tensor& send, int to, Tensor& recv, int from) override {
    comm_checks::send_recv(*this, send, to, recv, from);
    const std::string where = what("send_recv");
    MPI_Request rreq, sreq;
    check(MPI_Irecv(recv.raw(), as_count(recv.numel(), where), rt_->datatype(recv.dtype(), where), from,
                    kTag, comm_, &rreq),
          "send_recv");
    const int rc = MPI_Isend(send.raw(), as_count(send.numel(), where), rt_->datatype(send.dtype(), where), to,
                             kTag, comm_, &sreq);
    if (rc != MPI_SUCCESS) {
      MPI_Cancel(&rreq);
      MPI_Request_free(&rreq);
      check(rc, "send_recv");
    }
    return std::make_unique<MpiWork>(this, "send_recv", sreq, rreq, 2);
  }

  CommHandle all_to_all_v_async(Tensor& out, std::vector<int64_t> out_counts, const Tensor& in,
                                std::vector<int64_t> in_counts) override {
    comm_checks::all_to_all_v(*this, out, out_counts, in, in_counts);
    const std::string where = what("all_to_all_v");
    // Bytes (MPI_BYTE) rather than an MPI datatype: any dtype, and bf16/fp16 need no type.
    struct Args {
      std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
      Tensor out, in;  // the buffers MPI reads and writes, alive until completion
    };
    auto args = std::make_shared<Args>();
    const auto es = static_cast<int64_t>(dtype_size(in.dtype()));
    auto to_bytes = [&](const std::vector<int64_t>& counts, std::vector<int>& c,
                        std::vector<int>& d, const char* dir) {
      c.resize(counts.size());
      d.resize(counts.size());
      int64_t offset = 0;
      for (size_t r = 0; r < counts.size(); ++r) {
        const int rank = static_cast<int>(r);
        c[r] = as_byte_count(counts[r] * es, dir, "count", rank, where);
        d[r] = as_byte_count(offset, dir, "displacement", rank, where);
        offset += counts[r] * es;
      }
    };
    to_bytes(in_counts, args->send_counts, args->send_displs, "send");
    to_bytes(out_counts, args->recv_counts, args->recv_displs, "receive");
    args->out = out;
    args->in = in;
    MPI_Request req;
    check(MPI_Ialltoallv(in.raw(), args->send_counts.data(), args->send_displs.data(), MPI_BYTE,
                         out.raw(), args->recv_counts.data(), args->recv_displs.data(), MPI_BYTE,
                         comm_, &req),
          "all_to_all_v");
    return std::make_unique<MpiWork>(this, "all_to_all_v", req, nullptr, std::move(args));
  }

  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    MpiWork(this, "barrier", req, nullptr).wait();
  }
  void synchronize() override {}

  std::unique_ptr<Communicator> split(int color, int key, std::string name) override {
    MPI_Comm sub = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "split");
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::make_unique<MpiCommunicator>(rt_, sub, std::move(name), options_);
  }

  [[noreturn]] void abort(int exit_code, std::string_view reason) override {
    std::fflush(stdout);
    std::fprintf(stderr, "[primus] rank %d (%s): %.*s\n", world_rank_, describe().c_str(),
                 static_cast<int>(reason.size()), reason.data());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
  }

  // Polls the `n` requests until all are done; past the deadline the whole job is aborted (a
  // peer died or hangs).
  void wait_request(MPI_Request* reqs, int n, const char* op) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    for (int polls = 0;; ++polls) {
      int flag = 0;
      check(MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE), op);
      if (flag) return;
      const auto waited = clock::now() - start;
      if (waited > options_.timeout) {
        abort(kTimeoutExitCode,
              fmt::format("{} did not complete within {:.1f} s (distributed_timeout_minutes). Another "
                          "rank of this group has exited or hangs; the launcher's log names a "
                          "rank that exited. Aborting every rank.",
                          op, std::chrono::duration<double>(waited).count()));
      }
      // Yield first (latency), then sleep briefly: ranks are often oversubscribed on CPU.
      if (polls < 2000) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  bool test_request(MPI_Request* reqs, int n, const char* op) {
    int flag = 0;
    check(MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE), op);
    return flag != 0;
  }

  void check(int rc, const char* op) const {
    if (rc != MPI_SUCCESS) fail("{}: MPI error: {}", what(op), mpi_error_text(rc));
  }

 private:
  static constexpr int kTag = 7;
  static constexpr int kTimeoutExitCode = 124;  // as timeout(1)

  std::string what(const char* op) const { return fmt::format("{} on {}", op, describe()); }

  std::shared_ptr<MpiRuntime> rt_;
  MPI_Comm comm_;
  std::string name_;
  CommOptions options_;
  int rank_ = 0, size_ = 1, world_rank_ = 0;
};

MpiWork::~MpiWork() {
  if (done_) return;
  try {
    wait();
  } catch (const std::exception& e) {
    comm_->abort(1, fmt::format("{} failed while its handle was dropped: {}", op_, e.what()));
  }
}

void MpiWork::wait() {
  if (done_) return;
  comm_->wait_request(reqs_, count_, op_);
  complete();
}

bool MpiWork::test() {
  if (done_) return true;
  if (comm_->test_request(reqs_, count_, op_)) complete();
  return done_;
}

}  // namespace

bool mpi_built() { return true; }

std::unique_ptr<Communicator> make_mpi_world_communicator(CommOptions options) {
  auto rt = std::make_shared<MpiRuntime>();
  MPI_Comm world = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
  PRIMUS_CHECK(rc == MPI_SUCCESS, "MPI_Comm_dup(MPI_COMM_WORLD) failed: {}", mpi_error_text(rc));
  return std::make_unique<MpiCommunicator>(std::move(rt), world, "world", options);
}

}  // namespace primus::parallel

#else  // no MPI in this build

namespace primus::parallel {

bool mpi_built() { return false; }

std::unique_ptr<Communicator> make_mpi_world_communicator(CommOptions) {
  fail("this primus was built without MPI, so CPU ranks cannot communicate; install "
       "libopenmpi-dev (./setup.sh does) and rebuild");
}

}  // namespace primus::parallel

#endif
