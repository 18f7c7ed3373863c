// Context parallelism (src/parallel/context_parallel.h) with real MPI ranks (ctest runs it as
// `mpirun -np 2` and `-np 4`, tests/parallel/tests.cmake).
//
//   - the load-balanced split: every position held exactly once, rank i's chunks i and
//     2CP-1-i, context_parallel_columns picks those columns, a bad length is refused by name;
//   - attention_merge on the CPU against the softmax over the union of the keys, written out
//     here in double;
//   - ring attention forward (out, lse) and backward (dq, dk, dv) on the cp ranks against ONE
//     rank's causal attention over the whole sequence (ops::attention_forward/backward), with
//     GQA heads, over the whole world (CP = 2 or 4) and, at np 4, over two rings of 2.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "core/arena.h"
#include "core/error.h"
#include "core/rng.h"
#include "mpi_test_main.h"
#include "ops/ops.h"
#include "parallel/context_parallel.h"

using namespace primus;
using namespace primus::parallel;

namespace {

using mpi_test::rel_err;
using mpi_test::world;

Tensor randn(Shape shape, uint64_t stream, float std = 1.f) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  CounterRng rng(1234, stream);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std * rng.normal(static_cast<uint64_t>(i));
  return t;
}

// x (B, T, ...) -> the (B, 2c, ...) rows at `pos` (the cp rank's columns).
Tensor take_positions(const Tensor& x, const std::vector<int64_t>& pos) {
  const int64_t B = x.size(0), T = x.size(1), row = x.numel() / (B * T), L = static_cast<int64_t>(pos.size());
  Shape shape = x.shape();
  shape[1] = L;
  Tensor out = Tensor::empty(shape, x.dtype());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < L; ++j)
      for (int64_t e = 0; e < row; ++e)
        out.data<float>()[(b * L + j) * row + e] = x.data<float>()[(b * T + pos[static_cast<size_t>(j)]) * row + e];
  return out;
}

// lse (B, H, T) -> (B, H, 2c) at `pos`.
Tensor take_lse(const Tensor& lse, const std::vector<int64_t>& pos) {
  const int64_t B = lse.size(0), H = lse.size(1), T = lse.size(2), L = static_cast<int64_t>(pos.size());
  Tensor out = Tensor::empty({B, H, L}, DType::F32);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t j = 0; j < L; ++j) out.data<float>()[bh * L + j] = lse.data<float>()[bh * T + pos[static_cast<size_t>(j)]];
  return out;
}

TEST(ContextParallel, ChunkAssignmentCoversEveryPositionOnce) {
  for (int P : {1, 2, 3, 4}) {
    const int64_t T = 2 * P * 3;  // c = 3
    std::multiset<int64_t> seen;
    for (int r = 0; r < P; ++r) {
      const auto [a, b] = context_parallel_chunks(r, P);
      EXPECT_EQ(a, r);
      EXPECT_EQ(b, 2 * P - 1 - r);
      const std::vector<int64_t> pos = context_parallel_positions(T, r, P);
      ASSERT_EQ(pos.size(), 6u);
      for (int64_t j = 0; j < 3; ++j) {
        EXPECT_EQ(pos[static_cast<size_t>(j)], r * 3 + j);
        EXPECT_EQ(pos[static_cast<size_t>(3 + j)], (2 * P - 1 - r) * 3 + j);
      }
      seen.insert(pos.begin(), pos.end());
    }
    ASSERT_EQ(seen.size(), static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) EXPECT_EQ(seen.count(t), 1u) << "position " << t << " at cp " << P;
  }
  // The columns of a (B, T) tensor: row b, column t holds 100 b + t.
  Tensor ids = Tensor::empty({2, 8}, DType::I32);
  for (int64_t i = 0; i < 16; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(100 * (i / 8) + i % 8);
  const Tensor r1 = context_parallel_columns(ids, 1, 2);  // chunks 1 and 2 of 4 (c = 2): columns 2,3,4,5
  ASSERT_EQ(r1.shape(), (Shape{2, 4}));
  const std::vector<int32_t> want{2, 3, 4, 5, 102, 103, 104, 105};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(r1.data<int32_t>()[i], want[i]);
  const Tensor r0 = context_parallel_columns(ids, 0, 2);  // chunks 0 and 3: columns 0,1,6,7
  const std::vector<int32_t> want0{0, 1, 6, 7, 100, 101, 106, 107};
  for (size_t i = 0; i < want0.size(); ++i) EXPECT_EQ(r0.data<int32_t>()[i], want0[i]);
  try {
    context_parallel_positions(12, 0, 4);
    FAIL() << "seq_length 12 over cp 4 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seq_length = 12 is not a multiple of 8"), std::string::npos) << e.what();
  }
}

