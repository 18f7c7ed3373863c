// src/safe's cluster preflight without a cluster: the nccl-tests bandwidth formulas against
// numbers worked by hand, the size sweep, the outlier rule and the verdict on synthetic
// results (a slow rank, a slow node, a failed check), the report's JSON and markdown, the
// node-smoke verdicts, and the collective bench over a one-rank communicator.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "parallel/single_process_communicator.h"
#include "safe/bus_bandwidth.h"
#include "safe/collective_bench.h"
#include "safe/gather_text.h"
#include "safe/node_smoke.h"
#include "safe/outliers.h"
#include "safe/preflight_report.h"

namespace primus::safe {
namespace {

TEST(SafeBusBandwidth, FactorsAreNcclTestsOnes) {
  // 8 ranks: all_reduce 2*7/8 = 1.75; all_gather / reduce_scatter / all_to_all 7/8; p2p 1.
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::AllReduce, 8), 1.75);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::AllGather, 8), 0.875);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::ReduceScatter, 8), 0.875);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::AllToAll, 8), 0.875);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::SendRecv, 8), 1.0);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::AllReduce, 2), 1.0);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveOp::AllReduce, 1), 0.0);  // one rank moves nothing
  // 1 GiB all-reduce in 10 ms over 4 ranks: algbw 107.374 GB/s, busbw x 1.5 = 161.061 GB/s.
  const int64_t gib = int64_t{1} << 30;
  EXPECT_NEAR(algbw_gbps(gib, 0.01), 107.3741824, 1e-9);
  EXPECT_NEAR(busbw_gbps(CollectiveOp::AllReduce, 4, gib, 0.01), 161.0612736, 1e-9);
  EXPECT_NEAR(busbw_gbps(CollectiveOp::AllToAll, 4, gib, 0.01), 80.5306368, 1e-9);
  EXPECT_THROW(algbw_gbps(gib, 0), Error);
}

