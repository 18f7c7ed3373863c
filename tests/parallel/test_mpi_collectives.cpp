// Multi-rank tests of the MPI communicator and everything built on it, run by ctest as
// `mpirun -np 2` and `mpirun -np 4` (tests/parallel/tests.cmake). Every rank runs every
// test in the same order; expected values are computed on each rank from the closed-form
// inputs of all ranks (in double), never by another collective.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/dtype.h"
#include "parallel/distributed_optimizer_shards.h"
#include "parallel/grad_buckets.h"
#include "parallel/mpi_communicator.h"
#include "mpi_test_main.h"
#include "parallel/parallel_dims.h"
#include "parallel/process_groups.h"

using namespace primus;
using namespace primus::parallel;

namespace {

// The communicator lives in main(); tests reach it through this accessor.
using mpi_test::world;

// Rank r's input element i: small halves and integers so that fp32 sums are exact.
float input(int r, int64_t i) { return static_cast<float>((r + 1) * 0.5 + (i % 13) - 6); }

Tensor make_input(int r, int64_t n, DType dt) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = input(r, i);
  return Tensor::from_floats(v, {n}, dt);
}

double reference(ReduceOp op, int64_t i, int size) {
  double acc = op == ReduceOp::Max ? -1e30 : 0.0;
  for (int r = 0; r < size; ++r) acc = op == ReduceOp::Max ? std::max<double>(acc, input(r, i)) : acc + input(r, i);
  return op == ReduceOp::Avg ? acc / size : acc;
}

}  // namespace

TEST(MpiCollectives, AllReduceFp32AndBf16UnevenSizes) {
  const int n = world().size(), me = world().rank();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t len : {int64_t(1), int64_t(7), int64_t(1000), int64_t(65537)}) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
        Tensor t = make_input(me, len, dt);
        world().all_reduce(t, op);
        std::vector<float> got = t.to_float_vector();
        for (int64_t i = 0; i < len; ++i) {
          double want = reference(op, i, n);
          // bf16 keeps 8 significant bits: halves up to |x| < 128 are exact, so sums are
          // exact here; the average of 4 ranks can need 2 more bits -> round once.
          double tol = dt == DType::F32 ? 0.0 : std::abs(want) / 128.0;
          ASSERT_NEAR(got[i], want, tol) << dtype_name(dt) << " len " << len << " op "
                                         << reduce_op_name(op) << " i " << i;
        }
      }
    }
  }
}

TEST(MpiCollectives, Bf16SumRoundsLikeFp32ThenBf16) {
  // Values that are not exact in a bf16 sum: 1 + 2^-8 on every rank.
  const int n = world().size();
  Tensor t = Tensor::from_floats({1.00390625f, 3.0f}, {2}, DType::BF16);  // 1+2^-8 rounds to 1 in bf16
  world().all_reduce(t, ReduceOp::Sum);
  std::vector<float> got = t.to_float_vector();
  EXPECT_EQ(got[0], static_cast<float>(n));  // bf16(1+2^-8) == 1
  EXPECT_EQ(got[1], 3.0f * n);
}

TEST(MpiCollectives, ReduceScatterOutOfPlaceAndInPlace) {
  const int n = world().size(), me = world().rank();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t m : {int64_t(1), int64_t(3), int64_t(1001)}) {
      Tensor in = make_input(me, m * n, dt);
      Tensor out = Tensor::zeros({m}, dt);
      world().reduce_scatter(out, in, ReduceOp::Sum);
      std::vector<float> got = out.to_float_vector();
      for (int64_t k = 0; k < m; ++k)
        ASSERT_EQ(got[k], reference(ReduceOp::Sum, me * m + k, n)) << dtype_name(dt) << " m " << m;

      // in place: the output is this rank's own slot of the input (distributed optimizer)
      Tensor buf = make_input(me, m * n, dt);
      Tensor slot = buf.rows(me * m, (me + 1) * m);
      world().reduce_scatter(slot, buf, ReduceOp::Avg);
      got = slot.to_float_vector();
      for (int64_t k = 0; k < m; ++k)
        ASSERT_NEAR(got[k], reference(ReduceOp::Avg, me * m + k, n),
                    dt == DType::F32 ? 1e-6 : 0.05)
            << "in place " << dtype_name(dt) << " m " << m;
    }
  }
}

