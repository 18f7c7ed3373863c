// The cluster preflight's results, its verdict and its report: pure functions of the numbers
// the ranks measured, so that the outlier rules and the report are tested with synthetic data.
//
// Verdict (judge):
//   failed checks  every rank check (GEMM correctness, --min-gemm-tflops, --min-hbm-gbps) and
//                  every collective result check that failed, named with rank and host
//   outliers       (outliers.h, threshold = --outlier-threshold) among
//                    ranks  gemm_tflops and mem_gbps, one sample per rank that measured them
//                    nodes  intra-node busbw per op at the largest size, one sample per node
//                           with 2 or more ranks
//                    rails  inter-node busbw per op at the largest size, one sample per local
//                           rank index (the ranks with that index on every node)
//   exit code      0 when nothing failed and there is no outlier, else 1 (kFailExitCode)
// Report: one markdown document and one JSON object (render_markdown, render_json) holding
// the same facts: settings, nodes, ranks, collective tables per group, checks, outliers.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "safe/collective_bench.h"
#include "safe/rank_checks.h"

namespace primus::safe {

constexpr int kFailExitCode = 1;

struct PreflightSettings {
  std::string device;      // "cpu" or "cuda"
  std::string backend;     // the world communicator's: "mpi", "nccl", "single"
  std::vector<std::string> ops;
  std::vector<int64_t> sizes;  // requested bytes
  int warmup = 0, iters = 0;
  double outlier_threshold = 0.1;
  int emulated_nodes = 0;  // 0: nodes are hostnames
  bool quick = false;
};

struct RankEntry {
  int rank = 0;
  int node = 0;            // index into PreflightResults::nodes
  int local_rank = 0;      // index among the ranks of its node
  RankCompute compute;
};

struct NodeEntry {
  std::string name;        // the hostname (emulated: "<hostname>/node<k>")
  std::vector<int> ranks;
};

struct GroupRun {
  std::string scope;       // "intra-node", "inter-node" or "world"
  std::string label;       // "node host-a", "local rank 0", "all ranks"
  int index = -1;          // the node (intra-node) or the local rank index (inter-node)
  std::vector<int> ranks;
  CollectiveRun run;
};

struct PreflightResults {
  std::string generated;   // UTC time stamp
  PreflightSettings settings;
  std::vector<NodeEntry> nodes;
  std::vector<RankEntry> ranks;
  std::vector<GroupRun> groups;
  std::vector<std::string> notes;  // what was skipped and why
};

struct OutlierEntry {
  std::string kind;        // "rank", "node" or "rail"
  std::string metric;      // "gemm_tflops", "mem_gbps", "all_reduce busbw_gbps", ...
  std::string who;         // "rank 2 on host-b", "node host-b (ranks 4-7)", "rail of local rank 1 (ranks 1, 5)"
  double value = 0, median = 0, below = 0;
};

struct PreflightVerdict {
  std::vector<std::string> failed;  // one line per failed check
  std::vector<OutlierEntry> outliers;
  int exit_code = 0;
  bool pass() const { return exit_code == 0; }
};

PreflightVerdict judge(const PreflightResults& r);
std::string render_markdown(const PreflightResults& r, const PreflightVerdict& v);
nlohmann::json render_json(const PreflightResults& r, const PreflightVerdict& v);

// "rank 2 on host-b"; "node host-b (ranks 4-7)"; "ranks 0, 2, 5" style lists.
std::string rank_label(const PreflightResults& r, int rank);
std::string format_rank_list(const std::vector<int>& ranks);

}  // namespace primus::safe
