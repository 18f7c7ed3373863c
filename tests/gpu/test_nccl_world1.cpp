// The NCCL communicator with world size 1 on one GPU: every collective, the in-place
// forms the distributed optimizer uses, split, async handles ordered on the stream, and
// GradBuckets on CUDA. A one-rank NCCL communicator really runs NCCL kernels, so this
// checks the build, the dtype/op mapping and the stream ordering; expected values are the
// one-rank definitions (sum = max = avg = the input). Skips without a GPU or NCCL.
#include <gtest/gtest.h>

#include "core/error.h"
#include "parallel/grad_buckets.h"
#include "parallel/nccl_communicator.h"
#include "parallel/world.h"

using namespace primus;
using namespace primus::parallel;

namespace {

std::unique_ptr<Communicator> nccl_world() {
  NcclWorldSpec spec;
  spec.rank = 0;
  spec.size = 1;
  spec.cuda_device = 0;
  return make_nccl_world_communicator(spec, [](const std::string& id) { return id; });
}

#define SKIP_WITHOUT_NCCL_GPU()                                              \
  do {                                                                       \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU visible";            \
    if (!nccl_built()) GTEST_SKIP() << "built without NCCL";                 \
  } while (0)

std::vector<float> ramp(int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(i % 97) * 0.25f - 3.f;
  return v;
}

}  // namespace

TEST(NcclWorld1, CollectivesOnOneRank) {
  SKIP_WITHOUT_NCCL_GPU();
  auto c = nccl_world();
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->backend(), "nccl");
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t n : {int64_t(1), int64_t(1001), int64_t(65537)}) {
      std::vector<float> v = ramp(n);
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
        Tensor t = Tensor::from_floats(v, {n}, dt, Device::CUDA);
        c->all_reduce(t, op);
        c->synchronize();
        EXPECT_EQ(t.to_float_vector(), Tensor::from_floats(v, {n}, dt).to_float_vector())
            << dtype_name(dt) << " " << reduce_op_name(op) << " n " << n;
      }
      Tensor in = Tensor::from_floats(v, {n}, dt, Device::CUDA);
      Tensor out = Tensor::zeros({n}, dt, Device::CUDA);
      c->reduce_scatter(out, in, ReduceOp::Sum);
      Tensor gathered = Tensor::zeros({n}, dt, Device::CUDA);
      c->all_gather(gathered, out);
      c->broadcast(gathered, 0);
      c->synchronize();
      EXPECT_EQ(gathered.to_float_vector(), Tensor::from_floats(v, {n}, dt).to_float_vector());
    }
  }
  EXPECT_DOUBLE_EQ(c->all_reduce_value(2.5), 2.5);
  c->barrier();
}

TEST(NcclWorld1, InPlaceShardsSplitAndErrors) {
  SKIP_WITHOUT_NCCL_GPU();
  auto c = nccl_world();
  Tensor buf = Tensor::from_floats(ramp(64), {64}, DType::F32, Device::CUDA);
  Tensor slot = buf.rows(0, 64);  // rank 0's slot of a one-rank group is the whole buffer
  c->reduce_scatter(slot, buf, ReduceOp::Avg);
  c->all_gather(buf, slot);
  c->synchronize();
  EXPECT_EQ(buf.to_float_vector(), ramp(64));
  auto sub = c->split(0, 0, "tp");
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->name(), "tp");
  Tensor t = Tensor::from_floats({1.f, 2.f}, {2}, DType::F32, Device::CUDA);
  sub->all_reduce(t, ReduceOp::Sum);
  sub->synchronize();
  EXPECT_EQ(t.to_float_vector(), (std::vector<float>{1.f, 2.f}));
  Tensor host = Tensor::zeros({2}, DType::F32);
  EXPECT_THROW(c->all_reduce(host, ReduceOp::Sum), Error);  // a CPU tensor on NCCL
  Tensor ints = Tensor::zeros({2}, DType::I32, Device::CUDA);
  EXPECT_THROW(c->all_reduce(ints, ReduceOp::Avg), Error);
}

TEST(NcclWorld1, AllToAllVOnOneRank) {
  SKIP_WITHOUT_NCCL_GPU();
  auto c = nccl_world();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t n : {int64_t(1), int64_t(1001)}) {
      std::vector<float> v = ramp(n + 3);  // 3 elements past the sent chunk
      Tensor in = Tensor::from_floats(v, {n + 3}, dt, Device::CUDA);
      Tensor out = Tensor::from_floats(std::vector<float>(n + 2, -7.f), {n + 2}, dt, Device::CUDA);
      CommHandle h = c->all_to_all_v_async(out, {n}, in, {n});
      h->wait();
      c->synchronize();
      EXPECT_TRUE(h->test());
      std::vector<float> want = Tensor::from_floats(v, {n + 3}, dt).to_float_vector();
      want.resize(static_cast<size_t>(n));
      want.push_back(-7.f);
      want.push_back(-7.f);
      EXPECT_EQ(out.to_float_vector(), want) << dtype_name(dt) << " n " << n;
      c->all_to_all_v(out, {0}, in, {0});  // zero counts: an empty group, nothing moves
      c->synchronize();
      EXPECT_EQ(out.to_float_vector(), want) << dtype_name(dt) << " n " << n;
    }
  }
  Tensor in = Tensor::zeros({4}, DType::F32, Device::CUDA);
  Tensor out = Tensor::zeros({4}, DType::F32, Device::CUDA);
  EXPECT_THROW(c->all_to_all_v(out, {2}, in, {1}), Error);  // own chunk differs
  Tensor host = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(c->all_to_all_v(out, {1}, host, {1}), Error);  // a CPU tensor on NCCL
}

TEST(NcclWorld1, GradBucketsOnCuda) {
  SKIP_WITHOUT_NCCL_GPU();
  auto c = nccl_world();
  GradBucketOptions o;
  o.bucket_size_bytes = 256 * 4;
  o.overlap_grad_reduce = true;
  std::vector<ParamSpec> params = {{"a", {300}}, {"b", {17, 3}}, {"c", {500}}};
  GradBuckets g(params, *c, o);
  g.zero();
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor grad = g.grad(i);
    grad.copy_from(Tensor::from_floats(ramp(grad.numel()), grad.shape()));
    g.mark_ready(i);
  }
  EXPECT_EQ(g.buckets_started_early(), static_cast<int>(g.layout().buckets().size()));
  g.finish();
  c->synchronize();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(g.grad(i).to_float_vector(), ramp(g.grad(i).numel())) << params[i].name;
}

TEST(NcclWorld1, WorldFromASingleProcessLaunch) {
  SKIP_WITHOUT_NCCL_GPU();
  LaunchInfo single;  // world size 1: the single-process communicator, on CUDA
  WorldOptions o;
  o.device = Device::CUDA;
  auto w = create_world_communicator(single, o);
  EXPECT_EQ(w->size(), 1);
  EXPECT_EQ(w->device(), Device::CUDA);
}
