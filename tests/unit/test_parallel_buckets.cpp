// Flat gradient layout, bucket cutting, distributed-optimizer shard math, and
// GradBuckets on a one-rank group (the multi-rank reductions run under mpirun in
// tests/parallel/). Expected offsets are worked out by hand in the comments.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "parallel/distributed_optimizer_shards.h"
#include "parallel/grad_buckets.h"
#include "parallel/single_process_communicator.h"

using namespace primus;
using namespace primus::parallel;

namespace {
std::vector<ParamSpec> specs() {
  return {{"out.weight", {10, 7}},   // 70
          {"norm.weight", {7}},      // 7
          {"mlp.weight", {30, 5}},   // 150
          {"embed.weight", {3, 3}}}; // 9
}
}  // namespace

TEST(FlatLayout, AlignsParamsAndCutsBuckets) {
  FlatLayoutOptions o;
  o.align = 16;
  o.bucket_numel = 80;
  o.shard_count = 2;
  FlatLayout L = FlatLayout::build(specs(), o);
  // out.weight [0,70) -> bucket 0 holds 70 < 80, norm at 80 (aligned) -> 87 >= 80: close,
  // padded to a multiple of 16*2 = 32 -> bucket 0 = [0, 96).
  // mlp at 96 -> 246 - 96 = 150 >= 80: close at 96 + 160 = 256. embed at 256 -> 265, last
  // bucket [256, 288).
  ASSERT_EQ(L.buckets().size(), 3u);
  EXPECT_EQ(L.params()[0].offset, 0);
  EXPECT_EQ(L.params()[1].offset, 80);
  EXPECT_EQ(L.params()[2].offset, 96);
  EXPECT_EQ(L.params()[3].offset, 256);
  EXPECT_EQ(L.buckets()[0].begin, 0);
  EXPECT_EQ(L.buckets()[0].end, 96);
  EXPECT_EQ(L.buckets()[1].end, 256);
  EXPECT_EQ(L.buckets()[2].end, 288);
  EXPECT_EQ(L.total_numel(), 288);
  EXPECT_EQ(L.buckets()[0].params, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(L.shard_numel(1), 80);
  EXPECT_EQ(L.index_of("mlp.weight"), 2u);
  try {
    L.index_of("mlp.wieght");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mlp.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(FlatLayout::build({{"a", {2}}, {"a", {3}}}, o), Error);

  Tensor flat = Tensor::zeros({L.total_numel()}, DType::F32);
  Tensor v = L.param_view(flat, 2);
  EXPECT_EQ(v.shape(), (Shape{30, 5}));
  EXPECT_EQ(v.data<float>(), flat.data<float>() + 96);
  EXPECT_EQ(L.shard_view(flat, 1, 1).data<float>(), flat.data<float>() + 96 + 80);
  EXPECT_THROW(L.param_view(Tensor::zeros({10}, DType::F32), 0), Error);
}

TEST(FlatLayout, ZeroBucketSizeMeansOneBucket) {
  FlatLayoutOptions o;
  o.bucket_numel = 0;
  o.align = 1;
  FlatLayout L = FlatLayout::build(specs(), o);
  ASSERT_EQ(L.buckets().size(), 1u);
  EXPECT_EQ(L.total_numel(), 70 + 7 + 150 + 9);
}

TEST(DistributedOptimizerShards, PiecesCoverEveryElementExactlyOnce) {
  for (int dp : {1, 2, 3, 4}) {
    FlatLayoutOptions o;
    o.align = 8;
    o.bucket_numel = 100;
    o.shard_count = dp;
    FlatLayout L = FlatLayout::build(specs(), o);
    // owner of each (param, element), computed from the definition: element e of param p
    // sits at flat f = offset + e; its bucket b contains f; its shard is (f - begin) / S.
    std::map<std::pair<size_t, int64_t>, int> owner;
    int64_t total_owned = 0;
    for (int r = 0; r < dp; ++r) {
      DistributedOptimizerShards s(L, r);
      for (const auto& piece : s.pieces()) {
        const auto& p = L.params()[piece.param];
        EXPECT_EQ(piece.flat_offset, p.offset + piece.param_offset);
        for (int64_t k = 0; k < piece.numel; ++k) {
          auto key = std::make_pair(piece.param, piece.param_offset + k);
          EXPECT_EQ(owner.count(key), 0u) << "element owned twice";
          owner[key] = r;
        }
        auto range = s.bucket_shard(p.bucket);
        EXPECT_GE(piece.flat_offset, range.begin);
        EXPECT_LE(piece.flat_offset + piece.numel, range.end);
      }
      total_owned += s.owned_numel();
    }
    int64_t params_numel = 0;
    for (size_t i = 0; i < L.params().size(); ++i) {
      const auto& p = L.params()[i];
      params_numel += p.numel;
      const auto& b = L.buckets()[p.bucket];
      const int64_t S = b.numel() / dp;
      for (int64_t e = 0; e < p.numel; ++e)
        EXPECT_EQ(owner.at({i, e}), (p.offset + e - b.begin) / S) << "dp " << dp;
    }
    EXPECT_EQ(total_owned, params_numel) << "dp " << dp;
  }
}

TEST(GradBuckets, OneRankGroupAveragesToItself) {
  auto comm = make_single_process_communicator(Device::CPU, "dp");
  GradBucketOptions o;
  o.bucket_size_bytes = 100 * 4;  // align 64: [out, norm] [mlp] [embed]
  o.overlap_grad_reduce = true;
  GradBuckets g(specs(), *comm, o);
  EXPECT_EQ(g.layout().buckets().size(), 3u);
  Tensor w = g.grad("mlp.weight");
  w.data<float>()[3] = 2.5f;
  // bucket order: [out, norm] [mlp] [embed]; marking mlp first must not start bucket 1
  // before bucket 0 (buckets start in index order on every rank).
  g.mark_ready(2);
  EXPECT_EQ(g.buckets_started_early(), 0);
  g.mark_ready(0);
  g.mark_ready(1);
  EXPECT_EQ(g.buckets_started_early(), 2);
  EXPECT_THROW(g.mark_ready(1), Error);
  g.finish();
  EXPECT_EQ(g.grad(2).data<float>()[3], 2.5f);
  g.zero();
  EXPECT_EQ(g.grad(2).data<float>()[3], 0.f);
  g.mark_ready(0);
  g.finish();
}

TEST(SingleProcessCommunicator, CollectivesAreIdentity) {
  auto c = make_single_process_communicator(Device::CPU);
  Tensor t = Tensor::from_floats({1, 2, 3}, {3});
  c->all_reduce(t, ReduceOp::Avg);
  EXPECT_EQ(t.to_float_vector(), (std::vector<float>{1, 2, 3}));
  Tensor out = Tensor::zeros({3}, DType::F32);
  c->all_gather(out, t);
  EXPECT_EQ(out.to_float_vector(), (std::vector<float>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(c->all_reduce_value(4.5), 4.5);
  EXPECT_THROW(c->send(t, 0), Error);
  EXPECT_THROW(c->broadcast(t, 1), Error);
  EXPECT_THROW(c->all_gather(out, Tensor::zeros({2}, DType::F32)), Error);
  EXPECT_EQ(c->split(-1, 0, "none"), nullptr);
  EXPECT_EQ(c->split(3, 0, "tp")->name(), "tp");
}

TEST(SingleProcessCommunicator, AllToAllVCopiesItsOwnChunk) {
  auto c = make_single_process_communicator(Device::CPU, "ep");
  for (DType dt : {DType::F32, DType::BF16}) {
    // in has room past the sent chunk, out past the received one: neither extra is touched
    Tensor in = Tensor::from_floats({1, 2, 3, 4, 5}, {5}, dt);
    Tensor out = Tensor::from_floats({-7, -7, -7, -7}, {2, 2}, dt);  // shapes are ignored
    c->all_to_all_v(out, {3}, in, {3});
    EXPECT_EQ(out.to_float_vector(), (std::vector<float>{1, 2, 3, -7})) << dtype_name(dt);
    c->all_to_all_v_async(out, {0}, in, {0})->wait();  // zero counts: nothing moves
    EXPECT_EQ(out.to_float_vector(), (std::vector<float>{1, 2, 3, -7})) << dtype_name(dt);
  }
  Tensor in = Tensor::zeros({4}, DType::F32), out = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(c->all_to_all_v(out, {1, 1}, in, {1}), Error);            // one count per rank
  EXPECT_THROW(c->all_to_all_v(out, {2}, in, {1}), Error);               // own chunk differs
  EXPECT_THROW(c->all_to_all_v(out, {-1}, in, {-1}), Error);             // negative
  EXPECT_THROW(c->all_to_all_v(out, {5}, in, {5}), Error);               // more than the tensors
  Tensor bf = Tensor::zeros({4}, DType::BF16);
  EXPECT_THROW(c->all_to_all_v(bf, {1}, in, {1}), Error);                // dtypes differ
  EXPECT_THROW(c->all_to_all_v(in, {2}, in.rows(1, 4), {2}), Error);     // in overlaps out
  try {
    c->all_to_all_v(out, {5}, in, {5});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_to_all_v on single communicator 'ep'"),
              std::string::npos)
        << e.what();
  }
}
