// Expert parallelism with real MPI ranks (ctest runs it as `mpirun -np 2` and `-np 4`,
// tests/parallel/tests.cmake); every rank is one expert-parallel rank (EP = world).
//
// Both token dispatchers (alltoall, allgather) run every test.
// 1. The token exchange on its own: rows with values that name their source, expert and index
//    reach the rank and local expert they were routed to, in expert-major order, and come back
//    exactly; the last rank's experts get no rows at all.
// 2. A tiny MoE model under EP against the single-rank model built from the same seed: each
//    rank runs its own micro-batch (ep ranks are data-parallel ranks); its loss must equal the
//    single-rank model's on that micro-batch, the gathered expert grads the single-rank grads
//    of all ranks' micro-batches, and the dense grads summed over the ranks likewise. The
//    expert bias steers every token to experts 0 and 1, so every rank but the first receives
//    no token for any of its experts (the case other frameworks report hangs for), in the
//    forward, the backward and a full recompute.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>

#include "../test_util.h"
#include "core/rng.h"
#include "model/decoder.h"
#include "parallel/expert_parallel.h"
#include "parallel/mpi_communicator.h"
#include "mpi_test_main.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"

using namespace primus;
using namespace primus::parallel;

namespace {

using mpi_test::world;

std::unique_ptr<ProcessGroups> ep_groups() {
  ParallelSizes s;
  s.ep = world().size();
  return std::make_unique<ProcessGroups>(world(), ParallelDims::create(world().size(), s));
}

using mpi_test::rel_err;

}  // namespace

class ExpertParallelBoth : public ::testing::TestWithParam<TokenDispatcher> {};
INSTANTIATE_TEST_SUITE_P(Dispatchers, ExpertParallelBoth,
                         ::testing::Values(TokenDispatcher::AllToAll, TokenDispatcher::AllGather),
                         [](const auto& info) {
                           return std::string(info.param == TokenDispatcher::AllToAll ? "AllToAll" : "AllGather");
                         });

TEST_P(ExpertParallelBoth, ExchangeReachesEveryExpertAndComesBackExactly) {
  auto groups = ep_groups();
  const ExpertParallel ep{&groups->ep(), GetParam()};
  const int P = ep.size(), me = ep.rank();
  const int64_t El = 2, E = El * P, C = 3;
  // count(s, e): rows source s routes to expert e; the last rank's experts get none.
  auto count = [&](int64_t s, int64_t e) -> int64_t { return e / El == P - 1 ? 0 : (s + e) % 3; };
  auto value = [](int64_t s, int64_t e, int64_t i, int64_t c) {
    return static_cast<float>(1000 * s + 10 * e + i) + 0.25f * static_cast<float>(c);
  };
  std::vector<int64_t> rows(static_cast<size_t>(E));
  int64_t M = 0;
  for (int64_t e = 0; e < E; ++e) M += rows[static_cast<size_t>(e)] = count(me, e);
  Tensor x = Tensor::empty({M, C}, DType::F32);
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < count(me, e); ++i, ++r)
      for (int64_t c = 0; c < C; ++c) x.data<float>()[r * C + c] = value(me, e, i, c);

  auto ctx = ops::Context::cpu();
  Arena arena(Device::CPU);
  const TokenExchange plan = plan_token_exchange(ep, rows, arena);
  ASSERT_EQ(plan.sent(), M);
  ASSERT_EQ(plan.local_rows.size(), static_cast<size_t>(El));
  Tensor got = Tensor::empty({plan.received(), C}, DType::F32);
  dispatch_tokens(ctx, ep, arena, plan, x, got);
  // Expert-major: local expert e's rows from source 0, 1, ... in their order.
  int64_t want_rows = 0;
  r = 0;
  for (int64_t e = 0; e < El; ++e) {
    const int64_t ge = me * El + e;
    int64_t expert_rows = 0;
    for (int64_t s = 0; s < P; ++s)
      for (int64_t i = 0; i < count(s, ge); ++i, ++r, ++expert_rows)
        for (int64_t c = 0; c < C; ++c)
          ASSERT_EQ(got.data<float>()[r * C + c], value(s, ge, i, c)) << "rank " << me << " row " << r;
    EXPECT_EQ(plan.local_rows[static_cast<size_t>(e)], expert_rows);
    want_rows += expert_rows;
  }
  EXPECT_EQ(plan.received(), want_rows);
  if (me == P - 1) EXPECT_EQ(plan.received(), 0) << "the last rank's experts were routed no rows";

  Tensor back = Tensor::zeros({M, C}, DType::F32);
  combine_tokens(ctx, ep, arena, plan, got, back);
  EXPECT_EQ(back.to_float_vector(), x.to_float_vector());
}

