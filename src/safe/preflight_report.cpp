#include "safe/preflight_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "safe/outliers.h"

namespace primus::safe {

namespace {

// The rows of a group run at its largest size, one per op.
std::vector<CollectiveResult> largest_rows(const CollectiveRun& run) {
  int64_t largest = 0;
  for (const auto& row : run.rows) largest = std::max(largest, row.bytes);
  std::vector<CollectiveResult> out;
  for (const auto& row : run.rows)
    if (row.bytes == largest) out.push_back(row);
  return out;
}

std::string node_label(const PreflightResults& r, int node) {
  const NodeEntry& n = r.nodes[static_cast<size_t>(node)];
  return fmt::format("node {} ({})", n.name, format_rank_list(n.ranks));
}

void add_outliers(PreflightVerdict& v, const char* kind, const std::string& metric, const std::vector<Sample>& samples,
                  double threshold) {
  for (const Outlier& o : find_outliers(samples, threshold)) v.outliers.push_back({kind, metric, o.who, o.value, o.median, o.below});
}

// Outliers among the groups of one scope: busbw per op at the largest size.
void group_outliers(PreflightVerdict& v, const PreflightResults& r, const char* scope, const char* kind) {
  std::map<std::string, std::vector<Sample>> by_op;
  for (const GroupRun& g : r.groups) {
    if (g.scope != scope || g.ranks.size() < 2) continue;
    const std::string who = g.scope == std::string("intra-node") ? node_label(r, g.index)
                                                                 : fmt::format("rail of {} ({})", g.label, format_rank_list(g.ranks));
    for (const auto& row : largest_rows(g.run)) by_op[std::string(collective_op_name(row.op))].push_back({who, row.busbw_gbps});
  }
  for (const auto& [op, samples] : by_op) add_outliers(v, kind, op + " busbw_gbps", samples, r.settings.outlier_threshold);
}

std::string fmt_num(double x) {
  if (x == 0) return "0";
  return std::abs(x) >= 100 ? fmt::format("{:.1f}", x) : fmt::format("{:.4g}", x);
}

}  // namespace

std::string format_rank_list(const std::vector<int>& ranks) {
  if (ranks.empty()) return "no ranks";
  if (ranks.size() == 1) return fmt::format("rank {}", ranks[0]);
  bool contiguous = true;
  for (size_t i = 1; i < ranks.size(); ++i) contiguous = contiguous && ranks[i] == ranks[i - 1] + 1;
  if (contiguous) return fmt::format("ranks {}-{}", ranks.front(), ranks.back());
  return fmt::format("ranks {}", fmt::join(ranks, ", "));
}

std::string rank_label(const PreflightResults& r, int rank) {
  for (const RankEntry& e : r.ranks)
    if (e.rank == rank) return fmt::format("rank {} on {}", rank, r.nodes[static_cast<size_t>(e.node)].name);
  return fmt::format("rank {}", rank);
}

PreflightVerdict judge(const PreflightResults& r) {
  PreflightVerdict v;
  std::vector<Sample> gemm, mem;
  for (const RankEntry& e : r.ranks) {
    const std::string who = rank_label(r, e.rank);
    for (const CheckLine& c : e.compute.checks)
      if (!c.pass) v.failed.push_back(fmt::format("{}: {}: {}", who, c.name, c.detail));
    gemm.push_back({who, e.compute.gemm_tflops});
    mem.push_back({who, e.compute.mem_gbps});
  }
  for (const GroupRun& g : r.groups)
    for (const CheckLine& c : g.run.checks)
      if (!c.pass) v.failed.push_back(fmt::format("{} {} ({}): {}: {}", g.scope, g.label, format_rank_list(g.ranks), c.name, c.detail));
  add_outliers(v, "rank", "gemm_tflops", gemm, r.settings.outlier_threshold);
  add_outliers(v, "rank", "mem_gbps", mem, r.settings.outlier_threshold);
  group_outliers(v, r, "intra-node", "node");
  group_outliers(v, r, "inter-node", "rail");
  v.exit_code = v.failed.empty() && v.outliers.empty() ? 0 : kFailExitCode;
  return v;
}

std::string render_markdown(const PreflightResults& r, const PreflightVerdict& v) {
  const PreflightSettings& s = r.settings;
  std::string md;
  auto line = [&md](const std::string& t) { md += t + "\n"; };
  line(fmt::format("# Primus preflight: {} rank(s) on {} node(s) ({}, {} communicator)", r.ranks.size(), r.nodes.size(),
                   s.device, s.backend));
  line("");
  std::vector<std::string> sizes;
  for (int64_t b : s.sizes) sizes.push_back(format_bytes(b));
  line(fmt::format("generated {} · collectives {} · sizes {} · {} warm-up + {} timed iterations, fp32, time = slowest "
                   "rank · outliers: more than {:g}% below the median{}",
                   r.generated, fmt::join(s.ops, ", "), fmt::join(sizes, ", "), s.warmup, s.iters,
                   100 * s.outlier_threshold, s.quick ? " · --quick" : ""));
  if (s.emulated_nodes > 0)
    line(fmt::format("\n**--emulate-nodes {}: the ranks were split into {} pretend nodes of consecutive ranks (testing "
                     "only; these are not real nodes)**",
                     s.emulated_nodes, s.emulated_nodes));
  if (!r.notes.empty()) line("");
  for (const std::string& n : r.notes) line(fmt::format("- {}", n));
  line("");

  line("## Nodes\n");
  std::vector<std::string> op_cols;
  for (const std::string& op : s.ops) op_cols.push_back(op + " busbw");
  line(fmt::format("Intra-node bus bandwidth (GB/s) at the largest size.\n\n| node | ranks | {} |", fmt::join(op_cols, " | ")));
  std::string sep = "| --- | --- |";
  for (size_t i = 0; i < op_cols.size(); ++i) sep += " --- |";
  line(sep);
  for (size_t n = 0; n < r.nodes.size(); ++n) {
    std::vector<std::string> cells(s.ops.size(), "-");
    for (const GroupRun& g : r.groups) {
      if (g.scope != "intra-node" || g.index != static_cast<int>(n)) continue;
      for (const auto& row : largest_rows(g.run)) {
        const auto it = std::find(s.ops.begin(), s.ops.end(), std::string(collective_op_name(row.op)));
        if (it != s.ops.end()) cells[static_cast<size_t>(it - s.ops.begin())] = fmt_num(row.busbw_gbps);
      }
    }
    line(fmt::format("| {} | {} | {} |", r.nodes[n].name, format_rank_list(r.nodes[n].ranks), fmt::join(cells, " | ")));
  }
  line("");
  std::map<std::string, std::string> hosts;
  for (const RankEntry& e : r.ranks) hosts.emplace(r.nodes[static_cast<size_t>(e.node)].name, e.compute.host_summary);
  for (const auto& [name, summary] : hosts) line(fmt::format("- {}: {}", name, summary));
  line("");

  line("## Ranks\n");
  line("| rank | node | local | device | GEMM TFLOP/s | memory GB/s | checks |");
  line("| --- | --- | --- | --- | --- | --- | --- |");
  for (const RankEntry& e : r.ranks) {
    int failed = 0;
    for (const CheckLine& c : e.compute.checks) failed += !c.pass;
    line(fmt::format("| {} | {} | {} | {} | {} | {} | {} |", e.rank, r.nodes[static_cast<size_t>(e.node)].name,
                     e.local_rank, e.compute.device, fmt_num(e.compute.gemm_tflops), fmt_num(e.compute.mem_gbps),
                     failed == 0 ? fmt::format("{} pass", e.compute.checks.size()) : fmt::format("{} FAIL", failed)));
  }
  line("");

  for (const GroupRun& g : r.groups) {
    line(fmt::format("## Collectives: {}, {} ({})\n", g.scope, g.label, format_rank_list(g.ranks)));
    line("| op | size | time (us) | algbw (GB/s) | busbw (GB/s) |");
    line("| --- | --- | --- | --- | --- |");
    for (const auto& row : g.run.rows) {
      line(fmt::format("| {} | {} | {} | {} | {} |", collective_op_name(row.op), format_bytes(row.bytes),
                       fmt_num(row.seconds * 1e6), fmt_num(row.algbw_gbps), fmt_num(row.busbw_gbps)));
    }
    line("");
  }

  line("## Checks\n");
  int checks = 0;
  for (const RankEntry& e : r.ranks) checks += static_cast<int>(e.compute.checks.size());
  for (const GroupRun& g : r.groups) checks += static_cast<int>(g.run.checks.size());
  if (v.failed.empty()) line(fmt::format("- all {} checks pass", checks));
  for (const std::string& f : v.failed) line("- FAIL " + f);
  line("");
  line("## Outliers\n");
  if (v.outliers.empty()) line("- none");
  for (const OutlierEntry& o : v.outliers) {
    line(fmt::format("- {}: {} {} is {:.1f}% below the median {}", o.who, o.metric, fmt_num(o.value), 100 * o.below,
                     fmt_num(o.median)));
  }
  line("");
  line(v.pass() ? "**Result: PASS**"
                : fmt::format("**Result: FAIL** ({} failed check(s), {} outlier(s); exit code {})", v.failed.size(),
                              v.outliers.size(), v.exit_code));
  return md;
}

nlohmann::json render_json(const PreflightResults& r, const PreflightVerdict& v) {
  const PreflightSettings& s = r.settings;
  nlohmann::json j;
  j["format"] = "primus-preflight/1";
  j["generated"] = r.generated;
  j["settings"] = {{"device", s.device},         {"backend", s.backend}, {"ops", s.ops},
                   {"sizes_bytes", s.sizes},     {"warmup", s.warmup},   {"iters", s.iters},
                   {"outlier_threshold", s.outlier_threshold}, {"emulated_nodes", s.emulated_nodes},
                   {"quick", s.quick}};
  j["world_size"] = r.ranks.size();
  j["nodes"] = nlohmann::json::array();
  for (const NodeEntry& n : r.nodes) j["nodes"].push_back({{"name", n.name}, {"ranks", n.ranks}});
  j["ranks"] = nlohmann::json::array();
  for (const RankEntry& e : r.ranks) {
    nlohmann::json c = to_json(e.compute);
    c["rank"] = e.rank;
    c["node"] = r.nodes[static_cast<size_t>(e.node)].name;
    c["local_rank"] = e.local_rank;
    j["ranks"].push_back(c);
  }
  j["groups"] = nlohmann::json::array();
  for (const GroupRun& g : r.groups) {
    nlohmann::json run = to_json(g.run);
    j["groups"].push_back({{"scope", g.scope}, {"label", g.label}, {"ranks", g.ranks}, {"rows", run["rows"]},
                           {"checks", run["checks"]}});
  }
  j["notes"] = r.notes;
  j["failed_checks"] = v.failed;
  j["outliers"] = nlohmann::json::array();
  for (const OutlierEntry& o : v.outliers) {
    j["outliers"].push_back({{"kind", o.kind}, {"metric", o.metric}, {"who", o.who}, {"value", o.value},
                             {"median", o.median}, {"below_median", o.below}});
  }
  j["result"] = v.pass() ? "PASS" : "FAIL";
  j["exit_code"] = v.exit_code;
  return j;
}

}  // namespace primus::safe
