// Finite-difference gradient checks of every op's backward on the CPU backend
// (central differences on tiny shapes; see test_ops_util.h for the tolerance).
#include <cmath>

#include "test_ops_util.h"

using namespace primus;
using namespace primus::test;

namespace {

// Rope tables for T positions with rotary dim R (R/2 frequencies).
void tables(Tensor& cos, Tensor& sin, int64_t T, int64_t R, float base = 10000.f) {
  ops::rope_tables(cos, sin, T, ops::rope_inv_freq(R, base, {}));
}

}  // namespace

TEST(OpsGrad, Linear) {
  auto ctx = ops::Context::cpu();
  Tensor x = randn({5, 4}, 1), w = randn({3, 4}, 2), wy = randn({5, 3}, 3);
  Tensor y = Tensor::empty({5, 3}, DType::F32);
  auto loss = [&] {
    ops::linear_forward(ctx, y, x, w);
    return weighted_sum(y, wy);
  };
  Tensor dx = Tensor::empty({5, 4}, DType::F32), dw = Tensor::zeros({3, 4}, DType::F32);
  ops::linear_backward(ctx, &dx, dw, wy, x, w);
  expect_grad_close("linear dx", x, dx, loss);
  expect_grad_close("linear dw", w, dw, loss);
  // dw accumulates: a second backward doubles it.
  Tensor dw1 = dw.clone();
  ops::linear_backward(ctx, nullptr, dw, wy, x, w);
  for (int64_t i = 0; i < dw.numel(); ++i) EXPECT_FLOAT_EQ(dw.data<float>()[i], 2 * dw1.data<float>()[i]);
}

TEST(OpsGrad, RmsNorm) {
  auto ctx = ops::Context::cpu();
  Tensor x = randn({4, 6}, 4), w = randn({6}, 5), wy = randn({4, 6}, 6);
  Tensor y = Tensor::empty({4, 6}, DType::F32), rstd = Tensor::empty({4}, DType::F32);
  auto loss = [&] {
    ops::rmsnorm_forward(ctx, y, rstd, x, w, 1e-5f);
    return weighted_sum(y, wy);
  };
  loss();
  Tensor dx = Tensor::zeros({4, 6}, DType::F32), dw = Tensor::zeros({6}, DType::F32);
  ops::rmsnorm_backward(ctx, dx, dw, wy, x, w, rstd);
  expect_grad_close("rmsnorm dx", x, dx, loss);
  expect_grad_close("rmsnorm dw", w, dw, loss);
}

TEST(OpsGrad, RopeFullAndPartialRotary) {
  auto ctx = ops::Context::cpu();
  for (int64_t R : {8, 4}) {  // head dim 8: full rotation, then only the first 4 dims
    Tensor cos, sin;
    tables(cos, sin, 3, R);
    Tensor x = randn({2, 3, 2, 8}, 7), wy = randn({2, 3, 2, 8}, 8);
    Tensor y = Tensor::empty(x.shape(), DType::F32);
    auto loss = [&] {
      ops::rope_forward(ctx, y, x, cos, sin);
      return weighted_sum(y, wy);
    };
    Tensor dx = Tensor::empty(x.shape(), DType::F32);
    ops::rope_backward(ctx, dx, wy, cos, sin);
    expect_grad_close("rope dx, R=" + std::to_string(R), x, dx, loss);
  }
}

TEST(OpsGrad, QkvSplitRope) {
  auto ctx = ops::Context::cpu();
  const int64_t B = 2, T = 3, Hq = 4, Hkv = 2, D = 4;
  Tensor cos, sin;
  tables(cos, sin, T, D);
  Tensor qkv = randn({B * T, (Hq + 2 * Hkv) * D}, 9);
  Tensor q = Tensor::empty({B, T, Hq, D}, DType::F32), k = Tensor::empty({B, T, Hkv, D}, DType::F32),
         v = Tensor::empty({B, T, Hkv, D}, DType::F32);
  Tensor wq = randn(q.shape(), 10), wk = randn(k.shape(), 11), wv = randn(v.shape(), 12);
  auto loss = [&] {
    ops::qkv_split_rope_forward(ctx, q, k, v, qkv, cos, sin);
    return weighted_sum(q, wq) + weighted_sum(k, wk) + weighted_sum(v, wv);
  };
  Tensor dqkv = Tensor::empty(qkv.shape(), DType::F32);
  ops::qkv_split_rope_backward(ctx, dqkv, wq, wk, wv, cos, sin);
  expect_grad_close("qkv_split_rope dqkv", qkv, dqkv, loss);
}