TEST(SafeBusBandwidth, SizesParseSweepAndRound) {
  EXPECT_EQ(parse_byte_size("1M", "--min-bytes"), 1 << 20);
  EXPECT_EQ(parse_byte_size("1g", "--max-bytes"), int64_t{1} << 30);
  EXPECT_EQ(parse_byte_size("4096", "--min-bytes"), 4096);
  for (const char* bad : {"", "M", "1.5M", "-1M", "0", "12T"}) {
    try {
      parse_byte_size(bad, "--min-bytes");
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--min-bytes"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(size_sweep(1 << 20, 1 << 30, 4),
            (std::vector<int64_t>{1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28, int64_t{1} << 30}));
  EXPECT_EQ(size_sweep(1 << 20, 3 << 20, 2), (std::vector<int64_t>{1 << 20, 2 << 20}));
  EXPECT_THROW(size_sweep(2 << 20, 1 << 20, 2), Error);
  EXPECT_THROW(size_sweep(1 << 20, 2 << 20, 1), Error);
  EXPECT_EQ(collective_bytes(1 << 20, 3, 4), (1 << 20) / 12 * 12);  // whole fp32 elements per rank
  EXPECT_EQ(collective_bytes(5, 4, 4), 16);                          // at least one element each
  EXPECT_EQ(format_bytes(1 << 20), "1 MiB");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(parse_collective_op("send_recv"), CollectiveOp::SendRecv);
  EXPECT_THROW(parse_collective_op("allreduce"), Error);
}

TEST(SafeOutliers, MoreThanTheThresholdBelowTheMedian) {
  EXPECT_DOUBLE_EQ(median_of({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median_of({4, 1, 3, 2}), 2.5);
  // median 100: 89.9 is 10.1% below (outlier), 90 exactly 10% (not), 0 = not measured.
  const std::vector<Sample> s = {{"a", 100}, {"b", 101}, {"c", 89.9}, {"d", 90}, {"e", 100}, {"f", 0}, {"g", 120}};
  const auto out = find_outliers(s, 0.1);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].who, "c");
  EXPECT_DOUBLE_EQ(out[0].median, 100);
  EXPECT_NEAR(out[0].below, 0.101, 1e-12);
  EXPECT_TRUE(find_outliers({{"only", 5}}, 0.1).empty());
  EXPECT_EQ(find_outliers({{"fast", 100}, {"slow", 70}}, 0.1).size(), 1u);  // 70 is 17.6% below 85
  EXPECT_THROW(find_outliers(s, 0), Error);
  EXPECT_THROW(find_outliers(s, 1), Error);
}

RankCompute compute(double tflops, double gbps, bool sane = true) {
  RankCompute c;
  c.kind = "gpu";
  c.device = "GPU 0: test";
  c.host_summary = "test host";
  c.gemm = {{8192, tflops}};
  c.gemm_tflops = tflops;
  c.mem_gbps = gbps;
  c.checks.push_back({"gemm_sanity", sane, "relative error"});
  return c;
}

// 2 nodes x 4 GPUs; rank 6 has a slow GEMM; node b's intra-node all-reduce is slow.
PreflightResults synthetic() {
  PreflightResults r;
  r.generated = "2026-12-07 10:00:00 UTC";
  r.settings = {"cuda", "nccl", {"all_reduce"}, {1 << 20}, 1, 2, 0.1, 0, false};
  r.nodes = {{"host-a", {0, 1, 2, 3}}, {"host-b", {4, 5, 6, 7}}};
  for (int rank = 0; rank < 8; ++rank) r.ranks.push_back({rank, rank / 4, rank % 4, compute(rank == 6 ? 500 : 700, 3000)});
  for (int node = 0; node < 2; ++node) {
    GroupRun g{"intra-node", "node " + r.nodes[node].name, node, r.nodes[node].ranks, {}};
    const double sec = node == 1 ? 2e-4 : 1e-4;
    g.run.rows.push_back({CollectiveOp::AllReduce, 4, 1 << 20, sec, algbw_gbps(1 << 20, sec),
                          busbw_gbps(CollectiveOp::AllReduce, 4, 1 << 20, sec)});
    g.run.checks.push_back({"all_reduce_result", true, "ok"});
    r.groups.push_back(g);
  }
  return r;
}

TEST(SafePreflightReport, SlowRankAndSlowNodeAreNamed) {
  const PreflightResults r = synthetic();
  const PreflightVerdict v = judge(r);
  EXPECT_EQ(v.exit_code, kFailExitCode);
  EXPECT_TRUE(v.failed.empty());
  ASSERT_EQ(v.outliers.size(), 2u);
  EXPECT_EQ(v.outliers[0].kind, "rank");
  EXPECT_EQ(v.outliers[0].who, "rank 6 on host-b");
  EXPECT_EQ(v.outliers[0].metric, "gemm_tflops");
  EXPECT_NEAR(v.outliers[0].below, 1 - 500.0 / 700, 1e-12);
  EXPECT_EQ(v.outliers[1].kind, "node");
  EXPECT_EQ(v.outliers[1].who, "node host-b (ranks 4-7)");
  EXPECT_EQ(v.outliers[1].metric, "all_reduce busbw_gbps");

  const std::string md = render_markdown(r, v);
  EXPECT_NE(md.find("- rank 6 on host-b: gemm_tflops 500.0 is 28.6% below the median 700.0"), std::string::npos) << md;
  EXPECT_NE(md.find("**Result: FAIL**"), std::string::npos);
  EXPECT_NE(md.find("| host-b | ranks 4-7 |"), std::string::npos) << md;

  const nlohmann::json j = render_json(r, v);
  EXPECT_EQ(j["result"], "FAIL");
  EXPECT_EQ(j["exit_code"], 1);
  EXPECT_EQ(j["world_size"], 8);
  EXPECT_EQ(j["outliers"][0]["who"], "rank 6 on host-b");
  EXPECT_EQ(j["ranks"][6]["node"], "host-b");
  EXPECT_EQ(j["groups"][1]["rows"][0]["op"], "all_reduce");
  EXPECT_NEAR(j["groups"][1]["rows"][0]["busbw_gbps"].get<double>(),
              1.5 * j["groups"][1]["rows"][0]["algbw_gbps"].get<double>(), 1e-9);
}

TEST(SafePreflightReport, FailedChecksFailAndEvenRanksPass) {
  PreflightResults r = synthetic();
  r.ranks[6].compute = compute(700, 3000);
  r.groups[1].run.rows[0] = r.groups[0].run.rows[0];
  PreflightVerdict v = judge(r);
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_NE(render_markdown(r, v).find("**Result: PASS**"), std::string::npos);
  EXPECT_EQ(render_json(r, v)["result"], "PASS");

  r.ranks[2].compute = compute(700, 3000, /*sane=*/false);
  r.groups[0].run.checks[0] = {"all_reduce_result", false, "3 elements differ"};
  v = judge(r);
  EXPECT_EQ(v.exit_code, kFailExitCode);
  ASSERT_EQ(v.failed.size(), 2u);
  EXPECT_EQ(v.failed[0], "rank 2 on host-a: gemm_sanity: relative error");
  EXPECT_NE(v.failed[1].find("intra-node node host-a (ranks 0-3): all_reduce_result: 3 elements differ"),
            std::string::npos) << v.failed[1];
  // A looser threshold lets the 28.6% slow rank pass as an outlier, but not a failed check.
  r = synthetic();
  r.settings.outlier_threshold = 0.5;
  EXPECT_EQ(judge(r).exit_code, 0);
}

TEST(SafeNodeSmoke, PerNodeLinesAndThresholds) {
  NodeSmokeOptions o;
  o.min_gemm_tflops = 600;
  o.min_hbm_gbps = 2000;
  std::vector<SmokeEntry> entries;
  for (int g = 0; g < 2; ++g) {
    for (const char* node : {"a", "b"}) {
      RankCompute c = compute(std::string(node) == "b" && g == 1 ? 400 : 650, 2500);
      apply_thresholds(c, {true, o.min_gemm_tflops, o.min_hbm_gbps});
      entries.push_back({node, "GPU " + std::to_string(g), c});
    }
  }
  const auto v = smoke_verdicts(entries, o);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(v[0].pass);
  EXPECT_EQ(v[0].line, "node-smoke PASS a: 2 GPU(s), GEMM 650 TFLOP/s (>= 600), memory 2500 GB/s (>= 2000)");
  EXPECT_FALSE(v[1].pass);
  EXPECT_NE(v[1].line.find("node-smoke FAIL b: 2 GPU(s), GEMM 400..650 TFLOP/s"), std::string::npos) << v[1].line;
  EXPECT_NE(v[1].line.find("GPU 1: min_gemm_tflops: GEMM 8192^3 at 400 TFLOP/s (--min-gemm-tflops 600)"),
            std::string::npos) << v[1].line;
}

TEST(SafeCollectiveBench, OneRankRunsEveryOpAndChecksIt) {
  auto comm = parallel::make_single_process_communicator(Device::CPU);
  CollectiveBenchOptions o;
  o.sizes = {4096, 16384};
  o.warmup = 1;
  o.iters = 2;
  const CollectiveRun run = run_collective_bench(*comm, o);
  ASSERT_EQ(run.rows.size(), 10u);
  ASSERT_EQ(run.checks.size(), 5u);
  for (const auto& c : run.checks) EXPECT_TRUE(c.pass) << c.name << ": " << c.detail;
  for (const auto& row : run.rows) {
    EXPECT_GT(row.seconds, 0);
    EXPECT_DOUBLE_EQ(row.busbw_gbps, row.algbw_gbps * bus_factor(row.op, 1));
  }
  const CollectiveRun back = collective_run_from_json(to_json(run));
  ASSERT_EQ(back.rows.size(), run.rows.size());
  EXPECT_EQ(back.rows[9].op, CollectiveOp::SendRecv);
  EXPECT_EQ(back.rows[9].bytes, 16384);
  EXPECT_EQ(all_gather_text(*comm, "host-a"), std::vector<std::string>{"host-a"});
}

TEST(SafeCollectiveBench, SingleProcessSendRecvIsACopyWithChecks) {
  auto comm = parallel::make_single_process_communicator(Device::CPU);
  Tensor a = Tensor::from_floats({1, 2, 3}, {3});
  Tensor b = Tensor::zeros({3}, DType::F32);
  comm->send_recv(a, 0, b, 0);
  EXPECT_EQ(b.to_float_vector(), (std::vector<float>{1, 2, 3}));
  Tensor short_b = Tensor::zeros({2}, DType::F32);
  EXPECT_THROW(comm->send_recv(a, 0, short_b, 0), Error);
  EXPECT_THROW(comm->send_recv(a, 1, b, 0), Error);
  Tensor i32 = Tensor::zeros({3}, DType::I32);
  EXPECT_THROW(comm->send_recv(a, 0, i32, 0), Error);
}

}  // namespace
}  // namespace primus::safe
