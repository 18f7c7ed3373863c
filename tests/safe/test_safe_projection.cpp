// src/safe/projection.h: the layouts it enumerates and its step-time terms against numbers
// worked by hand from the formulas in the header, and bandwidths read from a preflight report.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "safe/projection.h"

namespace primus::safe {
namespace {

ProjectionInput tiny() {
  ProjectionInput in;
  ModelConfig& m = in.model;
  m.name = "tiny";
  m.num_layers = 4;
  m.hidden_size = 256;
  m.ffn_hidden_size = 1024;
  m.num_attention_heads = 8;
  m.num_query_groups = 8;
  m.padded_vocab_size = m.vocab_size = 1024;
  m.max_position_embeddings = 128;
  in.setup.seq_length = 128;
  in.setup.micro_batch_size = 1;
  in.setup.global_batch_size = 8;
  in.nodes = 2;
  in.gpus_per_node = 4;
  in.tflops = 1;
  in.gpu_memory_gib = 80;
  for (CollectiveOp op : all_collective_ops()) {
    in.bw.intra[op] = 100;
    in.bw.inter[op] = 10;
  }
  in.bw.source = "test";
  return in;
}

TEST(SafeProjection, StepTimeTermsByHand) {
  const ProjectionInput in = tiny();
  ParallelLayout l;
  l.tp = 2;
  l.pp = 2;
  l.dp = 2;
  MemoryEstimate mem;
  mem.params = 1000000;
  const StepTime s = project_step_time(in, l, mem);
  const double flops = training_flops_per_token(in.model, 128).total() * 8 * 128 / 8;  // per GPU
  EXPECT_NEAR(s.compute, flops / 1e12, 1e-15);
  const double micro = 8.0 / 2;                    // B / (b dp)
  EXPECT_NEAR(s.bubble, s.compute * 1 / micro, 1e-15);
  const double act = 1 * 128 * 256 * 2.0;         // b s h x 2 bytes
  EXPECT_NEAR(s.tp, micro * 2 * 4 * act * 2 * 0.5 / 100e9, 1e-15);  // tp 2 fits a node: intra
  EXPECT_NEAR(s.dp, 4e6 * 0.5 * 2 / 100e9, 1e-15);                   // tp x dp = 4 <= 4: intra
  EXPECT_NEAR(s.pp, 2 * micro * act / 10e9, 1e-15);                  // 8 ranks > 4: inter
  EXPECT_EQ(s.ep, 0);
  EXPECT_NEAR(s.total(), s.compute + s.bubble + s.tp + s.dp + s.pp, 1e-15);

  ProjectionInput d = in;
  d.setup.distributed_optimizer = true;
  d.overlap_grad_reduce = true;
  ParallelLayout wide = l;
  wide.tp = 1;
  wide.pp = 1;
  wide.dp = 8;  // spans both nodes: inter
  const StepTime w = project_step_time(d, wide, mem);
  const double comm = 4e6 * 7 / 8 / 10e9 + 2e6 * 7 / 8 / 10e9;
  EXPECT_NEAR(w.dp, std::max(0.0, comm - w.compute * 2 / 3), 1e-15);

  // Context parallel: tp 2 x cp 2 x dp 2 (one node holds tp x cp = 4 ranks). Each cp rank holds
  // s / 2 tokens: the activation terms halve; the ring moves (3 cp - 2) = 4 K/V-sized messages
  // per layer; gradients are reduced over dp x cp = 4 ranks (tp x 4 = 8 > 4: inter-node).
  ParallelLayout c;
  c.tp = 2;
  c.cp = 2;
  c.dp = 2;
  const StepTime sc = project_step_time(in, c, mem);
  EXPECT_NEAR(sc.compute, flops / 1e12, 1e-15);  // the same FLOPs spread over the same 8 GPUs
  const double half = 1 * 64 * 256 * 2.0;          // b (s / cp) h x 2 bytes
  EXPECT_NEAR(sc.tp, micro * 4 * 4 * half * 2 * 0.5 / 100e9, 1e-15);
  const double kv = 64 * (2 * 8 * 32) / 2.0 * 2;  // b (s / cp) x 2 groups x head_dim / tp x 2 bytes
  EXPECT_NEAR(sc.cp, micro * 4 * 4 * kv / 100e9, 1e-15);
  EXPECT_NEAR(sc.dp, 4e6 * 0.75 * 2 / 10e9, 1e-15);
  EXPECT_NEAR(sc.total(), sc.compute + sc.tp + sc.cp + sc.dp, 1e-15);
}

TEST(SafeProjection, LayoutsRespectTheConstraints) {
  ProjectionInput in = tiny();
  const auto all = project_layouts(in);
  ASSERT_FALSE(all.empty());
  bool seen_tp4pp2 = false;
  for (const auto& p : all) {
    const auto& l = p.layout;
    EXPECT_EQ(l.tp * l.pp * l.cp * l.dp, 8);
    EXPECT_LE(l.tp, 4);  // tp stays within a node
    EXPECT_EQ(8 % (l.dp), 0);
    EXPECT_EQ(128 % (2 * l.cp), 0);  // seq_length cuts into 2 cp chunks
    EXPECT_EQ(l.sequence_parallel, l.tp > 1);
    seen_tp4pp2 = seen_tp4pp2 || (l.tp == 4 && l.pp == 2 && l.dp == 1);
  }
  EXPECT_TRUE(seen_tp4pp2);
  EXPECT_TRUE(std::any_of(all.begin(), all.end(), [](const LayoutProjection& p) { return p.layout.cp == 8; }));
  for (size_t i = 1; i < all.size(); ++i) {
    if (all[i].fits == all[i - 1].fits) EXPECT_LE(all[i - 1].time.total(), all[i].time.total());
    else EXPECT_TRUE(all[i - 1].fits);
  }
  in.gpu_memory_gib = 1e-6;  // nothing fits; the table says so
  for (const auto& p : project_layouts(in)) EXPECT_FALSE(p.fits);
  in.tflops = 0;
  EXPECT_THROW(project_layouts(in), Error);
}

// A long context is what context parallelism is for: the Llama-3.2-1B shape at 128K tokens per
// sequence on one node of 8 x 80 GiB. Without splitting the sequence (tp = cp = 1) one rank's
// activations do not fit; with it the fastest layout that fits is a context-parallel one (its
// ring moves K/V of 8 query groups, less than tensor parallelism's all-reduces of the hidden
// states), and the table lists cp.
TEST(SafeProjection, LongContextNeedsContextParallel) {
  ProjectionInput in = tiny();
  ModelConfig& m = in.model;
  m.name = "llama3.2-1B-shape";
  m.num_layers = 16;
  m.hidden_size = 2048;
  m.ffn_hidden_size = 8192;
  m.num_attention_heads = 32;
  m.num_query_groups = 8;
  m.padded_vocab_size = m.vocab_size = 128256;
  m.max_position_embeddings = 131072;
  in.setup.seq_length = 131072;
  in.setup.global_batch_size = 1;
  in.nodes = 1;
  in.gpus_per_node = 8;
  in.tflops = 400;
  const auto all = project_layouts(in);
  ASSERT_FALSE(all.empty());
  ASSERT_TRUE(all.front().fits);
  EXPECT_GT(all.front().layout.cp, 1);
  // Without cp or tp one GPU would hold the whole sequence's activations of all 16 layers (~160
  // GB); a deep pipeline fits but idles (one micro-batch: a bubble of pp - 1 steps).
  for (const auto& p : all)
    if (p.layout.cp == 1 && p.layout.tp == 1 && p.layout.pp == 1) EXPECT_FALSE(p.fits) << "dp " << p.layout.dp;
  const std::string table = render_projection(in, all, 3);
  EXPECT_NE(table.find("| tp | pp | cp | dp | ep |"), std::string::npos) << table;
}

TEST(SafeProjection, BandwidthsFromAPreflightReport) {
  const nlohmann::json report = nlohmann::json::parse(R"({"groups": [
    {"scope": "intra-node", "rows": [{"op": "all_reduce", "bytes": 1024, "busbw_gbps": 1},
                                     {"op": "all_reduce", "bytes": 4096, "busbw_gbps": 300}]},
    {"scope": "intra-node", "rows": [{"op": "all_reduce", "bytes": 4096, "busbw_gbps": 100}]},
    {"scope": "intra-node", "rows": [{"op": "all_reduce", "bytes": 4096, "busbw_gbps": 200}]},
    {"scope": "inter-node", "rows": [{"op": "all_to_all", "bytes": 4096, "busbw_gbps": 40}]},
    {"scope": "world", "rows": [{"op": "all_to_all", "bytes": 4096, "busbw_gbps": 5}]}]})");
  Bandwidths fallback;
  fallback.inter[CollectiveOp::AllReduce] = 7;
  const Bandwidths b = bandwidths_from_preflight(report, fallback);
  EXPECT_DOUBLE_EQ(b.intra.at(CollectiveOp::AllReduce), 200);  // median of 300, 100, 200 at 4096 bytes
  EXPECT_DOUBLE_EQ(b.inter.at(CollectiveOp::AllToAll), 40);    // rails before the world group
  EXPECT_DOUBLE_EQ(b.inter.at(CollectiveOp::AllReduce), 7);    // not in the report: the fallback
}

}  // namespace
}  // namespace primus::safe

