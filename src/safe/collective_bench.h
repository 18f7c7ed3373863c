// Collective bandwidth over one Communicator, nccl-tests style: for each op and size, a
// result check (once per op, at the smallest size), warm-up operations, then `iters`
// operations back to back between two barriers; the time of one operation is the slowest
// rank's mean (max over the group), and algbw / busbw follow bus_bandwidth.h.
//
//   fp32 elements; buffers on comm.device() (CPU: MPI, CUDA: NCCL), zero-filled for timing.
//   all_reduce      sum in place over S bytes
//   all_gather      S/n bytes in, S out
//   reduce_scatter  S in, S/n out (sum)
//   all_to_all      S in, S out, S/n to each rank (all_to_all_v with equal counts)
//   send_recv       ring shift: S bytes to rank r+1, S bytes from rank r-1 (Communicator::send_recv)
// Result check: rank r's element i is (r + 1) + (i mod 5) (exact in fp32 sums); every rank
// compares what it received with the closed form, and the check fails if any rank differs.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "safe/bus_bandwidth.h"
#include "safe/rank_checks.h"

namespace primus::safe {

struct CollectiveBenchOptions {
  std::vector<CollectiveOp> ops = all_collective_ops();
  std::vector<int64_t> sizes;  // requested bytes (rounded by collective_bytes)
  int warmup = 2;
  int iters = 5;
};

struct CollectiveResult {
  CollectiveOp op = CollectiveOp::AllReduce;
  int ranks = 1;
  int64_t bytes = 0;      // S, as used (bus_bandwidth.h)
  double seconds = 0;     // one operation, the slowest rank's mean
  double algbw_gbps = 0;
  double busbw_gbps = 0;
};

struct CollectiveRun {
  std::vector<CollectiveResult> rows;
  std::vector<CheckLine> checks;  // one result check per op
};

// Collective over `comm`: every rank calls it with the same options and gets the same run.
CollectiveRun run_collective_bench(parallel::Communicator& comm, const CollectiveBenchOptions& o);

nlohmann::json to_json(const CollectiveRun& run);
CollectiveRun collective_run_from_json(const nlohmann::json& j);

}  // namespace primus::safe
