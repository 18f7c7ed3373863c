#include "parallel/communicator.h"

#include <cmath>
#include <cstdlib>
#include <string>

namespace primus::parallel {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
  }
  return "?";
}

CommOptions comm_options_from_env_value(std::string_view value) {
  CommOptions o;
  if (value.empty()) return o;
  std::string text(value);
  char* end = nullptr;
  double seconds = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !std::isfinite(seconds) || seconds <= 0) {
    fail("PRIMUS_COMM_TIMEOUT_S='{}' is not a positive number of seconds; set e.g. "
         "PRIMUS_COMM_TIMEOUT_S=600 (the default) or unset it",
         text);
  }
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0 + 0.5));
  if (o.timeout.count() == 0) o.timeout = std::chrono::milliseconds(1);
  return o;
}

CommOptions comm_options_from_env() {
  const char* v = std::getenv("PRIMUS_COMM_TIMEOUT_S");
  return comm_options_from_env_value(v ? std::string_view(v) : std::string_view());
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

int64_t byte_offset_within(const Tensor& part, const Tensor& whole) {
  auto p = reinterpret_cast<uintptr_t>(part.raw());
  auto w = reinterpret_cast<uintptr_t>(whole.raw());
  if (part.device() != whole.device() || p < w || p + part.nbytes() > w + whole.nbytes()) return -1;
  return static_cast<int64_t>(p - w);
}

}  // namespace comm_checks

}  // namespace primus::parallel