namespace primus::safe {
namespace {

StepTable table_for(const ProjectionInput& in) {
  StepTable t;
  t.model = in.model.name;
  t.device = "test GPU";
  t.layers = in.model.num_layers;
  t.hidden = in.model.hidden_size;
  t.seq_length = in.setup.seq_length;
  t.micro_batch_size = in.setup.micro_batch_size;
  for (int64_t tp : {1, 2}) {
    StepTableEntry e;
    e.tp = tp;
    e.layers_fwd_us = 1000.0 / tp;
    e.layers_bwd_us = 2000.0 / tp;
    e.head_us = 500.0 / tp;
    e.optimizer_ns_per_param = 0.25;
    t.entries.push_back(e);
  }
  return t;
}

// safe/step_table.h's formula, worked by hand for a pipeline, full recompute, context parallelism
// and the distributed optimizer; the JSON round trip; and the named refusals.
TEST(SafeProjection, ComputeFromAStepTableByHand) {
  ProjectionInput in = tiny();
  in.table = table_for(in);
  in.table_source = "table.json";
  ParallelLayout l;
  l.tp = 2;
  l.pp = 2;
  l.dp = 2;
  MemoryEstimate mem;
  mem.params = 1000000;
  const StepTime s = project_step_time(in, l, mem);
  EXPECT_TRUE(s.measured);
  // m = 8 / (1 x 2) = 4 micro-batches; half the layers per stage; tp 2's entry.
  const double micro_s = (0.5 * (500 + 1000) + 250) * 1e-6;
  EXPECT_NEAR(s.compute, 4 * micro_s + 1e6 * 0.25e-9, 1e-12);
  EXPECT_NEAR(s.bubble, s.compute * 1 / 4.0, 1e-12);

  ProjectionInput r = in;
  r.setup.recompute = Recompute::kFullUniform;  // the layers' forward once more
  r.setup.distributed_optimizer = true;         // Adam over 1/(dp cp) of the parameters
  ParallelLayout c = l;
  c.cp = 2;
  c.dp = 1;
  const double micro_c = (0.5 * (2 * 500 + 1000) + 250) / 2 * 1e-6;  // / cp
  EXPECT_NEAR(project_step_time(r, c, mem).compute, 8 * micro_c + 1e6 / 2 * 0.25e-9, 1e-12);

  // tp 4 is not in the table: with --tflops it falls back, without it the layout is left out.
  ParallelLayout l4 = l;
  l4.tp = 4;
  EXPECT_FALSE(project_step_time(in, l4, mem).measured);
  ProjectionInput only = in;
  only.tflops = 0;
  for (const LayoutProjection& p : project_layouts(only)) EXPECT_LE(p.layout.tp, 2);
  EXPECT_THROW(project_step_time(only, l4, mem), Error);

  const StepTable back = step_table_from_json(to_json(*in.table), "round trip");
  ASSERT_EQ(back.entries.size(), 2u);
  EXPECT_EQ(back.entries[1].tp, 2);
  EXPECT_DOUBLE_EQ(back.entries[1].head_us, 250);
  EXPECT_EQ(back.seq_length, 128);

  // Measured for another shape: refused by name.
  ProjectionInput other = in;
  other.setup.seq_length = 256;
  try {
    project_layouts(other);
    FAIL() << "a table measured at another seq_length was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seq_length 128"), std::string::npos) << e.what();
  }
  EXPECT_THROW(step_table_from_json(nlohmann::json{{"kind", "something else"}}, "x.json"), Error);
  nlohmann::json bad = to_json(*in.table);
  bad["entries"][0]["head_us"] = 0;
  EXPECT_THROW(step_table_from_json(bad, "bad.json"), Error);
}

TEST(SafeProjection, TensorParallelShardShapes) {
  ModelConfig m = tiny().model;
  m.num_query_groups = 4;
  m.padded_vocab_size = 1000;
  const ModelConfig l = tp_local_model(m, 4);
  EXPECT_EQ(l.num_attention_heads, 2);
  EXPECT_EQ(l.num_query_groups, 1);
  EXPECT_EQ(l.ffn_hidden_size, 256);
  EXPECT_EQ(l.head_dim(), 32);  // kept: 256 / 8
  EXPECT_EQ(l.padded_vocab_size, 250);
  EXPECT_THROW(tp_local_model(m, 8), Error);  // 4 query groups do not split 8 ways
}

}  // namespace
}  // namespace primus::safe