// Two (out, lse) of the same queries over disjoint key sets merge into the softmax over their
// union: checked against that softmax computed here in double, with a row of -inf (no keys) on
// the accumulated side and one on the part side.
TEST(ContextParallel, AttentionMergeIsTheSoftmaxOverTheUnion) {
  ops::Context ctx = ops::Context::cpu();
  const int64_t B = 2, T = 6, H = 3, Dv = 5, Tp = 3, t0 = 2, K1 = 4, K2 = 7;
  // Scores and values of each (b, t, h) over K1 keys (acc side) and K2 keys (part side).
  const Tensor s1 = randn({B, T, H, K1}, 1), s2 = randn({B, T, H, K2}, 2);
  const Tensor v1 = randn({B, T, H, K1, Dv}, 3), v2 = randn({B, T, H, K2, Dv}, 4);
  auto softmax_out = [&](const Tensor& s, const Tensor& vv, int64_t K, int64_t b, int64_t t, int64_t h,
                         std::vector<double>& o) {
    double mx = -1e300, sum = 0;
    const float* sr = s.data<float>() + ((b * T + t) * H + h) * K;
    for (int64_t j = 0; j < K; ++j) mx = std::max(mx, static_cast<double>(sr[j]));
    o.assign(static_cast<size_t>(Dv), 0.0);
    for (int64_t j = 0; j < K; ++j) {
      const double p = std::exp(sr[j] - mx);
      sum += p;
      for (int64_t c = 0; c < Dv; ++c) o[static_cast<size_t>(c)] += p * vv.data<float>()[(((b * T + t) * H + h) * K + j) * Dv + c];
    }
    for (double& x : o) x /= sum;
    return mx + std::log(sum);
  };
  Tensor acc = Tensor::empty({B, T, H, Dv}, DType::F32), acc_lse = Tensor::empty({B, H, T}, DType::F32);
  Tensor part = Tensor::empty({B, Tp, H, Dv}, DType::F32), part_lse = Tensor::empty({B, H, Tp}, DType::F32);
  std::vector<double> o;
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        acc_lse.data<float>()[(b * H + h) * T + t] = static_cast<float>(softmax_out(s1, v1, K1, b, t, h, o));
        for (int64_t c = 0; c < Dv; ++c) acc.data<float>()[((b * T + t) * H + h) * Dv + c] = static_cast<float>(o[c]);
        if (t < t0 || t >= t0 + Tp) continue;
        const int64_t i = t - t0;
        part_lse.data<float>()[(b * H + h) * Tp + i] = static_cast<float>(softmax_out(s2, v2, K2, b, t, h, o));
        for (int64_t c = 0; c < Dv; ++c) part.data<float>()[((b * Tp + i) * H + h) * Dv + c] = static_cast<float>(o[c]);
      }
  // Row (b 0, h 1, t0): nothing accumulated yet; row (b 1, h 2, t0 + 1): the part saw no key.
  acc_lse.data<float>()[(0 * H + 1) * T + t0] = ninf;
  part_lse.data<float>()[(1 * H + 2) * Tp + 1] = ninf;
  const Tensor acc_before = acc.clone();
  ops::attention_merge(ctx, acc, acc_lse, part, part_lse, t0);
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const float* got = acc.data<float>() + ((b * T + t) * H + h) * Dv;
        const float got_lse = acc_lse.data<float>()[(b * H + h) * T + t];
        const bool in_part = t >= t0 && t < t0 + Tp;
        std::vector<double> want(static_cast<size_t>(Dv));
        double want_lse = 0;
        if (!in_part || (b == 1 && h == 2 && t == t0 + 1)) {  // unchanged
          for (int64_t c = 0; c < Dv; ++c) want[c] = acc_before.data<float>()[((b * T + t) * H + h) * Dv + c];
          want_lse = softmax_out(s1, v1, K1, b, t, h, o);
        } else if (b == 0 && h == 1 && t == t0) {  // the part alone
          want_lse = softmax_out(s2, v2, K2, b, t, h, want);
        } else {  // both key sets: softmax over the K1 + K2 scores
          std::vector<double> o1, o2;
          const double l1 = softmax_out(s1, v1, K1, b, t, h, o1), l2 = softmax_out(s2, v2, K2, b, t, h, o2);
          want_lse = std::log(std::exp(l1) + std::exp(l2));
          for (int64_t c = 0; c < Dv; ++c) want[c] = std::exp(l1 - want_lse) * o1[c] + std::exp(l2 - want_lse) * o2[c];
        }
        worst = std::max(worst, std::fabs(got_lse - want_lse));
        for (int64_t c = 0; c < Dv; ++c) worst = std::max(worst, std::fabs(got[c] - want[c]));
      }
  EXPECT_LT(worst, 2e-6);
}