TEST(MpiCollectives, AllGatherOutOfPlaceAndInPlace) {
  const int n = world().size(), me = world().rank();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t m : {int64_t(1), int64_t(5), int64_t(999)}) {
      Tensor in = make_input(me, m, dt);
      Tensor out = Tensor::zeros({m * n}, dt);
      world().all_gather(out, in);
      Tensor buf = Tensor::zeros({m * n}, dt);
      Tensor slot = buf.rows(me * m, (me + 1) * m);
      slot.copy_from(make_input(me, m, dt));
      world().all_gather(buf, slot);
      std::vector<float> a = out.to_float_vector(), b = buf.to_float_vector();
      for (int r = 0; r < n; ++r)
        for (int64_t k = 0; k < m; ++k) {
          ASSERT_EQ(a[r * m + k], input(r, k));
          ASSERT_EQ(b[r * m + k], input(r, k));
        }
    }
  }
  // an overlap that is not this rank's slot is refused before anything is sent
  Tensor buf = Tensor::zeros({4 * n}, DType::F32);
  Tensor wrong = buf.rows(1, 5);
  if (n > 1) EXPECT_THROW(world().all_gather(buf, wrong), Error);
}

TEST(MpiCollectives, BroadcastFromEveryRoot) {
  const int n = world().size(), me = world().rank();
  for (int root = 0; root < n; ++root) {
    Tensor t = make_input(me, 33, DType::BF16);
    world().broadcast(t, root);
    std::vector<float> got = t.to_float_vector();
    for (int64_t i = 0; i < 33; ++i) ASSERT_EQ(got[i], input(root, i));
  }
}

TEST(MpiCollectives, SendRecvAroundARing) {
  const int n = world().size(), me = world().rank();
  Tensor mine = make_input(me, 17, DType::F32);
  Tensor from_prev = Tensor::zeros({17}, DType::F32);
  CommHandle r = world().recv_async(from_prev, (me + n - 1) % n);
  CommHandle s = world().send_async(mine, (me + 1) % n);
  s->wait();
  r->wait();
  std::vector<float> got = from_prev.to_float_vector();
  for (int64_t i = 0; i < 17; ++i) ASSERT_EQ(got[i], input((me + n - 1) % n, i));
  EXPECT_THROW(world().send(mine, me), Error);
}

