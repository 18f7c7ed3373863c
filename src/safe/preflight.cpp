#include "safe/preflight.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/tensor.h"
#include "parallel/launch_info.h"
#include "parallel/world.h"
#include "safe/bus_bandwidth.h"
#include "safe/collective_bench.h"
#include "safe/gather_text.h"
#include "safe/gpu_bench.h"
#include "safe/preflight_report.h"
#include "safe/rank_checks.h"

namespace primus::safe {

namespace {

namespace fs = std::filesystem;
using parallel::Communicator;

std::string utc_now(const char* format) {
  const std::time_t now = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof(buf), format, std::gmtime(&now));
  return buf;
}

// Which node each rank is on: hostnames in order of first appearance, or --emulate-nodes
// blocks of consecutive ranks.
std::vector<NodeEntry> assign_nodes(const std::vector<std::string>& hosts, int emulate) {
  const int n = static_cast<int>(hosts.size());
  std::vector<NodeEntry> nodes;
  if (emulate > 0) {
    PRIMUS_CHECK(n % emulate == 0, "--emulate-nodes {}: the {} ranks do not split evenly into {} nodes; pick a divisor "
                 "of the world size", emulate, n, emulate);
    const int per = n / emulate;
    for (int k = 0; k < emulate; ++k) {
      NodeEntry e{fmt::format("{}/node{}", hosts[static_cast<size_t>(k * per)], k), {}};
      for (int r = k * per; r < (k + 1) * per; ++r) e.ranks.push_back(r);
      nodes.push_back(e);
    }
    return nodes;
  }
  std::map<std::string, size_t> index;
  for (int r = 0; r < n; ++r) {
    auto [it, fresh] = index.emplace(hosts[static_cast<size_t>(r)], nodes.size());
    if (fresh) nodes.push_back({hosts[static_cast<size_t>(r)], {}});
    nodes[it->second].ranks.push_back(r);
  }
  return nodes;
}

// This rank's compute checks; an exception becomes a failed check (the other ranks must not
// be left waiting in the next collective), whose result still names the host for the report.
RankCompute compute_checks(const PreflightOptions& o, int cuda_device) {
  RankCompute r = run_compute_checks(o.device, cuda_device, {o.quick, o.min_gemm_tflops, o.min_hbm_gbps});
  if (r.host_summary.empty()) r.host_summary = host_summary();
  return r;
}

// Runs the collectives on `group` (when it has 2+ ranks) and returns, on the group's rank 0,
// its JSON for the world gather; other ranks return "".
std::string group_json(Communicator* group, const CollectiveBenchOptions& bench, const char* scope, int index,
                       const std::string& label, const std::vector<int>& world_ranks) {
  if (group == nullptr || group->size() < 2) return "";
  const CollectiveRun run = run_collective_bench(*group, bench);
  if (group->rank() != 0) return "";
  nlohmann::json j = to_json(run);
  j["scope"] = scope;
  j["index"] = index;
  j["label"] = label;
  j["ranks"] = world_ranks;
  return j.dump();
}

}  // namespace