// Ring attention on `cp` (every rank of it holds its chunks of the same full q, k, v) against
// the full causal attention of one rank.
// Hkv kv heads of width D (GQA: 2), values of width Dv (MLA: every head its own, Dv != D).
void check_ring(Communicator* group, int64_t c, uint64_t seed_stream, int64_t Hkv = 2, int64_t D = 8, int64_t Dv = 8) {
  ops::Context ctx = ops::Context::cpu();
  const ContextParallel cp{group};
  const int P = cp.size();
  const int64_t B = 2, T = 2 * P * c, Hq = 4;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const Tensor q = randn({B, T, Hq, D}, seed_stream), k = randn({B, T, Hkv, D}, seed_stream + 1),
               v = randn({B, T, Hkv, Dv}, seed_stream + 2), dout = randn({B, T, Hq, Dv}, seed_stream + 3);
  // The reference: one rank, the whole sequence.
  Tensor out = Tensor::empty({B, T, Hq, Dv}, DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
  ops::attention_forward(ctx, out, lse, q, k, v, scale, true);
  Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
         dv = Tensor::empty(v.shape(), DType::F32);
  ops::attention_backward(ctx, dq, dk, dv, dout, q, k, v, out, lse, scale, true);
  // This cp rank's share.
  const std::vector<int64_t> pos = context_parallel_positions(T, cp.rank(), P);
  const Tensor ql = take_positions(q, pos), kl = take_positions(k, pos), vl = take_positions(v, pos),
               dol = take_positions(dout, pos);
  Arena arena(Device::CPU);
  Tensor o = Tensor::empty(dol.shape(), DType::F32), l = Tensor::empty({B, Hq, 2 * c}, DType::F32);
  ring_attention_forward(ctx, cp, arena, o, l, ql, kl, vl, scale);
  EXPECT_LT(rel_err(o.to_float_vector(), take_positions(out, pos).to_float_vector()), 1e-5) << "out, cp " << P;
  EXPECT_LT(rel_err(l.to_float_vector(), take_lse(lse, pos).to_float_vector()), 1e-5) << "lse, cp " << P;
  Tensor gq = Tensor::empty(ql.shape(), DType::F32), gk = Tensor::empty(kl.shape(), DType::F32),
         gv = Tensor::empty(vl.shape(), DType::F32);
  ring_attention_backward(ctx, cp, arena, gq, gk, gv, dol, ql, kl, vl, o, l, scale);
  EXPECT_LT(rel_err(gq.to_float_vector(), take_positions(dq, pos).to_float_vector()), 1e-5) << "dq, cp " << P;
  EXPECT_LT(rel_err(gk.to_float_vector(), take_positions(dk, pos).to_float_vector()), 1e-5) << "dk, cp " << P;
  EXPECT_LT(rel_err(gv.to_float_vector(), take_positions(dv, pos).to_float_vector()), 1e-5) << "dv, cp " << P;
}

TEST(ContextParallel, RingAttentionMatchesOneRanksFullAttention) {
  check_ring(&world(), 4, 10);
  check_ring(&world(), 3, 20);  // chunks of an odd length
}

TEST(ContextParallel, RingAttentionWithMlaShapes) {  // a kv head per query head, Dv != Dq
  check_ring(&world(), 3, 50, 4, 12, 8);
}

TEST(ContextParallel, FullRowsInvertTheColumns) {
  const int P = world().size();
  const int64_t B = 3, T = 2 * P * 5;
  Tensor full = Tensor::empty({B, T}, DType::I32), mask = Tensor::empty({B, T}, DType::F32);
  for (int64_t i = 0; i < B * T; ++i) {
    full.data<int32_t>()[i] = static_cast<int32_t>(i * 7 + 1);
    mask.data<float>()[i] = 0.25f * static_cast<float>(i % 5);
  }
  const ContextParallel cp{&world()};
  const Tensor back = context_parallel_full_rows(context_parallel_columns(full, cp.rank(), P), cp);
  ASSERT_EQ(back.shape(), full.shape());
  EXPECT_EQ(back.to_float_vector(), full.to_float_vector());
  const Tensor mback = context_parallel_full_rows(context_parallel_columns(mask, cp.rank(), P), cp);
  EXPECT_EQ(mback.to_float_vector(), mask.to_float_vector());
  EXPECT_EQ(context_parallel_full_rows(full, ContextParallel{}).to_float_vector(), full.to_float_vector());  // one rank
}

TEST(ContextParallel, RingsOfTwoInsideALargerWorld) {
  if (world().size() % 2 != 0 || world().size() < 4) GTEST_SKIP() << "needs 4 ranks";
  auto ring = world().split(world().rank() / 2, world().rank(), "cp");
  check_ring(ring.get(), 5, 30 + static_cast<uint64_t>(world().rank() / 2));  // each ring its own data
}

TEST(ContextParallel, OneRankIsPlainCausalAttention) {
  check_ring(nullptr, 4, 40);
}

}  // namespace

int main(int argc, char** argv) { return primus::mpi_test::run_all(argc, argv); }