// send_recv: a ring shift in both directions (each rank's blocking call would deadlock as two
// separate blocking sends), then a self pair (a copy), mixed with a plain send/recv that must
// match in issue order, and the argument checks.
TEST(MpiCollectives, SendRecvShiftsARingBothWays) {
  const int n = world().size(), me = world().rank();
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  Tensor mine = make_input(me, 29, DType::BF16);
  for (int dir : {1, -1}) {
    Tensor got = Tensor::zeros({29}, DType::BF16);
    const int to = dir > 0 ? next : prev, from = dir > 0 ? prev : next;
    world().send_recv(mine, to, got, from);
    std::vector<float> v = got.to_float_vector();
    for (int64_t i = 0; i < 29; ++i) ASSERT_EQ(v[i], input(from, i)) << "direction " << dir;
  }
  Tensor self = Tensor::zeros({29}, DType::BF16);
  world().send_recv(mine, me, self, me);
  EXPECT_EQ(self.to_float_vector(), mine.to_float_vector());
  // A plain send posted before a send_recv to the same peer arrives first.
  Tensor a = make_input(me, 5, DType::F32), b = make_input(me + 10, 5, DType::F32);
  Tensor ra = Tensor::zeros({5}, DType::F32), rb = Tensor::zeros({5}, DType::F32);
  CommHandle r1 = world().recv_async(ra, prev);
  CommHandle s1 = world().send_async(a, next);
  world().send_recv(b, next, rb, prev);
  s1->wait();
  r1->wait();
  EXPECT_EQ(ra.to_float_vector(), make_input(prev, 5, DType::F32).to_float_vector());
  EXPECT_EQ(rb.to_float_vector(), make_input(prev + 10, 5, DType::F32).to_float_vector());
  // Argument checks: a self send with a foreign receive, another dtype, a rank outside the group.
  Tensor f32 = Tensor::zeros({29}, DType::F32);
  if (n > 1) EXPECT_THROW(world().send_recv(mine, me, self, prev), Error);
  EXPECT_THROW(world().send_recv(mine, next, f32, prev), Error);
  EXPECT_THROW(world().send_recv(mine, n, self, prev), Error);
  EXPECT_THROW(world().send_recv(mine, me, self, -1), Error);
  Tensor short_self = Tensor::zeros({28}, DType::BF16);
  EXPECT_THROW(world().send_recv(mine, me, short_self, me), Error);
  EXPECT_THROW(world().send_recv(mine, next, mine, prev), Error);  // send overlaps recv
}

namespace {
// all_to_all_v test pattern: rank r sends rank q (r + 2q) % 3 chunks of `scale` elements
// (so some counts are zero); element i of that chunk is a small integer that names
// (r, q, i) for r, q < n: exact in bf16 for scale 1 with n <= 4, and in fp32 for any scale
// used here. Never 0.
int64_t a2a_count(int r, int q, int64_t scale) { return (r + 2 * q) % 3 * scale; }
float a2a_value(int r, int q, int64_t i, int n, int64_t scale) {
  return static_cast<float>((r * n + q) * (2 * scale + 1) + i + 1);
}
constexpr float kUntouched = -7.f;

// Runs one all_to_all_v on `c` with the pattern above, over the given member ranks (`ids`:
// the identity each member puts in its values, e.g. its world rank), with `extra` unused
// elements after the sent and the received chunks; checks every element of `out`.
void check_all_to_all_v(Communicator& c, const std::vector<int>& ids, DType dt, int64_t scale,
                        int64_t extra, bool async) {
  const int n = c.size(), me = c.rank();
  std::vector<int64_t> in_counts(n), out_counts(n);
  std::vector<float> in_v;
  for (int q = 0; q < n; ++q) {
    in_counts[q] = a2a_count(me, q, scale);
    out_counts[q] = a2a_count(q, me, scale);
    for (int64_t i = 0; i < in_counts[q]; ++i)
      in_v.push_back(a2a_value(ids[me], ids[q], i, world().size(), scale));
  }
  const auto in_used = static_cast<int64_t>(in_v.size());
  in_v.resize(static_cast<size_t>(in_used + extra), 99.f);  // never sent
  int64_t out_used = 0;
  for (int64_t k : out_counts) out_used += k;
  Tensor in = Tensor::from_floats(in_v, {static_cast<int64_t>(in_v.size())}, dt);
  std::vector<float> out_v(static_cast<size_t>(out_used + extra), kUntouched);
  Tensor out = Tensor::from_floats(out_v, {out_used + extra}, dt);
  if (async) {
    CommHandle h = c.all_to_all_v_async(out, out_counts, in, in_counts);
    h->wait();
    EXPECT_TRUE(h->test());
  } else {
    c.all_to_all_v(out, out_counts, in, in_counts);
  }
  std::vector<float> got = out.to_float_vector();
  int64_t k = 0;
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < out_counts[r]; ++i, ++k)
      ASSERT_EQ(got[k], a2a_value(ids[r], ids[me], i, world().size(), scale))
          << dtype_name(dt) << " scale " << scale << " from rank " << r << " element " << i;
  for (; k < out_used + extra; ++k) ASSERT_EQ(got[k], kUntouched) << "past the received chunks";
}
}  // namespace

