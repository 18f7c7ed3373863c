// ParallelDims: layouts checked on paper (no MPI). Expected groups are written out by
// hand from Megatron's documented example (16 GPUs, tp2 pp4 -> dp2) and from the rank
// formula rank = tp + TP*(cp + CP*(dp + DP*pp)), not from the code under test.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "../test_util.h"
#include "core/error.h"
#include "model/decoder_spec.h"
#include "parallel/parallel_dims.h"

using namespace primus;
using namespace primus::parallel;
using Groups = std::vector<std::vector<int>>;

namespace {

using primus::test::error_of;

ParallelDims dims(int world, int tp, int pp, int cp = 1, int ep = 1, int dp = 0,
                  std::string order = "tp-cp-ep-dp-pp") {
  ParallelSizes s;
  s.tp = tp;
  s.pp = pp;
  s.cp = cp;
  s.ep = ep;
  s.dp = dp;
  s.order = order;
  return ParallelDims::create(world, s);
}

}  // namespace

TEST(ParallelDims, MegatronDocumentedExample16Gpus) {
  // Megatron's initialize_model_parallel docstring: 16 GPUs, tp 2, pp 4.
  ParallelDims d = dims(16, 2, 4);
  EXPECT_EQ(d.dp(), 2);
  EXPECT_EQ(d.groups("tp"), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  EXPECT_EQ(d.groups("dp"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}}));
  EXPECT_EQ(d.groups("pp"), (Groups{{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}}));
}

