#include "parallel/communicator.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

namespace primus::parallel {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
  }
  return "?";
}

double Communicator::all_reduce_value(double v, ReduceOp op) { return all_reduce_values({v}, op)[0]; }

std::vector<double> Communicator::all_reduce_values(std::vector<double> v, ReduceOp op) {
  if (v.empty()) return v;
  Tensor h64 = Tensor::from_blob(v.data(), {static_cast<int64_t>(v.size())}, DType::F64, Device::CPU);
  Tensor t = device() == Device::CPU ? h64 : h64.to(device());
  all_reduce(t, op);
  synchronize();
  if (device() != Device::CPU) h64.copy_from(t);
  return v;
}

std::string Communicator::describe() const {
  return fmt::format("{} communicator '{}' (rank {} of {}, world rank {})", backend(), name(),
                     rank(), size(), world_rank());
}

namespace comm_checks {

void tensor(const Communicator& c, const char* op, const char* what, const Tensor& t) {
  PRIMUS_CHECK(t.defined(), "{} on {}: tensor '{}' is undefined", op, c.describe(), what);
  PRIMUS_CHECK(t.device() == c.device(),
               "{} on {}: tensor '{}' is {} but this communicator works on {} tensors; "
               "copy it with .to({}) or use the {} communicator",
               op, c.describe(), what, t.describe(), device_name(c.device()),
               device_name(c.device()), device_name(t.device()));
}

void reduce_scatter(const Communicator& c, const Tensor& out, const Tensor& in) {
  tensor(c, "reduce_scatter", "out", out);
  tensor(c, "reduce_scatter", "in", in);
  PRIMUS_CHECK(out.dtype() == in.dtype(), "reduce_scatter on {}: out is {} but in is {}",
               c.describe(), out.describe(), in.describe());
  PRIMUS_CHECK(in.numel() == out.numel() * c.size(),
               "reduce_scatter on {}: in has {} elements, expected out's {} x {} ranks = {}; pad "
               "the input to a multiple of the group size",
               c.describe(), in.numel(), out.numel(), c.size(), out.numel() * c.size());
}

void all_gather(const Communicator& c, const Tensor& out, const Tensor& in) {
  tensor(c, "all_gather", "out", out);
  tensor(c, "all_gather", "in", in);
  PRIMUS_CHECK(out.dtype() == in.dtype(), "all_gather on {}: out is {} but in is {}",
               c.describe(), out.describe(), in.describe());
  PRIMUS_CHECK(out.numel() == in.numel() * c.size(),
               "all_gather on {}: out has {} elements, expected in's {} x {} ranks = {}",
               c.describe(), out.numel(), in.numel(), c.size(), in.numel() * c.size());
}

void peer(const Communicator& c, const char* op, int peer) {
  PRIMUS_CHECK(peer >= 0 && peer < c.size() && peer != c.rank(),
               "{} on {}: peer rank {} is not another rank of this group (valid: 0..{} except {})",
               op, c.describe(), peer, c.size() - 1, c.rank());
}

void send_recv(const Communicator& c, const Tensor& send, int to, const Tensor& recv, int from) {
  tensor(c, "send_recv", "send", send);
  tensor(c, "send_recv", "recv", recv);
  PRIMUS_CHECK(send.dtype() == recv.dtype(), "send_recv on {}: send is {} but recv is {}; both need one dtype",
               c.describe(), send.describe(), recv.describe());
  for (auto [what, r] : {std::pair<const char*, int>{"to", to}, {"from", from}}) {
    PRIMUS_CHECK(r >= 0 && r < c.size(), "send_recv on {}: `{}` rank {} is not a rank of this group (0..{})",
                 c.describe(), what, r, c.size() - 1);
  }
  PRIMUS_CHECK((to == c.rank()) == (from == c.rank()),
               "send_recv on {}: to = {} and from = {}, but a rank sends to itself exactly when it receives "
               "from itself (its data has nowhere else to go)",
               c.describe(), to, from);
  if (to == c.rank()) {
    PRIMUS_CHECK(send.numel() == recv.numel(),
                 "send_recv on {}: sending {} elements to itself into a recv of {} elements; the counts must "
                 "be equal",
                 c.describe(), send.numel(), recv.numel());
  }
  if (send.nbytes() > 0 && recv.nbytes() > 0) {
    auto s0 = reinterpret_cast<uintptr_t>(send.raw()), r0 = reinterpret_cast<uintptr_t>(recv.raw());
    PRIMUS_CHECK(s0 + send.nbytes() <= r0 || r0 + recv.nbytes() <= s0,
                 "send_recv on {}: send {} overlaps recv {}; use separate buffers", c.describe(), send.describe(),
                 recv.describe());
  }
}

namespace {
// Checks one counts vector of all_to_all_v and returns its sum (elements).
int64_t all_to_all_counts(const Communicator& c, const char* what,
                          const std::vector<int64_t>& counts, const Tensor& t) {
  PRIMUS_CHECK(static_cast<int64_t>(counts.size()) == c.size(),
               "all_to_all_v on {}: {} has {} entries, expected one per rank ({})", c.describe(),
               what, counts.size(), c.size());
  int64_t sum = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    PRIMUS_CHECK(counts[r] >= 0, "all_to_all_v on {}: {}[{}] is {}, expected a count >= 0",
                 c.describe(), what, r, counts[r]);
    // compared before adding, so that huge counts cannot overflow the sum
    PRIMUS_CHECK(counts[r] <= t.numel() - sum,
                 "all_to_all_v on {}: {} up to rank {} sum to {} elements, but the tensor has only "
                 "{} ({})",
                 c.describe(), what, r, sum + counts[r], t.numel(), t.describe());
    sum += counts[r];
  }
  return sum;
}
}  // namespace

