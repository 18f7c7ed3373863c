// The MoE layer beyond the PyTorch parity of tests/reference (which checks the forward and
// every gradient of whole MoE models): the dispatch plan's layout on hand-made routings
// (dropless, capacity by probs / position, padding, an expert without tokens), the
// expert-bias rule, the first-micro-batch gradient overwrite and the recompute modes on an MoE
// model, the moe_layer_freq forms, and the refusals of what is not built.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../test_util.h"
#include "config/config.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "train/trainer.h"
#include "train/train_options.h"

using namespace primus;

namespace {

Tensor ints(std::vector<int32_t> v, Shape s) {
  Tensor t = Tensor::empty(s, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

std::vector<int32_t> int_vector(const Tensor& t, int64_t n = -1) {
  const int64_t m = n < 0 ? t.numel() : n;
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + m);
}

struct Plan {
  std::vector<int32_t> row_of, pair_of_row, counts;
};

// 5 tokens, top-2 over 3 experts; expert 0 is wanted by 4 tokens, expert 2 by none.
Plan plan(int64_t capacity, bool by_probs, bool pad) {
  auto ctx = ops::Context::cpu();
  const Tensor indices = ints({0, 1, 1, 0, 0, 1, 1, 0, 0, 1}, {5, 2});
  const Tensor probs = Tensor::from_floats({0.6f, 0.4f, 0.7f, 0.3f, 0.9f, 0.1f, 0.8f, 0.2f, 0.55f, 0.45f}, {5, 2});
  Tensor row_of = Tensor::empty({5, 2}, DType::I32), por = Tensor::empty({12}, DType::I32);
  Tensor counts = Tensor::empty({3}, DType::I32);
  ops::moe_dispatch_plan(ctx, row_of, por, counts, indices, probs, capacity, by_probs, pad);
  Plan p{int_vector(row_of), {}, int_vector(counts)};
  int64_t m = 0;
  for (int32_t c : p.counts) m += c;
  p.pair_of_row = int_vector(por, m);
  return p;
}

ModelConfig tiny_moe() {
  ModelConfig c = test::tiny_llama({.name = "tiny_moe", .vocab = 23, .max_positions = 32});
  c.init_method_std = 0.2;
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 12;
  c.moe_aux_loss_coeff = 0.01;
  c.moe_z_loss_coeff = 0.001;
  c.moe_shared_expert_intermediate_size = 8;
  return c;
}

struct Batch {
  Tensor tokens, labels, mask;
};
Batch batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Batch b{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::F32)};
  CounterRng rng(seed, 7);
  for (int64_t i = 0; i < B * T; ++i) {
    b.tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(i) % V);
    b.labels.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(i + 500) % V);
    b.mask.data<float>()[i] = 1.f;
  }
  return b;
}

}  // namespace