TEST(MpiCollectives, AllToAllVUnevenCountsWithZeros) {
  const int n = world().size(), me = world().rank();
  std::vector<int> ids(n);
  for (int r = 0; r < n; ++r) ids[r] = r;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t extra : {int64_t(0), int64_t(5)}) {
      check_all_to_all_v(world(), ids, dt, 1, extra, false);
      check_all_to_all_v(world(), ids, dt, 1, extra, true);
    }
  check_all_to_all_v(world(), ids, DType::F32, 1000, 3, false);  // chunks of 1000 and 2000

  // every rank sends nothing at all
  Tensor none_in = Tensor::zeros({0}, DType::F32), none_out = Tensor::zeros({0}, DType::F32);
  world().all_to_all_v(none_out, std::vector<int64_t>(n, 0), none_in, std::vector<int64_t>(n, 0));

  // bad arguments are refused on the calling rank before anything is sent (every rank
  // throws the same way, so nothing is left half-issued)
  Tensor in = Tensor::zeros({8}, DType::F32), out = Tensor::zeros({8}, DType::F32);
  std::vector<int64_t> one(n, 1);
  EXPECT_THROW(world().all_to_all_v(out, std::vector<int64_t>(n + 1, 0), in, one), Error);
  std::vector<int64_t> negative = one;
  negative[(me + 1) % n] = -1;
  if (n > 1) EXPECT_THROW(world().all_to_all_v(out, one, in, negative), Error);
  std::vector<int64_t> too_many(n, 9);
  EXPECT_THROW(world().all_to_all_v(out, one, in, too_many), Error);
  Tensor bf = Tensor::zeros({8}, DType::BF16);
  EXPECT_THROW(world().all_to_all_v(bf, one, in, one), Error);
  std::vector<int64_t> self_mismatch = one;
  self_mismatch[me] = 2;
  EXPECT_THROW(world().all_to_all_v(out, one, in, self_mismatch), Error);
  EXPECT_THROW(world().all_to_all_v(in, one, in, one), Error);  // in and out overlap
  world().barrier();
}

TEST(MpiCollectives, AllToAllVOnASplitGroup) {
  const int n = world().size(), me = world().rank();
  auto sub = world().split(me % 2, -me, "ep");  // reversed order inside, as in the split test
  ASSERT_NE(sub, nullptr);
  std::vector<int> members;  // world ranks of the group, in its rank order
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  ASSERT_EQ(static_cast<int>(members.size()), sub->size());
  ASSERT_EQ(members[sub->rank()], me);
  for (DType dt : {DType::F32, DType::BF16}) check_all_to_all_v(*sub, members, dt, 1, 2, true);
  check_all_to_all_v(*sub, members, DType::F32, 37, 0, false);
  world().barrier();
}

TEST(MpiCollectives, AsyncHandlesCompleteInAnyWaitOrder) {
  const int n = world().size(), me = world().rank();
  Tensor a = make_input(me, 4096, DType::F32), b = make_input(me + 1, 4096, DType::F32);
  CommHandle ha = world().all_reduce_async(a, ReduceOp::Sum);
  CommHandle hb = world().all_reduce_async(b, ReduceOp::Max);
  hb->wait();
  ha->wait();
  EXPECT_TRUE(ha->test());
  EXPECT_EQ(a.to_float_vector()[100], reference(ReduceOp::Sum, 100, n));
  EXPECT_EQ(b.to_float_vector()[5], input(n, 5));  // max over ranks of input(r+1, .) is rank n-1's
  EXPECT_DOUBLE_EQ(world().all_reduce_value(me + 1.0), n * (n + 1) / 2.0);
  EXPECT_DOUBLE_EQ(world().all_reduce_value(me, ReduceOp::Max), n - 1.0);
  world().barrier();
}

