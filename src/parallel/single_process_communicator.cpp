#include "parallel/single_process_communicator.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace primus::parallel {
namespace {

class DoneWork final : public CommWork {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class SingleProcessCommunicator final : public Communicator {
 public:
  SingleProcessCommunicator(Device device, std::string name, CommOptions options)
      : device_(device), name_(std::move(name)), options_(options) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  std::string_view backend() const override { return "single"; }
  Device device() const override { return device_; }
  int world_rank() const override { return 0; }
  const CommOptions& options() const override { return options_; }

  CommHandle all_reduce_async(Tensor& t, ReduceOp) override {
    comm_checks::tensor(*this, "all_reduce", "t", t);
    return done();
  }
  CommHandle reduce_scatter_async(Tensor& out, const Tensor& in, ReduceOp) override {
    comm_checks::reduce_scatter(*this, out, in);
    if (out.raw() != in.raw()) out.copy_from(in);
    return done();
  }
  CommHandle all_gather_async(Tensor& out, const Tensor& in) override {
    comm_checks::all_gather(*this, out, in);
    if (out.raw() != in.raw()) out.copy_from(in);
    return done();
  }
  CommHandle broadcast_async(Tensor& t, int root) override {
    comm_checks::tensor(*this, "broadcast", "t", t);
    PRIMUS_CHECK(root == 0, "broadcast on {}: root {} is not a rank of a 1-rank group", describe(),
                 root);
    return done();
  }
  CommHandle send_async(const Tensor&, int peer) override {
    comm_checks::peer(*this, "send", peer);
    return done();
  }
  CommHandle recv_async(Tensor&, int peer) override {
    comm_checks::peer(*this, "recv", peer);
    return done();
  }
  CommHandle send_recv_async(const Tensor& send, int to, Tensor& recv, int from) override {
    comm_checks::send_recv(*this, send, to, recv, from);  // to == from == 0: counts are equal
    if (send.numel() > 0) {
      Tensor dst = Tensor::from_blob(recv.raw(), {recv.numel()}, recv.dtype(), recv.device());
      dst.copy_from(Tensor::from_blob(send.raw(), {send.numel()}, send.dtype(), send.device()));
    }
    return done();
  }
  CommHandle all_to_all_v_async(Tensor& out, std::vector<int64_t> out_counts, const Tensor& in,
                                std::vector<int64_t> in_counts) override {
    comm_checks::all_to_all_v(*this, out, out_counts, in, in_counts);
    // One rank: chunk 0 of `in` is chunk 0 of `out` (the check made both counts equal).
    const int64_t n = in_counts[0];
    if (n > 0) {
      Tensor dst = Tensor::from_blob(out.raw(), {n}, out.dtype(), out.device());
      dst.copy_from(Tensor::from_blob(in.raw(), {n}, in.dtype(), in.device()));
    }
    return done();
  }
  void barrier() override {}
  void synchronize() override {}

  std::unique_ptr<Communicator> split(int color, int, std::string name) override {
    if (color < 0) return nullptr;
    return std::make_unique<SingleProcessCommunicator>(device_, std::move(name), options_);
  }

  [[noreturn]] void abort(int exit_code, std::string_view reason) override {
    std::fflush(stdout);
    std::fprintf(stderr, "[primus] rank 0 (%s): %.*s\n", describe().c_str(),
                 static_cast<int>(reason.size()), reason.data());
    std::fflush(stderr);
    std::_Exit(exit_code);
  }

 private:
  static CommHandle done() { return std::make_unique<DoneWork>(); }

  Device device_;
  std::string name_;
  CommOptions options_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator(Device device, std::string name,
                                                               CommOptions options) {
  return std::make_unique<SingleProcessCommunicator>(device, std::move(name), options);
}

}  // namespace primus::parallel