TEST(ParallelDims, World8Tp2Pp2Dp2) {
  ParallelDims d = dims(8, 2, 2);
  EXPECT_EQ(d.dp(), 2);
  EXPECT_EQ(d.groups("tp"), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(d.groups("dp"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(d.groups("pp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // model parallel = tp x pp: the ranks sharing one data-parallel replica index
  EXPECT_EQ(d.groups("tp-pp"), (Groups{{0, 1, 4, 5}, {2, 3, 6, 7}}));
  RankCoords c = d.coords(7);  // 7 = 1 + 2*(1 + 2*1)
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(d.group_of(5, "dp"), (std::vector<int>{5, 7}));
  EXPECT_EQ(d.describe(), "tp2 cp1 ep1 dp2 pp2 (world 8, order tp-cp-ep-dp-pp)");
}

TEST(ParallelDims, ContextParallelSitsBetweenTpAndDp) {
  // world 8, tp2 cp2 -> dp2: rank = tp + 2*cp + 4*dp
  ParallelDims d = dims(8, 2, 1, 2);
  EXPECT_EQ(d.dp(), 2);
  EXPECT_EQ(d.groups("cp"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(d.groups("dp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // gradients reduce over dp x cp: cp fastest inside the group
  EXPECT_EQ(d.groups("dp-cp"), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
}

TEST(ParallelDims, ExpertGridCarvesEpOutOfDp) {
  // world 8, tp1 pp1 -> dp8; ep4: expert grid rank = ep + 4*expert_dp
  ParallelDims d = dims(8, 1, 1, 1, 4);
  EXPECT_EQ(d.expert_dp(), 2);
  EXPECT_EQ(d.groups("ep"), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(d.groups("expert_dp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(d.coords(6).ep, 2);
  EXPECT_EQ(d.coords(6).expert_dp, 1);
  // with tp2: expert rank = tp + 2*(ep + 2*edp), world 8 tp2 ep2 -> edp 2
  ParallelDims e = dims(8, 2, 1, 1, 2);
  EXPECT_EQ(e.groups("ep"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(e.groups("expert_dp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
}

TEST(ParallelDims, OtherOrderPutsPpBeforeDp) {
  // order tp-pp-dp: rank = tp + 2*pp + 4*dp
  ParallelDims d = dims(8, 2, 2, 1, 1, 0, "tp-pp-dp");
  EXPECT_EQ(d.groups("pp"), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(d.groups("dp"), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
}

TEST(ParallelDims, GroupsPartitionTheWorldAndVaryOnlyTheirDims) {
  ParallelDims d = dims(24, 2, 3, 2);  // dp 2
  for (const char* kind : {"tp", "cp", "dp", "pp", "dp-cp", "tp-pp"}) {
    std::set<int> seen;
    for (const auto& g : d.groups(kind)) {
      for (int r : g) EXPECT_TRUE(seen.insert(r).second) << kind << " rank " << r << " twice";
      // coordinates outside the group's dims are equal within a group
      RankCoords a = d.coords(g[0]);
      for (int r : g) {
        RankCoords b = d.coords(r);
        std::string k = kind;
        if (k.find("tp") == std::string::npos) EXPECT_EQ(a.tp, b.tp) << kind;
        if (k.find("cp") == std::string::npos) EXPECT_EQ(a.cp, b.cp) << kind;
        if (k.find("dp") == std::string::npos) EXPECT_EQ(a.dp, b.dp) << kind;
        if (k.find("pp") == std::string::npos) EXPECT_EQ(a.pp, b.pp) << kind;
      }
    }
    EXPECT_EQ(seen.size(), 24u) << kind;
  }
  for (int r = 0; r < 24; ++r) {
    RankCoords c = d.coords(r);
    EXPECT_EQ(c.tp + 2 * (c.cp + 2 * (c.dp + 2 * c.pp)), r);
    EXPECT_EQ(d.group_of(r, "tp")[c.tp], r);  // index in group == coordinate
    EXPECT_EQ(d.group_of(r, "pp")[c.pp], r);
  }
}

TEST(ParallelDims, BadLayoutsFailWithReadableMessages) {
  std::string m = error_of([] { dims(6, 4, 1); });
  EXPECT_NE(m.find("world size 6 is not divisible"), std::string::npos) << m;
  EXPECT_NE(m.find("tensor_model_parallel_size 4"), std::string::npos) << m;
  m = error_of([] { dims(8, 2, 2, 1, 1, 4); });
  EXPECT_NE(m.find("= 16 but the world has 8"), std::string::npos) << m;
  m = error_of([] { dims(8, 1, 1, 1, 3); });
  EXPECT_NE(m.find("expert_model_parallel_size 3 must divide"), std::string::npos) << m;
  m = error_of([] { dims(8, 2, 1, 1, 1, 0, "tp-dq-pp"); });
  EXPECT_NE(m.find("unknown dim 'dq'"), std::string::npos) << m;
  m = error_of([] { dims(8, 2, 2, 1, 1, 0, "tp-dp"); });
  EXPECT_NE(m.find("leaves out 'pp' whose size is 2"), std::string::npos) << m;
  m = error_of([] { dims(8, 0, 1); });
  EXPECT_NE(m.find("tensor_model_parallel_size=0"), std::string::npos) << m;
  EXPECT_THROW(dims(8, 2, 2).groups("tp-xp"), Error);
  EXPECT_THROW(dims(8, 2, 2).groups("ep-dp"), Error);
}

TEST(ParallelDims, ModelChecksListEveryViolation) {
  ModelConfig m;
  m.name = "tiny";
  m.num_layers = 6;
  m.num_attention_heads = 6;
  m.num_query_groups = 2;
  m.ffn_hidden_size = 96;
  m.padded_vocab_size = 1002;
  ParallelDims ok = dims(8, 2, 2);
  LayoutChecks c;
  c.seq_length = 64;
  c.sequence_parallel = true;
  c.global_batch_size = 8;
  c.micro_batch_size = 2;
  EXPECT_NO_THROW(check_parallel_layout(m, ok, c));

  ParallelDims bad = dims(16, 4, 4);  // tp4: heads 6, groups 2, vocab 1002 fail; pp4: 6 layers fail
  std::string msg = error_of([&] { check_parallel_layout(m, bad, c); });
  EXPECT_NE(msg.find("tensor_model_parallel_size = 4 must divide num_attention_heads = 6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("must divide num_query_groups = 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("padded vocabulary = 1002 (raise make_vocab_size_divisible_by"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pipeline_model_parallel_size = 4 must divide num_layers = 6 (or set"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("global_batch_size"), std::string::npos) << msg;  // 8 % (2 x dp 1) == 0

  LayoutChecks c2 = c;
  c2.global_batch_size = 6;                      // 6 % (2 x dp 2) != 0
  c2.num_layers_per_virtual_pipeline_stage = 2;  // 6 layers / pp 2 = 3 per stage
  c2.seq_length = 63;                            // not divisible by tp 2 under sequence_parallel
  msg = error_of([&] { check_parallel_layout(m, ok, c2); });
  EXPECT_NE(msg.find("global_batch_size = 6 must be divisible by micro_batch_size x data-parallel size = 2 x 2 = 4"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find("num_layers_per_virtual_pipeline_stage 2 does not divide the 3 layers"), std::string::npos) << msg;
  EXPECT_NE(msg.find("must divide seq_length = 63"), std::string::npos) << msg;

  ModelConfig moe = m;
  moe.num_experts = 6;
  EXPECT_THROW(check_parallel_layout(moe, dims(8, 1, 1, 1, 4)), Error);  // 6 experts over ep 4
  EXPECT_THROW(check_parallel_layout(m, dims(8, 1, 1, 1, 2)), Error);    // ep 2 on a dense model

  ModelConfig mla = m;
  mla.multi_latent_attention = true;
  EXPECT_NO_THROW(check_parallel_layout(mla, dims(8, 1, 2)));  // pp 2 x dp 4
  EXPECT_NO_THROW(check_parallel_layout(mla, dims(8, 2, 2)));  // tp 2 splits MLA's heads
  mla.mtp_num_layers = 1;  // MTP on the last stage, split over tp like the main layers
  EXPECT_NO_THROW(check_parallel_layout(mla, dims(8, 2, 2)));
}

// The layout rules that config::validate and check_parallel_layout share: one wording each, naming
// the keys (with where they were set, when known) and the fix.
TEST(ParallelLayoutRules, OneWordingWithOrWithoutSources) {
  EXPECT_EQ(split_problem({"num_attention_heads", 8}, {"tensor_model_parallel_size", 2}), "");
  EXPECT_EQ(split_problem({"num_attention_heads", 8, "model.yaml:3"}, {"tensor_model_parallel_size", 3, "command line"}),
            "tensor_model_parallel_size = 3 (command line) must divide num_attention_heads = 8 (model.yaml:3)");
  EXPECT_EQ(pipeline_split_problem({"num_layers", 6}, {"pipeline_model_parallel_size", 4}),
            "pipeline_model_parallel_size = 4 must divide num_layers = 6 (or set decoder_first_pipeline_num_layers / "
            "decoder_last_pipeline_num_layers)");
  EXPECT_EQ(pipeline_split_problem({"num_layers", 6}, {"pipeline_model_parallel_size", 3}), "");
  const LayoutValue ep2{"expert_model_parallel_size", 2, "exp.yaml:9"}, tp2{"tensor_model_parallel_size", 2};
  const std::string eptp = expert_tensor_parallel_problem(ep2, tp2, false);
  EXPECT_NE(eptp.find("expert_model_parallel_size = 2 (exp.yaml:9) with tensor_model_parallel_size = 2 needs "
                      "sequence_parallel: true"), std::string::npos) << eptp;
  EXPECT_NE(eptp.find("set sequence_parallel: true"), std::string::npos) << eptp;
  EXPECT_EQ(expert_tensor_parallel_problem(ep2, tp2, true), "");
  EXPECT_EQ(expert_tensor_parallel_problem(ep2, {"tensor_model_parallel_size", 1}, false), "");
  EXPECT_EQ(expert_tensor_parallel_problem({"expert_model_parallel_size", 1}, tp2, false), "");
  EXPECT_NE(expert_parallel_problem(ep2, false).find("needs an MoE model"), std::string::npos);
  EXPECT_EQ(expert_parallel_problem(ep2, true), "");
  EXPECT_EQ(context_parallel_seq_problem({"seq_length", 32}, {"context_parallel_size", 3, "command line"}),
            "seq_length = 32 must be divisible by 2 x context_parallel_size = 6 (command line) for load-balanced "
            "causal attention (each rank holds two balanced chunks of every sequence)");
  EXPECT_EQ(context_parallel_seq_problem({"seq_length", 32}, {"context_parallel_size", 4}), "");
  EXPECT_EQ(batch_split_problem({"global_batch_size", 8}, 2, 4), "");
  EXPECT_EQ(batch_split_problem({"global_batch_size", 12}, 2, 4, "why"),
            "global_batch_size = 12 must be divisible by micro_batch_size x data-parallel size = 2 x 4 = 8 (why)");
}

// Megatron's rule at start-up: expert x tensor parallelism needs sequence parallelism.
TEST(ParallelDims, ExpertTimesTensorParallelNeedsSequenceParallel) {
  ModelConfig moe = test::tiny_llama({.name = "tiny_moe", .ffn = 64, .vocab = 128});  // 4 heads, 2 groups
  moe.num_experts = 4;
  moe.moe_ffn_hidden_size = 32;
  LayoutChecks c;
  const ParallelDims tp2ep2 = dims(4, 2, 1, 1, 2);  // dp 2 holds the 2 expert-parallel ranks
  const std::string msg = error_of([&] { check_parallel_layout(moe, tp2ep2, c); });
  EXPECT_NE(msg.find("expert_model_parallel_size = 2 with tensor_model_parallel_size = 2 needs sequence_parallel: "
                     "true"), std::string::npos) << msg;
  c.sequence_parallel = true;
  EXPECT_NO_THROW(check_parallel_layout(moe, tp2ep2, c));
  c.sequence_parallel = false;
  EXPECT_NO_THROW(check_parallel_layout(moe, dims(4, 1, 1, 1, 2), c));  // ep alone
  EXPECT_NO_THROW(check_parallel_layout(moe, dims(4, 2, 1, 1, 1), c));  // tp alone
}

TEST(ParallelDims, UnevenPipelineSplitReplacesTheDivisibilityCheck) {
  ModelConfig m;
  m.name = "tiny";
  m.num_layers = 7;  // not divisible by pp 2 ...
  LayoutChecks c;
  c.decoder_first_pipeline_num_layers = 3;  // ... but 3 + 4 is a valid uneven split
  EXPECT_NO_THROW(check_parallel_layout(m, dims(4, 2, 2), c));
  c.decoder_last_pipeline_num_layers = 3;  // 3 + 3 leaves 1 layer for no stage
  std::string msg = error_of([&] { check_parallel_layout(m, dims(4, 2, 2), c); });
  EXPECT_NE(msg.find("7 layers do not split over 2 pipeline stages"), std::string::npos) << msg;
  LayoutChecks interleaved;
  interleaved.decoder_first_pipeline_num_layers = 3;
  interleaved.num_layers_per_virtual_pipeline_stage = 1;
  msg = error_of([&] { check_parallel_layout(m, dims(4, 2, 2), interleaved); });
  EXPECT_NE(msg.find("is not supported"), std::string::npos) << msg;
  msg = error_of([&] { check_parallel_layout(m, dims(4, 2, 1), c); });  // pp 1
  EXPECT_NE(msg.find("need pipeline_model_parallel_size > 1"), std::string::npos) << msg;
}