TEST(MpiCollectives, SplitIntoEvenAndOddRanks) {
  const int n = world().size(), me = world().rank();
  auto sub = world().split(me % 2, -me, "parity");  // key -me: reversed order inside
  ASSERT_NE(sub, nullptr);
  const int members = (n + 1 - me % 2) / 2;
  EXPECT_EQ(sub->size(), members);
  EXPECT_EQ(sub->name(), "parity");
  EXPECT_EQ(sub->world_rank(), me);
  Tensor t = Tensor::from_floats({static_cast<float>(me)}, {1});
  sub->all_reduce(t, ReduceOp::Sum);
  double want = 0;
  for (int r = me % 2; r < n; r += 2) want += r;
  EXPECT_EQ(t.to_float_vector()[0], want);
  // highest world rank first
  Tensor ranks = Tensor::zeros({sub->size()}, DType::F32);
  sub->all_gather(ranks, Tensor::from_floats({static_cast<float>(me)}, {1}));
  std::vector<float> order = ranks.to_float_vector();
  for (size_t k = 1; k < order.size(); ++k) EXPECT_GT(order[k - 1], order[k]);
  auto none = world().split(me == 0 ? -1 : 1, 0, "not rank 0");
  EXPECT_EQ(none == nullptr, me == 0);
}

TEST(MpiCollectives, ProcessGroupsMatchTheLayoutOnPaper) {
  const int n = world().size();
  ParallelSizes sizes;
  sizes.tp = n >= 4 ? 2 : 1;
  sizes.pp = n >= 4 ? 2 : 1;  // world 4: tp2 pp2 dp1; world 2: dp2
  ParallelDims dims = ParallelDims::create(n, sizes);
  ProcessGroups groups(world(), dims);
  struct Kind {
    const char* dims;
    Communicator& comm;
  };
  for (Kind k : {Kind{"tp", groups.tp()}, Kind{"dp", groups.dp()}, Kind{"pp", groups.pp()},
                 Kind{"dp-cp", groups.dp_cp()}, Kind{"tp-pp", groups.mp()}, Kind{"ep", groups.ep()},
                 Kind{"expert_dp", groups.expert_dp()}}) {
    std::vector<int> expected = dims.group_of(world().rank(), k.dims);
    Tensor got = Tensor::zeros({k.comm.size()}, DType::F32);
    k.comm.all_gather(got, Tensor::from_floats({static_cast<float>(world().rank())}, {1}));
    std::vector<float> members = got.to_float_vector();
    ASSERT_EQ(members.size(), expected.size()) << k.dims;
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(members[i], expected[i]) << k.dims;
  }
  EXPECT_EQ(groups.pp().rank(), groups.coords().pp);
  EXPECT_EQ(groups.tp().rank(), groups.coords().tp);
}

namespace {
std::vector<ParamSpec> model_params() {
  // in backward order: head first; sizes are not multiples of anything
  return {{"head", {37, 11}}, {"layer1.w", {64, 3}}, {"layer1.norm", {5}},
          {"layer0.w", {100, 9}}, {"embed", {50, 7}}};
}
// Rank r's gradient element e of param p.
float grad_value(int r, size_t p, int64_t e) {
  return static_cast<float>(std::sin(0.37 * e + 1.3 * p) * (r + 1) + 0.125 * r);
}
double grad_mean(size_t p, int64_t e, int n) {
  double s = 0;
  for (int r = 0; r < n; ++r) s += grad_value(r, p, e);
  return s / n;
}
}  // namespace