// Group-limited routing, by hand: 2 groups of 2 experts, top-2 within 1 group, softmax over all
// experts first. Logits [3, -5 | 2.5, 2.5]: group 0's best score (e^3) beats group 1's (e^2.5),
// but group 1's two together (2 e^2.5 = 24.4) beat group 0's (e^3 + e^-5 = 20.1). So the max
// score (DeepSeek-V2) routes to experts {0, 1}, the top-2 sum (Megatron, V3) to {2, 3} (tied:
// the lower index first). The router's config key reaches it: moe_router_group_score.
TEST(MoeRouter, GroupScoredByBestExpertOrByTopKSum) {
  auto ctx = ops::Context::cpu();
  const Tensor logits = Tensor::from_floats({3.f, -5.f, 2.5f, 2.5f}, {1, 4});
  ops::MoeRouting r;
  r.topk = 2;
  r.pre_softmax = true;
  r.num_groups = 2;
  r.group_topk = 1;
  Tensor probs = Tensor::empty({1, 2}, DType::F32), idx = Tensor::empty({1, 2}, DType::I32);
  ops::moe_topk_forward(ctx, probs, idx, logits, Tensor(), r);
  EXPECT_EQ(int_vector(idx), (std::vector<int32_t>{2, 3}));
  r.group_max = true;
  ops::moe_topk_forward(ctx, probs, idx, logits, Tensor(), r);
  EXPECT_EQ(int_vector(idx), (std::vector<int32_t>{0, 1}));
  const double sum = std::exp(3.0) + std::exp(-5.0) + 2 * std::exp(2.5);
  EXPECT_NEAR(probs.data<float>()[0], std::exp(3.0) / sum, 1e-6);
  EXPECT_NEAR(probs.data<float>()[1], std::exp(-5.0) / sum, 1e-6);
  // top-3 in 2 of 3 groups of 2: no multiple of group_topk, allowed only with the max score.
  const Tensor l6 = Tensor::from_floats({0.f, 1.f, 2.f, 3.f, 4.f, 5.f}, {1, 6});
  r = ops::MoeRouting{};
  r.topk = 3;
  r.num_groups = 3;
  r.group_topk = 2;
  r.group_max = true;
  Tensor p3 = Tensor::empty({1, 3}, DType::F32), i3 = Tensor::empty({1, 3}, DType::I32);
  ops::moe_topk_forward(ctx, p3, i3, l6, Tensor(), r);
  EXPECT_EQ(int_vector(i3), (std::vector<int32_t>{5, 4, 3}));
  r.group_max = false;
  EXPECT_THROW(ops::moe_topk_forward(ctx, p3, i3, l6, Tensor(), r), Error);
  // The config key: MoeMlp routes by it (a model's layer built from a ModelConfig).
  ModelConfig c = tiny_moe();
  c.num_experts = 4;
  c.moe_router_topk = 2;
  c.moe_router_pre_softmax = true;
  c.moe_router_num_groups = 2;
  c.moe_router_group_topk = 1;
  c.moe_router_group_score = "max";
  EXPECT_NO_THROW(check_buildable(c));
  c.moe_router_group_score = "best";
  EXPECT_THROW(check_buildable(c), Error);
  c.moe_router_group_score = "max";
  c.moe_router_num_groups = 0;
  EXPECT_THROW(check_buildable(c), Error);
}

TEST(MoeDispatch, DroplessGroupsRowsByExpertInTokenOrder) {
  const Plan p = plan(-1, true, false);
  EXPECT_EQ(p.counts, (std::vector<int32_t>{5, 5, 0}));
  // Expert 0's pairs in token order (t*2+j): 0, 3, 4, 7, 8; then expert 1's: 1, 2, 5, 6, 9.
  EXPECT_EQ(p.pair_of_row, (std::vector<int32_t>{0, 3, 4, 7, 8, 1, 2, 5, 6, 9}));
  EXPECT_EQ(p.row_of, (std::vector<int32_t>{0, 5, 6, 1, 2, 7, 8, 3, 4, 9}));
}

TEST(MoeDispatch, CapacityDropsByProbsOrPositionAndPads) {
  // Capacity 3: each expert keeps its three highest probs, in token order.
  // Expert 0's pairs and probs: 0 (0.6), 3 (0.3), 4 (0.9), 7 (0.2), 8 (0.55) -> keep 0, 4, 8.
  // Expert 1's: 1 (0.4), 2 (0.7), 5 (0.1), 6 (0.8), 9 (0.45) -> keep 2, 6, 9.
  Plan p = plan(3, true, false);
  EXPECT_EQ(p.counts, (std::vector<int32_t>{3, 3, 0}));
  EXPECT_EQ(p.pair_of_row, (std::vector<int32_t>{0, 4, 8, 2, 6, 9}));
  EXPECT_EQ(p.row_of, (std::vector<int32_t>{0, -1, 3, -1, 1, -1, 4, -1, 2, 5}));
  // Position: the first three of each expert.
  p = plan(3, false, false);
  EXPECT_EQ(p.pair_of_row, (std::vector<int32_t>{0, 3, 4, 1, 2, 5}));
  // Padding: every expert has exactly `capacity` rows, padding rows (-1) after its tokens.
  p = plan(3, true, true);
  EXPECT_EQ(p.counts, (std::vector<int32_t>{3, 3, 3}));
  EXPECT_EQ(p.pair_of_row, (std::vector<int32_t>{0, 4, 8, 2, 6, 9, -1, -1, -1}));
}

