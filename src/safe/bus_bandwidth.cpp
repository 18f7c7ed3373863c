#include "safe/bus_bandwidth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>

#include "core/error.h"
#include "core/strings.h"

namespace primus::safe {

std::string_view collective_op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::AllReduce: return "all_reduce";
    case CollectiveOp::AllGather: return "all_gather";
    case CollectiveOp::ReduceScatter: return "reduce_scatter";
    case CollectiveOp::AllToAll: return "all_to_all";
    case CollectiveOp::SendRecv: return "send_recv";
  }
  return "?";
}

const std::vector<CollectiveOp>& all_collective_ops() {
  static const std::vector<CollectiveOp> kOps = {CollectiveOp::AllReduce, CollectiveOp::AllGather,
                                                 CollectiveOp::ReduceScatter, CollectiveOp::AllToAll,
                                                 CollectiveOp::SendRecv};
  return kOps;
}

CollectiveOp parse_collective_op(std::string_view name) {
  std::vector<std::string> names;
  for (CollectiveOp op : all_collective_ops()) {
    if (collective_op_name(op) == name) return op;
    names.emplace_back(collective_op_name(op));
  }
  fail("--ops: unknown collective '{}'{}; choose from {}", name, did_you_mean(name, names), fmt::join(names, ", "));
}

double bus_factor(CollectiveOp op, int ranks) {
  PRIMUS_CHECK(ranks >= 1, "bus_factor: {} ranks", ranks);
  const double n = ranks;
  switch (op) {
    case CollectiveOp::AllReduce: return 2.0 * (n - 1) / n;
    case CollectiveOp::AllGather:
    case CollectiveOp::ReduceScatter:
    case CollectiveOp::AllToAll: return (n - 1) / n;
    case CollectiveOp::SendRecv: return 1.0;
  }
  return 0;
}

double algbw_gbps(int64_t bytes, double seconds) {
  PRIMUS_CHECK(seconds > 0, "algbw: time {} s is not positive", seconds);
  return static_cast<double>(bytes) / seconds / 1e9;
}

double busbw_gbps(CollectiveOp op, int ranks, int64_t bytes, double seconds) {
  return algbw_gbps(bytes, seconds) * bus_factor(op, ranks);
}

int64_t collective_bytes(int64_t requested, int ranks, int64_t elem_bytes) {
  const int64_t unit = static_cast<int64_t>(ranks) * elem_bytes;
  return std::max(unit, requested / unit * unit);
}

int64_t parse_byte_size(std::string_view text, std::string_view flag) {
  std::string s(text);
  int64_t mult = 1;
  if (!s.empty()) {
    switch (std::toupper(static_cast<unsigned char>(s.back()))) {
      case 'K': mult = int64_t{1} << 10; break;
      case 'M': mult = int64_t{1} << 20; break;
      case 'G': mult = int64_t{1} << 30; break;
      default: break;
    }
    if (mult > 1) s.pop_back();
  }
  const bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
  PRIMUS_CHECK(digits && s.size() <= 12, "{} '{}': expected a positive whole number of bytes with an optional K, M or "
               "G suffix (powers of 1024), e.g. 1M or 1G", flag, text);
  const int64_t v = std::stoll(s);
  PRIMUS_CHECK(v > 0 && v <= std::numeric_limits<int64_t>::max() / mult, "{} '{}': expected a positive size", flag,
               text);
  return v * mult;
}

std::string format_bytes(int64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return v == static_cast<int64_t>(v) ? fmt::format("{} {}", static_cast<int64_t>(v), kUnits[u])
                                      : fmt::format("{:.3g} {}", v, kUnits[u]);
}

std::vector<int64_t> size_sweep(int64_t min_bytes, int64_t max_bytes, int64_t factor) {
  PRIMUS_CHECK(min_bytes > 0 && min_bytes <= max_bytes, "--min-bytes ({}) must be positive and at most --max-bytes ({})",
               min_bytes, max_bytes);
  PRIMUS_CHECK(factor >= 2, "--step-factor {}: expected 2 or more (each size is the previous times it)", factor);
  std::vector<int64_t> sizes;
  for (int64_t s = min_bytes;; s *= factor) {
    sizes.push_back(s);
    if (s > max_bytes / factor) break;
  }
  return sizes;
}

}  // namespace primus::safe