TEST(MpiGradBuckets, BucketedAllReduceEqualsTheReferenceMean) {
  const int n = world().size(), me = world().rank();
  for (bool overlap : {false, true}) {
    GradBucketOptions o;
    o.bucket_size_bytes = 300 * 4;  // several buckets
    o.overlap_grad_reduce = overlap;
    GradBuckets g(model_params(), world(), o);
    ASSERT_GE(g.layout().buckets().size(), 3u);
    for (int step = 0; step < 2; ++step) {
      g.zero();
      for (size_t p = 0; p < g.layout().params().size(); ++p) {
        Tensor t = g.grad(p);
        float* d = t.data<float>();
        for (int64_t e = 0; e < t.numel(); ++e) d[e] += grad_value(me, p, e);
        g.mark_ready(p);  // as backward would, in backward order
      }
      EXPECT_EQ(g.buckets_started_early(), overlap ? static_cast<int>(g.layout().buckets().size()) : 0);
      g.finish();
      for (size_t p = 0; p < g.layout().params().size(); ++p) {
        std::vector<float> got = g.grad(p).to_float_vector();
        for (int64_t e = 0; e < static_cast<int64_t>(got.size()); ++e)
          ASSERT_NEAR(got[e], grad_mean(p, e, n), 1e-5) << "param " << p << " overlap " << overlap;
      }
    }
  }
}

TEST(MpiGradBuckets, DistributedOptimizerStepEqualsTheFullUpdate) {
  // SGD on shards: reduce-scatter grads, update own pieces, all-gather params. Must equal
  // w - lr * mean(grad) on every rank, for fp32 and bf16 parameter buffers.
  const int n = world().size(), me = world().rank();
  const float lr = 0.25f;
  auto w0 = [](size_t p, int64_t e) { return static_cast<float>(0.01 * e - 0.5 * p); };
  for (DType pdt : {DType::F32, DType::BF16}) {
    GradBucketOptions o;
    o.bucket_size_bytes = 400 * 4;
    o.reduce = GradReduce::ReduceScatter;
    o.overlap_grad_reduce = true;
    GradBuckets g(model_params(), world(), o);
    const FlatLayout& L = g.layout();
    DistributedOptimizerShards shards(L, me);
    // parameters in a flat buffer of the same layout; fp32 masters for owned pieces only
    Tensor params = Tensor::zeros({L.total_numel()}, pdt);
    std::vector<float> init(static_cast<size_t>(L.total_numel()), 0.f);
    for (size_t p = 0; p < L.params().size(); ++p)
      for (int64_t e = 0; e < L.params()[p].numel; ++e) init[L.params()[p].offset + e] = w0(p, e);
    params.copy_from(Tensor::from_floats(init, {L.total_numel()}, pdt));

    g.zero();
    for (size_t p = 0; p < L.params().size(); ++p) {
      float* d = g.grad(p).data<float>();
      for (int64_t e = 0; e < L.params()[p].numel; ++e) d[e] = grad_value(me, p, e);
      g.mark_ready(p);
    }
    g.finish();
    for (const auto& piece : shards.pieces()) {
      std::vector<float> gr = shards.piece_view(g.flat(), piece).to_float_vector();
      Tensor pv = shards.piece_view(params, piece);
      std::vector<float> w(gr.size());
      for (size_t k = 0; k < gr.size(); ++k) w[k] = w0(piece.param, piece.param_offset + k) - lr * gr[k];
      pv.copy_from(Tensor::from_floats(w, {piece.numel}, pdt));
    }
    shards.all_gather_params(world(), params);
    for (size_t p = 0; p < L.params().size(); ++p) {
      std::vector<float> got = L.param_view(params, p).to_float_vector();
      for (int64_t e = 0; e < L.params()[p].numel; ++e) {
        double want = w0(p, e) - lr * grad_mean(p, e, n);
        double tol = pdt == DType::F32 ? 1e-5 : std::abs(want) / 128.0 + 1e-6;
        ASSERT_NEAR(got[e], want, tol) << dtype_name(pdt) << " param " << p << " e " << e;
      }
    }
    EXPECT_GT(shards.owned_numel(), 0);
  }
}

int main(int argc, char** argv) { return mpi_test::run_all(argc, argv); }