TEST_P(ExpertParallelBoth, MoeModelMatchesOneRankWhenRanksReceiveNoTokens) {
  auto groups = ep_groups();
  const int P = world().size(), me = world().rank();
  ModelConfig c = test::tiny_llama({.name = "moe_ep_tiny", .hidden = 32, .ffn = 64, .vocab = 96, .max_positions = 32});
  c.init_method_std = 0.1;
  c.num_experts = 2 * P;
  c.moe_router_topk = 2;
  c.moe_ffn_hidden_size = 16;
  c.moe_shared_expert_intermediate_size = 16;
  c.moe_router_score_function = "sigmoid";
  c.moe_router_enable_expert_bias = true;
  c.moe_router_load_balancing_type = "seq_aux_loss";
  c.moe_aux_loss_coeff = 0.01;
  c.moe_z_loss_coeff = 0.001;

  auto ctx = ops::Context::cpu();
  // Each rank's micro-batch; the reference runs all of them.
  auto batch = [&](int rank, Tensor& tokens, Tensor& labels, Tensor& mask) {
    tokens = Tensor::empty({2, 8}, DType::I32);
    labels = Tensor::empty({2, 8}, DType::I32);
    mask = Tensor::from_floats(std::vector<float>(16, 1.f), {2, 8});
    CounterRng rng(500 + static_cast<uint64_t>(rank), 3);
    for (int64_t i = 0; i < 16; ++i) {
      tokens.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(2 * i) % 96);
      labels.data<int32_t>()[i] = static_cast<int32_t>(rng.bits64(2 * i + 1) % 96);
    }
  };
  const float w = 1.f / static_cast<float>(16 * P), aux_w = 1.f / static_cast<float>(P);
  for (Recompute mode : {Recompute::None, Recompute::Full}) {
    DecoderOptions ro;
    ro.recompute = mode;
    DecoderModel ref(c, ctx, ro);
    DecoderOptions eo = ro;
    eo.expert_parallel = {&groups->ep(), GetParam()};
    DecoderModel ep(c, ctx, eo);
    // Every token's top-2 is experts 0 and 1 (ep rank 0's): the other ranks receive nothing.
    for (DecoderModel* m : {&ref, &ep})
      for (NamedTensor* b : m->buffers()) {
        std::vector<float> bias(static_cast<size_t>(c.num_experts), 0.f);
        bias[0] = bias[1] = 10.f;
        b->value.copy_from(Tensor::from_floats(bias, b->value.shape()));
      }
    ref.zero_grads();
    ep.zero_grads();
    double ref_loss = 0;
    for (int r = 0; r < P; ++r) {
      Tensor t, l, m;
      batch(r, t, l, m);
      const auto res = ref.forward_backward(t, l, m, w, aux_w);
      if (r == me) ref_loss = res.loss_sum;
    }
    Tensor t, l, m;
    batch(me, t, l, m);
    const auto res = ep.forward_backward(t, l, m, w, aux_w);
    EXPECT_LE(std::fabs(res.loss_sum - ref_loss) / ref_loss, 1e-6) << "recompute " << static_cast<int>(mode);
    for (MoeMlp* moe : ep.moe_layers()) {
      double routed = 0;
      for (double n : moe->stats().tokens_per_expert) routed += n;
      EXPECT_EQ(routed, moe->stats().tokens_per_expert[0] + moe->stats().tokens_per_expert[1]);
    }

    // Expert grads: gathered over ep. Dense grads: this rank's share, summed over the ranks.
    std::map<std::string, Tensor> grads;
    for (auto& [name, g] : gather_full_tensors(ep.parameters(), nullptr, ParamField::Grad, &groups->ep()))
      grads[name] = g;
    for (NamedTensor* p : ep.parameters())
      if (!p->expert_parallel) groups->ep().all_reduce(grads.at(p->name));
    int experts_seen = 0;
    for (NamedTensor* p : ref.parameters()) {
      const std::vector<float> want = p->grad.to_float_vector();
      EXPECT_LE(rel_err(grads.at(p->name).to_float_vector(), want), 1e-5) << p->name;
      if (p->name.find("mlp.experts.linear_fc") != std::string::npos) {
        ++experts_seen;
        // Experts 2.. saw no token: their grads are exactly zero on both sides.
        const int64_t per_expert = p->grad.numel() / c.num_experts;
        for (int64_t i = 2 * per_expert; i < p->grad.numel(); ++i)
          ASSERT_EQ(grads.at(p->name).data<float>()[i], 0.f) << p->name;
      }
    }
    EXPECT_EQ(experts_seen, 2 * c.num_layers);
  }
}

int main(int argc, char** argv) { return mpi_test::run_all(argc, argv); }