int run_preflight(const PreflightOptions& o) {
  PRIMUS_CHECK(o.device == "cpu" || o.device == "cuda",
               "--device '{}': expected cuda (GPU ranks, NCCL) or cpu (CPU ranks, MPI)", o.device);
  PRIMUS_CHECK(o.outlier_threshold > 0 && o.outlier_threshold < 1,
               "--outlier-threshold {}: expected a fraction in (0, 1), e.g. 0.1 for 10% below the median",
               o.outlier_threshold);
  PRIMUS_CHECK(o.emulate_nodes >= 0, "--emulate-nodes {}: expected 0 (real nodes) or a node count", o.emulate_nodes);
  CollectiveBenchOptions bench;
  bench.sizes = size_sweep(parse_byte_size(o.min_bytes, "--min-bytes"), parse_byte_size(o.max_bytes, "--max-bytes"),
                           o.step_factor);
  bench.warmup = o.warmup;
  bench.iters = o.iters;
  PRIMUS_CHECK(o.iters >= 1 && o.warmup >= 0, "--iters {} must be >= 1 and --warmup {} >= 0", o.iters, o.warmup);
  if (!o.ops.empty()) {
    bench.ops.clear();
    for (const std::string& name : o.ops) bench.ops.push_back(parse_collective_op(name));
  }

  const parallel::LaunchInfo launch = parallel::detect_launch();
  if (o.device == "cuda") {
    if (!gpu_ready("preflight")) {
      std::fprintf(stderr, "primus preflight: --device cpu runs the CPU-rank preflight instead (CPU GEMM, DRAM, MPI "
                   "collectives).\n");
      return kNoGpuExitCode;
    }
    const int gpus = visible_gpu_count();
    PRIMUS_CHECK(launch.local_rank < gpus, "{}: local rank {} has no GPU of its own ({} visible); start at most {} "
                 "ranks per node", launch.describe(), launch.local_rank, gpus, gpus);
  }
  parallel::WorldOptions wo;
  wo.device = o.device == "cpu" ? Device::CPU : Device::CUDA;
  wo.cuda_device = launch.local_rank;
  wo.comm.timeout = std::chrono::minutes(o.distributed_timeout_minutes);
  std::unique_ptr<Communicator> world = parallel::create_world_communicator(launch, wo);
  const int me = world->rank(), size = world->size();

  const std::vector<std::string> hosts = all_gather_text(*world, this_hostname());
  const std::vector<NodeEntry> nodes = assign_nodes(hosts, o.emulate_nodes);
  std::vector<int> node_of(static_cast<size_t>(size)), local_of(static_cast<size_t>(size));
  size_t most = 0;
  for (size_t k = 0; k < nodes.size(); ++k) {
    most = std::max(most, nodes[k].ranks.size());
    for (size_t l = 0; l < nodes[k].ranks.size(); ++l) {
      node_of[static_cast<size_t>(nodes[k].ranks[l])] = static_cast<int>(k);
      local_of[static_cast<size_t>(nodes[k].ranks[l])] = static_cast<int>(l);
    }
  }
  const int my_node = node_of[static_cast<size_t>(me)], my_local = local_of[static_cast<size_t>(me)];

  // Compute checks. GPUs all at once (as in training); CPU ranks of a node take turns, so
  // that ranks sharing cores do not measure each other.
  RankCompute mine;
  if (o.device == "cpu") {
    for (size_t turn = 0; turn < most; ++turn) {
      if (static_cast<size_t>(my_local) == turn) mine = compute_checks(o, 0);
      world->barrier();
    }
  } else {
    mine = compute_checks(o, launch.local_rank);
  }
  const std::vector<std::string> computes = all_gather_text(*world, to_json(mine).dump());

  // Collectives, scope by scope; each group's rank 0 contributes its JSON to the gather.
  std::vector<std::string> notes;
  std::vector<std::string> group_texts;
  auto gather_groups = [&](const std::string& text) {
    for (std::string& t : all_gather_text(*world, text))
      if (!t.empty()) group_texts.push_back(std::move(t));
  };
  {
    std::unique_ptr<Communicator> intra = world->split(my_node, me, "intra-node");
    gather_groups(group_json(intra.get(), bench, "intra-node", my_node, "node " + nodes[static_cast<size_t>(my_node)].name,
                             nodes[static_cast<size_t>(my_node)].ranks));
  }
  if (size == 1) notes.push_back("1 rank: no collectives to measure");
  for (const NodeEntry& n : nodes)
    if (n.ranks.size() == 1 && size > 1) notes.push_back(fmt::format("node {} has 1 rank: no intra-node collectives", n.name));
  bool even = true;
  for (const NodeEntry& n : nodes) even = even && n.ranks.size() == nodes.front().ranks.size();
  if (nodes.size() > 1 && even) {
    std::vector<int> rail;
    for (const NodeEntry& n : nodes) rail.push_back(n.ranks[static_cast<size_t>(my_local)]);
    std::unique_ptr<Communicator> inter = world->split(my_local, me, "inter-node");
    gather_groups(group_json(inter.get(), bench, "inter-node", my_local, fmt::format("local rank {}", my_local), rail));
  } else if (nodes.size() > 1) {
    notes.push_back("the nodes have different rank counts: no inter-node (rail) groups");
  } else {
    notes.push_back("1 node: no inter-node collectives");
  }
  if (nodes.size() > 1) {
    std::vector<int> all(static_cast<size_t>(size));
    for (int r = 0; r < size; ++r) all[static_cast<size_t>(r)] = r;
    gather_groups(group_json(world.get(), bench, "world", 0, "all ranks", all));
  }
  if (o.device == "cpu")
    notes.push_back("CPU ranks: the GPU GEMM and HBM checks do not apply; each rank ran the CPU checks instead "
                    "(OpenBLAS fp32 sgemm, DRAM copy), the ranks of a node one at a time");

  int code = 0;
  if (me == 0) try {
    PreflightResults r;
    r.generated = utc_now("%Y-%m-%d %H:%M:%S UTC");
    r.settings.device = o.device;
    r.settings.backend = std::string(world->backend());
    for (CollectiveOp op : bench.ops) r.settings.ops.emplace_back(collective_op_name(op));
    r.settings.sizes = bench.sizes;
    r.settings.warmup = o.warmup;
    r.settings.iters = o.iters;
    r.settings.outlier_threshold = o.outlier_threshold;
    r.settings.emulated_nodes = o.emulate_nodes;
    r.settings.quick = o.quick;
    r.nodes = nodes;
    for (int rank = 0; rank < size; ++rank) {
      r.ranks.push_back({rank, node_of[static_cast<size_t>(rank)], local_of[static_cast<size_t>(rank)],
                         rank_compute_from_json(nlohmann::json::parse(computes[static_cast<size_t>(rank)]))});
    }
    const char* order[] = {"intra-node", "inter-node", "world"};
    for (const char* scope : order) {
      std::vector<GroupRun> runs;
      for (const std::string& t : group_texts) {
        const nlohmann::json j = nlohmann::json::parse(t);
        if (j.at("scope") != scope) continue;
        runs.push_back({scope, j.at("label").get<std::string>(), j.at("index").get<int>(),
                        j.at("ranks").get<std::vector<int>>(), collective_run_from_json(j)});
      }
      std::sort(runs.begin(), runs.end(), [](const GroupRun& a, const GroupRun& b) { return a.index < b.index; });
      r.groups.insert(r.groups.end(), runs.begin(), runs.end());
    }
    r.notes = notes;
    const PreflightVerdict v = judge(r);
    const std::string md = render_markdown(r, v);
    const std::string prefix =
        !o.report.empty() ? o.report
                          : (fs::path(o.output_dir) / fmt::format("preflight_{}_{}", hosts[0], utc_now("%Y%m%d_%H%M%S")))
                                .string();
    const fs::path parent = fs::path(prefix).parent_path();
    std::error_code ec;
    if (!parent.empty()) fs::create_directories(parent, ec);
    for (const auto& [ext, text] : {std::pair<const char*, std::string>{".md", md},
                                    {".json", render_json(r, v).dump(2) + "\n"}}) {
      std::ofstream out(prefix + ext);
      out << text;
      PRIMUS_CHECK(out.good(), "preflight: cannot write the report '{}{}'; pass a writable --report PREFIX", prefix, ext);
    }
    std::fputs(md.c_str(), stdout);
    std::printf("\nreport written to %s.md and %s.json\n", prefix.c_str(), prefix.c_str());
    std::fflush(stdout);
    code = v.exit_code;
  } catch (const std::exception& e) {  // the others wait for the verdict: give them one
    std::fprintf(stderr, "primus preflight: error: %s\n", e.what());
    code = kFailExitCode;
  }
  // Every rank leaves with rank 0's verdict, so that the launcher's exit code is the job's.
  return static_cast<int>(world->all_reduce_value(code, parallel::ReduceOp::Max));
}

}  // namespace primus::safe
