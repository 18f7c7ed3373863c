#include "safe/collective_bench.h"

#include <fmt/format.h>

#include <chrono>
#include <functional>

#include "core/error.h"

namespace primus::safe {

namespace {

using parallel::Communicator;
using parallel::ReduceOp;
constexpr int64_t kElem = 4;  // fp32

float pattern(int rank, int64_t i) { return static_cast<float>((rank + 1) + (i % 5)); }

Tensor patterned(int rank, int64_t n, int64_t offset, Device dev) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = pattern(rank, offset + i);
  return Tensor::from_floats(v, {n}, DType::F32, dev);
}

// The buffers of one op at one size and the call that issues it.
struct Op {
  Tensor in, out;
  std::function<void()> issue;
};

// `fill`: patterned inputs for the result check; otherwise zeros (no denormals or NaNs
// to slow a CPU reduction down).
Op make_op(Communicator& c, CollectiveOp op, int64_t bytes, bool fill) {
  const int n = c.size(), me = c.rank();
  const Device dev = c.device();
  const int64_t total = bytes / kElem, share = total / n;
  auto buf = [&](int64_t count, int64_t offset) {
    return fill ? patterned(me, count, offset, dev) : Tensor::zeros({count}, DType::F32, dev);
  };
  Op o;
  switch (op) {
    case CollectiveOp::AllReduce:
      o.in = buf(total, 0);
      o.issue = [&c, t = o.in]() mutable { c.all_reduce(t, ReduceOp::Sum); };
      break;
    case CollectiveOp::AllGather:
      o.in = buf(share, 0);
      o.out = Tensor::zeros({total}, DType::F32, dev);
      o.issue = [&c, in = o.in, out = o.out]() mutable { c.all_gather(out, in); };
      break;
    case CollectiveOp::ReduceScatter:
      o.in = buf(total, 0);
      o.out = Tensor::zeros({share}, DType::F32, dev);
      o.issue = [&c, in = o.in, out = o.out]() mutable { c.reduce_scatter(out, in, ReduceOp::Sum); };
      break;
    case CollectiveOp::AllToAll: {
      o.in = buf(total, 0);
      o.out = Tensor::zeros({total}, DType::F32, dev);
      std::vector<int64_t> counts(static_cast<size_t>(n), share);
      o.issue = [&c, in = o.in, out = o.out, counts]() mutable { c.all_to_all_v(out, counts, in, counts); };
      break;
    }
    case CollectiveOp::SendRecv:
      o.in = buf(total, 0);
      o.out = Tensor::zeros({total}, DType::F32, dev);
      o.issue = [&c, in = o.in, out = o.out, to = (me + 1) % n, from = (me + n - 1) % n]() mutable {
        c.send_recv(in, to, out, from);
      };
      break;
  }
  return o;
}

// The number of elements of this rank's result that differ from the closed form.
int64_t mismatches(const Communicator& c, CollectiveOp op, const Op& o, int64_t bytes) {
  const int n = c.size(), me = c.rank();
  const int64_t total = bytes / kElem, share = total / n;
  const std::vector<float> got = (op == CollectiveOp::AllReduce ? o.in : o.out).to_float_vector();
  int64_t bad = 0;
  auto expect = [&](int64_t i, double want) { bad += got[static_cast<size_t>(i)] != static_cast<float>(want); };
  switch (op) {
    case CollectiveOp::AllReduce:
      for (int64_t i = 0; i < total; ++i) {
        double s = 0;
        for (int r = 0; r < n; ++r) s += pattern(r, i);
        expect(i, s);
      }
      break;
    case CollectiveOp::AllGather:
      for (int r = 0; r < n; ++r)
        for (int64_t i = 0; i < share; ++i) expect(r * share + i, pattern(r, i));
      break;
    case CollectiveOp::ReduceScatter:
      for (int64_t i = 0; i < share; ++i) {
        double s = 0;
        for (int r = 0; r < n; ++r) s += pattern(r, me * share + i);
        expect(i, s);
      }
      break;
    case CollectiveOp::AllToAll:
      for (int r = 0; r < n; ++r)
        for (int64_t i = 0; i < share; ++i) expect(r * share + i, pattern(r, me * share + i));
      break;
    case CollectiveOp::SendRecv:
      for (int64_t i = 0; i < total; ++i) expect(i, pattern((me + n - 1) % n, i));
      break;
  }
  return bad;
}

}  // namespace

CollectiveRun run_collective_bench(Communicator& comm, const CollectiveBenchOptions& o) {
  PRIMUS_CHECK(o.iters >= 1 && o.warmup >= 0, "--iters {} must be >= 1 and --warmup {} >= 0", o.iters, o.warmup);
  PRIMUS_CHECK(!o.sizes.empty(), "collective bench: no sizes");
  const int n = comm.size();
  CollectiveRun run;
  for (CollectiveOp op : o.ops) {
    const std::string name(collective_op_name(op));
    {  // result check at the smallest size
      const int64_t bytes = collective_bytes(o.sizes.front(), n, kElem);
      Op c = make_op(comm, op, bytes, true);
      c.issue();
      comm.synchronize();
      const double bad = comm.all_reduce_value(static_cast<double>(mismatches(comm, op, c, bytes)), ReduceOp::Sum);
      run.checks.push_back({name + "_result", bad == 0,
                            fmt::format("{} of {} over {} ranks: {}", name, format_bytes(bytes), n,
                                        bad == 0 ? std::string("every element as expected")
                                                 : fmt::format("{:.0f} elements differ from the expected values", bad))});
    }
    for (int64_t requested : o.sizes) {
      const int64_t bytes = collective_bytes(requested, n, kElem);
      Op b = make_op(comm, op, bytes, false);
      for (int i = 0; i < o.warmup; ++i) b.issue();
      comm.barrier();
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < o.iters; ++i) b.issue();
      comm.synchronize();
      const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / o.iters;
      const double sec = comm.all_reduce_value(mine, ReduceOp::Max);
      run.rows.push_back({op, n, bytes, sec, algbw_gbps(bytes, sec), busbw_gbps(op, n, bytes, sec)});
    }
  }
  return run;
}

nlohmann::json to_json(const CollectiveRun& run) {
  nlohmann::json j;
  j["rows"] = nlohmann::json::array();
  for (const auto& r : run.rows) {
    j["rows"].push_back({{"op", collective_op_name(r.op)},
                         {"ranks", r.ranks},
                         {"bytes", r.bytes},
                         {"time_us", r.seconds * 1e6},
                         {"algbw_gbps", r.algbw_gbps},
                         {"busbw_gbps", r.busbw_gbps}});
  }
  j["checks"] = nlohmann::json::array();
  for (const auto& c : run.checks) j["checks"].push_back({{"name", c.name}, {"pass", c.pass}, {"detail", c.detail}});
  return j;
}

CollectiveRun collective_run_from_json(const nlohmann::json& j) {
  CollectiveRun run;
  for (const auto& r : j.at("rows")) {
    run.rows.push_back({parse_collective_op(r.at("op").get<std::string>()), r.at("ranks").get<int>(),
                        r.at("bytes").get<int64_t>(), r.at("time_us").get<double>() * 1e-6,
                        r.at("algbw_gbps").get<double>(), r.at("busbw_gbps").get<double>()});
  }
  for (const auto& c : j.at("checks"))
    run.checks.push_back({c.at("name").get<std::string>(), c.at("pass").get<bool>(), c.at("detail").get<std::string>()});
  return run;
}

}  // namespace primus::safe
