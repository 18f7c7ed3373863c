#include "safe/node_smoke.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>

#include "core/error.h"
#include "parallel/launch_info.h"
#include "parallel/world.h"
#include "safe/gather_text.h"
#include "safe/gpu_bench.h"

namespace primus::safe {

namespace {

std::string range_text(double lo, double hi) {
  return lo == hi ? fmt::format("{:.4g}", lo) : fmt::format("{:.4g}..{:.4g}", lo, hi);
}

RankCompute checked(const NodeSmokeOptions& o, int gpu) {
  return run_compute_checks(o.device, gpu, {true, o.min_gemm_tflops, o.min_hbm_gbps});
}

nlohmann::json report_json(const std::vector<SmokeEntry>& entries, const std::vector<NodeVerdict>& verdicts,
                           const NodeSmokeOptions& o) {
  nlohmann::json j;
  j["format"] = "primus-node-smoke/1";
  j["settings"] = {{"device", o.device}, {"min_gemm_tflops", o.min_gemm_tflops}, {"min_hbm_gbps", o.min_hbm_gbps}};
  j["devices"] = nlohmann::json::array();
  for (const SmokeEntry& e : entries) {
    nlohmann::json d = to_json(e.compute);
    d["node"] = e.node;
    d["label"] = e.label;
    j["devices"].push_back(d);
  }
  j["nodes"] = nlohmann::json::array();
  bool all = true;
  for (const NodeVerdict& v : verdicts) {
    j["nodes"].push_back({{"node", v.node}, {"pass", v.pass}, {"line", v.line}});
    all = all && v.pass;
  }
  j["result"] = all ? "PASS" : "FAIL";
  return j;
}

}  // namespace

std::vector<NodeVerdict> smoke_verdicts(const std::vector<SmokeEntry>& entries, const NodeSmokeOptions& o) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<const SmokeEntry*>> by_node;
  for (const SmokeEntry& e : entries) {
    if (!by_node.count(e.node)) order.push_back(e.node);
    by_node[e.node].push_back(&e);
  }
  std::vector<NodeVerdict> out;
  for (const std::string& node : order) {
    const auto& list = by_node[node];
    NodeVerdict v{node, true, ""};
    std::vector<std::string> failures;
    double g_lo = 1e300, g_hi = 0, m_lo = 1e300, m_hi = 0;
    for (const SmokeEntry* e : list) {
      for (const CheckLine& c : e->compute.checks) {
        if (c.pass) continue;
        v.pass = false;
        failures.push_back(fmt::format("  {}: {}: {}", e->label, c.name, c.detail));
      }
      g_lo = std::min(g_lo, e->compute.gemm_tflops);
      g_hi = std::max(g_hi, e->compute.gemm_tflops);
      m_lo = std::min(m_lo, e->compute.mem_gbps);
      m_hi = std::max(m_hi, e->compute.mem_gbps);
    }
    const bool gpu = o.device != "cpu";
    v.line = fmt::format("node-smoke {} {}: {} {}, GEMM {} TFLOP/s{}, memory {} GB/s{}", v.pass ? "PASS" : "FAIL", node,
                         list.size(), gpu ? "GPU(s)" : "CPU check(s)", range_text(g_lo, g_hi),
                         o.min_gemm_tflops > 0 ? fmt::format(" (>= {:g})", o.min_gemm_tflops) : "",
                         range_text(m_lo, m_hi), o.min_hbm_gbps > 0 ? fmt::format(" (>= {:g})", o.min_hbm_gbps) : "");
    for (const std::string& f : failures) v.line += "\n" + f;
    out.push_back(v);
  }
  return out;
}

int run_node_smoke(const NodeSmokeOptions& o) {
  PRIMUS_CHECK(o.device == "cpu" || o.device == "cuda", "--device '{}': expected cuda (the GPUs) or cpu (the host)",
               o.device);
  PRIMUS_CHECK(o.min_gemm_tflops >= 0 && o.min_hbm_gbps >= 0,
               "--min-gemm-tflops {} and --min-hbm-gbps {} must be >= 0 (0: report only)", o.min_gemm_tflops,
               o.min_hbm_gbps);
  const std::string host = this_hostname();
  if (o.device == "cuda" && !gpu_ready("node-smoke")) {
    std::printf("node-smoke FAIL %s: no usable GPU (--device cpu checks the host instead)\n", host.c_str());
    return kNoGpuExitCode;
  }
  if (o.min_gemm_tflops == 0 && o.min_hbm_gbps == 0)
    std::printf("node-smoke: no --min-gemm-tflops / --min-hbm-gbps given: only a failed GEMM check fails a node\n");
  const parallel::LaunchInfo launch = parallel::detect_launch();
  std::vector<SmokeEntry> entries;
  int code = 0;
  if (!launch.distributed()) {
    if (o.device == "cpu") {
      entries.push_back({host, "CPU", checked(o, 0)});
    } else {
      for (int g = 0, n = visible_gpu_count(); g < n; ++g) entries.push_back({host, fmt::format("GPU {}", g), checked(o, g)});
    }
  } else {
    parallel::WorldOptions wo;
    wo.device = o.device == "cpu" ? Device::CPU : Device::CUDA;
    wo.cuda_device = launch.local_rank;
    wo.comm.timeout = std::chrono::minutes(o.distributed_timeout_minutes);
    std::unique_ptr<parallel::Communicator> world = parallel::create_world_communicator(launch, wo);
    const RankCompute mine = checked(o, launch.local_rank);
    const std::vector<std::string> hosts = all_gather_text(*world, host);
    const std::vector<std::string> results = all_gather_text(*world, to_json(mine).dump());
    for (size_t r = 0; r < results.size(); ++r) {
      RankCompute c = rank_compute_from_json(nlohmann::json::parse(results[r]));
      const std::string dev = c.device.substr(0, c.device.find_first_of(":("));  // "GPU 3", "CPU "
      entries.push_back({hosts[r], fmt::format("rank {} ({})", r, dev.substr(0, dev.find_last_not_of(' ') + 1)),
                         std::move(c)});
    }
    if (world->rank() != 0) {
      // rank 0 prints; every rank returns its verdict
      bool all = true;
      for (const NodeVerdict& v : smoke_verdicts(entries, o)) all = all && v.pass;
      return all ? 0 : 1;
    }
  }
  const std::vector<NodeVerdict> verdicts = smoke_verdicts(entries, o);
  for (const NodeVerdict& v : verdicts) {
    std::printf("%s\n", v.line.c_str());
    code = v.pass ? code : 1;
  }
  if (!o.report.empty()) {
    std::ofstream out(o.report);
    out << report_json(entries, verdicts, o).dump(2) << "\n";
    PRIMUS_CHECK(out.good(), "--report '{}': cannot write the JSON report there; pass a writable path", o.report);
  }
  std::fflush(stdout);
  return code;
}

}  // namespace primus::safe