TEST(MoeLayer, ExpertBiasMovesAgainstTheLoad) {
  ModelConfig c = tiny_moe();
  c.moe_router_score_function = "sigmoid";
  c.moe_router_enable_expert_bias = true;
  c.moe_router_bias_update_rate = 0.25;
  auto ctx = ops::Context::cpu();
  DecoderModel m(c, ctx);
  ASSERT_EQ(m.buffers().size(), 2u);
  ASSERT_EQ(m.moe_layers().size(), 2u);
  // mean 10: overloaded experts go down, underloaded up, an exactly average one stays.
  m.moe_layers()[0]->update_expert_bias(ctx, {16, 4, 10, 10});
  EXPECT_EQ(m.buffers()[0]->value.to_float_vector(), (std::vector<float>{-0.25f, 0.25f, 0.f, 0.f}));
  EXPECT_EQ(m.buffers()[0]->value.dtype(), DType::F32);
}

TEST(MoeLayer, GradOverwriteAndRecomputeGiveTheSameGradients) {
  const ModelConfig c = tiny_moe();
  auto ctx = ops::Context::cpu();
  const Batch b1 = batch(2, 8, c.padded_vocab_size, 1), b2 = batch(2, 8, c.padded_vocab_size, 2);
  auto run = [&](Recompute mode, bool overwrite) {
    DecoderOptions o;
    o.recompute = mode;
    DecoderModel m(c, ctx, o);
    for (NamedTensor* p : m.parameters()) ops::fill(ctx, p->grad, std::nanf(""));  // must be overwritten
    if (overwrite) {
      m.zero_grads_for_overwrite();
    } else {
      m.zero_grads();
    }
    m.forward_backward(b1.tokens, b1.labels, b1.mask, 0.03f, 0.5f);
    m.forward_backward(b2.tokens, b2.labels, b2.mask, 0.03f, 0.5f);
    return test::grads_of(m);
  };
  const auto ref = run(Recompute::None, false);
  for (const auto& [mode, overwrite] : {std::pair{Recompute::None, true}, std::pair{Recompute::Selective, false},
                                        std::pair{Recompute::Full, false}}) {
    const auto g = run(mode, overwrite);
    for (const auto& [name, v] : ref) {
      if (!overwrite) {
        EXPECT_LT(test::max_rel_error(g.at(name), v), 1e-6) << name;
      } else {
        EXPECT_EQ(g.at(name), v) << name;  // the same ops, written instead of added to zeros
      }
    }
  }
}