TEST(OpsGrad, AttentionCausalGqaAndFull) {
  auto ctx = ops::Context::cpu();
  const int64_t B = 2, T = 5, Hq = 4, Hkv = 2, D = 3;
  for (bool causal : {true, false}) {
    Tensor q = randn({B, T, Hq, D}, 13), k = randn({B, T, Hkv, D}, 14), v = randn({B, T, Hkv, D}, 15);
    Tensor wo = randn({B, T, Hq, D}, 16);
    Tensor out = Tensor::empty({B, T, Hq, D}, DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
    const float scale = 0.7f;
    auto loss = [&] {
      ops::attention_forward(ctx, out, lse, q, k, v, scale, causal);
      return weighted_sum(out, wo);
    };
    loss();
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
           dv = Tensor::empty(v.shape(), DType::F32);
    ops::attention_backward(ctx, dq, dk, dv, wo, q, k, v, out, lse, scale, causal);
    const std::string tag = causal ? " (causal)" : " (full)";
    expect_grad_close("attention dq" + tag, q, dq, loss);
    expect_grad_close("attention dk" + tag, k, dk, loss);
    expect_grad_close("attention dv" + tag, v, dv, loss);
  }
}

TEST(OpsGrad, AttentionAcrossRowBlocks) {
  // T larger than the CPU kernel's 128-row query block: the second block sees a key range
  // that starts in the first. Check dq/dk/dv on a few elements each (full FD is slow).
  auto ctx = ops::Context::cpu();
  const int64_t B = 1, T = 140, Hq = 2, Hkv = 1, D = 2;
  Tensor q = randn({B, T, Hq, D}, 17), k = randn({B, T, Hkv, D}, 18), v = randn({B, T, Hkv, D}, 19);
  Tensor wo = randn({B, T, Hq, D}, 20);
  Tensor out = Tensor::empty(wo.shape(), DType::F32), lse = Tensor::empty({B, Hq, T}, DType::F32);
  auto loss = [&] {
    ops::attention_forward(ctx, out, lse, q, k, v, 0.5f, true);
    return weighted_sum(out, wo);
  };
  loss();
  Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
         dv = Tensor::empty(v.shape(), DType::F32);
  ops::attention_backward(ctx, dq, dk, dv, wo, q, k, v, out, lse, 0.5f, true);
  for (auto [x, g, name] : {std::tuple{&q, &dq, "dq"}, {&k, &dk, "dk"}, {&v, &dv, "dv"}}) {
    for (int64_t idx : std::initializer_list<int64_t>{0, 3, 2 * 127 + 1, 2 * 128, x->numel() - 1}) {
      float* p = x->data<float>();
      const float saved = p[idx], h = 1e-2f;
      p[idx] = saved + h;
      const double up = loss();
      p[idx] = saved - h;
      const double down = loss();
      p[idx] = saved;
      const double numeric = (up - down) / (2 * h), analytic = g->data<float>()[idx];
      EXPECT_NEAR(analytic, numeric, 2e-3 * std::max(1.0, std::fabs(numeric))) << name << "[" << idx << "]";
    }
  }
}

TEST(OpsGrad, SwiGlu) {
  auto ctx = ops::Context::cpu();
  Tensor gu = randn({3, 8}, 21), wy = randn({3, 4}, 22);
  Tensor y = Tensor::empty({3, 4}, DType::F32);
  auto loss = [&] {
    ops::swiglu_forward(ctx, y, gu);
    return weighted_sum(y, wy);
  };
  Tensor dgu = Tensor::empty(gu.shape(), DType::F32);
  ops::swiglu_backward(ctx, dgu, wy, gu);
  expect_grad_close("swiglu dgate_up", gu, dgu, loss);
}

TEST(OpsGrad, CrossEntropyFusedWithIgnoredRows) {
  auto ctx = ops::Context::cpu();
  const int64_t N = 4, V = 7;
  Tensor logits = randn({N, V}, 23, 2.f);
  Tensor targets = ints({3, -1, 0, 6}, {N});
  Tensor dloss = Tensor::from_floats({0.5f, 0.25f, 1.f, 2.f}, {N});
  Tensor losses = Tensor::empty({N}, DType::F32);
  auto loss = [&] {
    ops::cross_entropy_forward(ctx, losses, logits, targets);
    return weighted_sum(losses, dloss);
  };
  loss();
  const auto fwd = losses.to_float_vector();
  Tensor grad = logits.clone();
  Tensor fused_losses = Tensor::empty({N}, DType::F32);
  ops::cross_entropy_fused(ctx, fused_losses, grad, targets, dloss);
  EXPECT_EQ(fused_losses.to_float_vector(), fwd);
  EXPECT_EQ(fwd[1], 0.f);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(grad.data<float>()[V + j], 0.f);  // ignored row
  expect_grad_close("cross_entropy dlogits", logits, grad, loss);
}

TEST(OpsGrad, EmbeddingScatterAdd) {
  auto ctx = ops::Context::cpu();
  Tensor table = randn({5, 3}, 24), wy = randn({4, 3}, 25);
  Tensor ids = ints({2, 0, 2, 4}, {4});
  Tensor out = Tensor::empty({4, 3}, DType::F32);
  auto loss = [&] {
    ops::embedding_forward(ctx, out, ids, table);
    return weighted_sum(out, wy);
  };
  Tensor dtable = Tensor::zeros(table.shape(), DType::F32);
  ops::embedding_backward(ctx, dtable, wy, ids);
  expect_grad_close("embedding dtable", table, dtable, loss);
}