void all_to_all_v(const Communicator& c, const Tensor& out, const std::vector<int64_t>& out_counts,
                  const Tensor& in, const std::vector<int64_t>& in_counts) {
  tensor(c, "all_to_all_v", "out", out);
  tensor(c, "all_to_all_v", "in", in);
  PRIMUS_CHECK(out.dtype() == in.dtype(), "all_to_all_v on {}: out is {} but in is {}",
               c.describe(), out.describe(), in.describe());
  const int64_t out_sum = all_to_all_counts(c, "out_counts", out_counts, out);
  const int64_t in_sum = all_to_all_counts(c, "in_counts", in_counts, in);
  const auto me = static_cast<size_t>(c.rank());
  PRIMUS_CHECK(in_counts[me] == out_counts[me],
               "all_to_all_v on {}: this rank sends itself in_counts[{}] = {} elements but expects "
               "out_counts[{}] = {}; out_counts on rank q must equal in_counts[q] of each sender",
               c.describe(), me, in_counts[me], me, out_counts[me]);
  if (in_sum > 0 && out_sum > 0) {
    const size_t es = dtype_size(in.dtype());
    auto i0 = reinterpret_cast<uintptr_t>(in.raw()), o0 = reinterpret_cast<uintptr_t>(out.raw());
    const uintptr_t i1 = i0 + static_cast<size_t>(in_sum) * es;
    const uintptr_t o1 = o0 + static_cast<size_t>(out_sum) * es;
    PRIMUS_CHECK(i1 <= o0 || o1 <= i0,
                 "all_to_all_v on {}: the {} elements sent from {} overlap the {} elements "
                 "received into {}; use separate buffers",
                 c.describe(), in_sum, in.describe(), out_sum, out.describe());
  }
}

int64_t byte_offset_within(const Tensor& part, const Tensor& whole) {
  auto p = reinterpret_cast<uintptr_t>(part.raw());
  auto w = reinterpret_cast<uintptr_t>(whole.raw());
  if (part.device() != whole.device() || p < w || p + part.nbytes() > w + whole.nbytes()) return -1;
  return static_cast<int64_t>(p - w);
}

}  // namespace comm_checks

}  // namespace primus::parallel