TEST(MoeConfig, LayerFreqIntegerOrListExpression) {
  EXPECT_EQ(config::parse_moe_layer_freq("2", 4).every, 2);
  EXPECT_EQ(config::parse_moe_layer_freq("([0]*1+[1]*3)", 4).pattern, (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(config::parse_moe_layer_freq("[1, 0, 1, 0]", 4).pattern, (std::vector<int>{1, 0, 1, 0}));
  for (const char* bad : {"([0]*1+[1]*2)", "[0,2,1,1]", "three", "0", "[1,1"}) {
    try {
      (void)config::parse_moe_layer_freq(bad, 4);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(MoeConfig, WhatIsNotBuiltIsRefusedByName) {
  const std::string exp = std::string(PRIMUS_TEST_DATA_DIR) + "/../train/tiny_mock-pretrain.yaml";
  auto refusal = [&](std::vector<std::string> sets, const std::string& key) {
    sets.insert(sets.end(), {"num_experts=4", "moe_router_topk=2"});
    try {
      config::Config cfg = config::load_experiment(exp, sets, 0);
      const train::TrainOptions o = train::train_options(cfg, false);
      check_buildable(o.model);
      ADD_FAILURE() << key << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  ::setenv("PRIMUS_TEST_WORKSPACE", "/tmp/primus_test_moe_config", 1);
  refusal({"moe_token_dispatcher_type=flex"}, "moe_token_dispatcher_type");
  refusal({"moe_permute_fusion=false"}, "moe_permute_fusion");
  refusal({"moe_shared_expert_overlap=true"}, "moe_shared_expert_overlap");
  refusal({"moe_router_dtype=fp64"}, "moe_router_dtype");
  refusal({"moe_router_load_balancing_type=sinkhorn"}, "moe_router_load_balancing_type");
  refusal({"moe_router_enable_expert_bias=true"}, "moe_router_enable_expert_bias");  // softmax scores
  refusal({"moe_pad_expert_input_to_capacity=true"}, "moe_pad_expert_input_to_capacity");
  refusal({"moe_layer_freq=([0]*1+[1]*2)"}, "moe_layer_freq");
  refusal({"moe_router_num_groups=3", "moe_router_group_topk=1"}, "moe_router_num_groups");
  refusal({"moe_router_group_score=max"}, "moe_router_group_score");  // no groups to score
  // max score: 1 of 4 groups of 1 expert cannot hold the top-2.
  refusal({"moe_router_num_groups=4", "moe_router_group_topk=1", "moe_router_group_score=max"},
          "moe_router_group_topk");
  // The experts split over the tensor-parallel ranks only.
  refusal({"expert_tensor_parallel_size=2"}, "expert_tensor_parallel_size = 2");
  // Expert x tensor parallelism needs sequence parallelism (Megatron's rule).
  refusal({"tensor_model_parallel_size=2", "expert_model_parallel_size=2", "moe_token_dispatcher_type=alltoall"},
          "needs sequence_parallel: true");
  // The experts split over the dense tensor-parallel ranks only.
  refusal({"tensor_model_parallel_size=2", "expert_tensor_parallel_size=1"}, "expert_tensor_parallel_size = 1");
}

// fp8 and its scaling keys are read into TrainOptions::fp8 (ops/fp8.h); a scaling key without
// fp8, and what FP8 does not build, are refused by name (tests/unit/test_trainer.cpp trains).
TEST(PrecisionConfig, Fp8KeysAreReadOrRefusedByName) {
  setenv("PRIMUS_TEST_WORKSPACE", "/tmp/primus_test_fp8_ws", 0);
  const std::string exp = std::string(PRIMUS_TEST_DATA_DIR) + "/../train/tiny_mock-pretrain.yaml";
  auto options = [&](std::vector<std::string> sets) {
    config::Config cfg = config::load_experiment(exp, sets, 0);
    return train::train_options(cfg, false);
  };
  auto refusal = [&](std::vector<std::string> sets) {
    try {
      (void)options(std::move(sets));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const train::TrainOptions o = options({"bf16=true", "fp8=e4m3", "fp8_recipe=delayed", "fp8_amax_history_len=16",
                                         "fp8_amax_compute_algo=max", "fp8_margin=1"});
  ASSERT_TRUE(o.fp8.has_value());
  EXPECT_EQ(o.fp8->format, ops::Fp8Format::E4M3);
  EXPECT_EQ(o.fp8->recipe, ops::Fp8Recipe::Delayed);
  EXPECT_EQ(o.fp8->amax_history_len, 16);
  EXPECT_TRUE(o.fp8->amax_max);
  EXPECT_EQ(o.fp8->margin, 1);
  EXPECT_EQ(options({"bf16=true", "fp8=hybrid", "fp8_recipe=tensorwise"}).fp8->recipe, ops::Fp8Recipe::Tensorwise);
  EXPECT_FALSE(options({"bf16=true"}).fp8.has_value());
  EXPECT_NE(refusal({"fp8_recipe=tensorwise"}).find("fp8_recipe"), std::string::npos);
  EXPECT_NE(refusal({"fp8_amax_history_len=16"}).find("fp8 is not set"), std::string::npos);
  EXPECT_NE(refusal({"bf16=true", "fp8=hybrid", "fp8_amax_history_len=4096"}).find("fp8_amax_history_len"),
            std::string::npos);
}
