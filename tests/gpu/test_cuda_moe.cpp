// Mixture-of-experts ops of the CUDA backend vs the fp32 CPU backend (the specification) on the
// same random inputs: router top-k (chosen experts equal, probs to 1e-5) and its backward, the
// load-balancing statistics (counts exact, deterministic) and their backward, dispatch plans
// (equal, including awkward routings), permute / unpermute in bf16, and the grouped GEMM
// through both implementations (engine loop and cublasGemmGroupedBatchedEx).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "gpu_test_util.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/moe.h"

namespace primus {
namespace {

using gputest::cpu_f32;
using gputest::expect_close;
using gputest::fresh_rng;
using gputest::gpu;
using gputest::poison;
using gputest::randn;
using ops::MoeRouting;

constexpr double kBf16Tol = 1e-2;
constexpr double kGemmTol = 2e-2;

Tensor i32(const std::vector<int32_t>& v, Shape s, Device d = Device::CPU) {
  Tensor h = Tensor::empty(std::move(s), DType::I32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  return d == Device::CUDA ? h.to(Device::CUDA) : h;
}

// An int32 CUDA tensor full of a value no kernel writes, so an unwritten element is caught.
Tensor poisoned_i32(Shape s) {
  return i32(std::vector<int32_t>(static_cast<size_t>(shape_numel(s)), 0x7eadbeef), s, Device::CUDA);
}

std::vector<int32_t> ints(const Tensor& t) {
  const Tensor h = t.is_cuda() ? t.to(Device::CPU) : t;
  return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + h.numel());
}

int64_t mismatches(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  int64_t n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += a[i] != b[i];
  return n + static_cast<int64_t>(std::max(a.size(), b.size()) - std::min(a.size(), b.size()));
}

void expect_equal_ints(const std::string& what, const Tensor& out, const Tensor& ref) {
  const auto o = ints(out), r = ints(ref);
  const int64_t bad = mismatches(o, r);
  std::printf("[check] %-60s %lld of %zu differ\n", what.c_str(), static_cast<long long>(bad), r.size());
  EXPECT_EQ(bad, 0) << what;
  if (bad != 0)
    for (size_t i = 0, shown = 0; i < o.size() && shown < 8; ++i)
      if (o[i] != r[i]) {
        ADD_FAILURE() << what << " [" << i << "]: cuda " << o[i] << ", cpu " << r[i];
        ++shown;
      }
}

// ---- router ------------------------------------------------------------------------------

struct RouteCase {
  const char* name;
  int64_t N, E, k;
  bool sigmoid, pre_softmax, bias;
  int64_t groups, group_topk;
  float scaling;
  bool group_max = false;  // a group scored by its best expert (DeepSeek-V2's group_limited_greedy)
};

TEST(CudaMoe, RouterTopkMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  const RouteCase cases[] = {
      {"E=8 k=2 softmax", 517, 8, 2, false, false, false, 0, 0, 1.f},
      {"E=64 k=6 pre-softmax groups 8/3 scale 16", 517, 64, 6, false, true, false, 8, 3, 16.f},
      {"E=160 k=6 softmax groups 8/3 by best expert scale 16 (V2)", 517, 160, 6, false, false, false, 8, 3, 16.f,
       true},
      {"E=64 k=6 sigmoid+bias groups 8/3 by best expert", 257, 64, 6, true, false, true, 8, 3, 1.f, true},
      {"E=16 k=1 sigmoid", 517, 16, 1, true, false, false, 0, 0, 1.f},
      {"E=256 k=8 sigmoid+bias groups 8/4 scale 2.5", 517, 256, 8, true, false, true, 8, 4, 2.5f},
      // Generic k (beyond any fast path), E not a multiple of 32, k = E.
      {"E=256 k=40 softmax", 129, 256, 40, false, false, false, 0, 0, 1.f},
      {"E=200 k=200 pre-softmax", 65, 200, 200, false, true, false, 0, 0, 1.f},
      {"E=96 k=12 sigmoid groups 4/2", 130, 96, 12, true, false, false, 4, 2, 1.f},
      {"E=48 k=48 sigmoid+bias", 33, 48, 48, true, false, true, 0, 0, 3.f},
      {"E=1 k=1 softmax", 7, 1, 1, false, false, false, 0, 0, 1.f},
  };
  for (const RouteCase& cs : cases) {
    const std::string tag = cs.name;
    MoeRouting r;
    r.topk = cs.k;
    r.sigmoid = cs.sigmoid;
    r.pre_softmax = cs.pre_softmax;
    r.num_groups = cs.groups;
    r.group_topk = cs.group_topk;
    r.scaling = cs.scaling;
    r.group_max = cs.group_max;
    const auto z = randn(rng, static_cast<size_t>(cs.N * cs.E), 2.f);
    const auto b = randn(rng, static_cast<size_t>(cs.E), 0.1f);
    const Shape sz{cs.N, cs.E}, sp{cs.N, cs.k};
    Tensor cz = cpu_f32(z, sz), cb = cs.bias ? cpu_f32(b, {cs.E}) : Tensor();
    Tensor cp = cpu_f32(std::vector<float>(static_cast<size_t>(cs.N * cs.k)), sp);
    Tensor ci = i32(std::vector<int32_t>(static_cast<size_t>(cs.N * cs.k)), sp);
    ops::moe_topk_forward(c, cp, ci, cz, cb, r);

    Tensor gz = gpu(z, sz, DType::F32), gb = cs.bias ? gpu(b, {cs.E}, DType::F32) : Tensor();
    Tensor gp = Tensor::empty(sp, DType::F32, Device::CUDA), gi = poisoned_i32(sp);
    poison(g, gp);
    ops::moe_topk_forward(g, gp, gi, gz, gb, r);
    expect_equal_ints("moe_topk_forward indices " + tag, gi, ci);
    expect_close("moe_topk_forward probs " + tag, gp, cp, 1e-5);

    // Backward at the CPU's indices (the same on both sides).
    const auto dp = randn(rng, static_cast<size_t>(cs.N * cs.k));
    Tensor cdz = cpu_f32(std::vector<float>(z.size()), sz);
    ops::moe_topk_backward(c, cdz, cpu_f32(dp, sp), cz, ci, r);
    Tensor gdz = Tensor::empty(sz, DType::F32, Device::CUDA);
    poison(g, gdz);
    ops::moe_topk_backward(g, gdz, gpu(dp, sp, DType::F32), gz, ci.to(Device::CUDA), r);
    expect_close("moe_topk_backward " + tag, gdz, cdz, 1e-5);
  }
}

// ---- aux statistics ----------------------------------------------------------------------

TEST(CudaMoe, AuxStatsExactCountsDeterministicAndBackward) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t N, E, k, G;
    bool sigmoid;
  };
  for (const Case cs : {Case{512, 8, 2, 1, false}, Case{512, 64, 6, 4, false}, Case{1000, 256, 8, 8, true},
                        Case{96, 16, 16, 3, true}, Case{40000, 128, 4, 2, false}, Case{77, 33, 5, 7, true}}) {
    const std::string tag = fmt::format("N={} E={} k={} G={} {}", cs.N, cs.E, cs.k, cs.G,
                                        cs.sigmoid ? "sigmoid" : "softmax");
    const Shape sz{cs.N, cs.E}, sg{cs.G, cs.E};
    const auto z = randn(rng, static_cast<size_t>(cs.N * cs.E), 2.f);
    Tensor cz = cpu_f32(z, sz);
    Tensor css = cpu_f32(std::vector<float>(static_cast<size_t>(cs.G * cs.E)), sg);
    Tensor ccn = cpu_f32(std::vector<float>(static_cast<size_t>(cs.G * cs.E)), sg);
    Tensor cl = cpu_f32({0.f}, {1});
    ops::moe_aux_stats(c, css, ccn, cl, cz, cs.k, cs.sigmoid);

    Tensor gz = gpu(z, sz, DType::F32);
    std::vector<float> first[3];
    for (int run = 0; run < 2; ++run) {
      Tensor gss = Tensor::empty(sg, DType::F32, Device::CUDA), gcn = Tensor::empty(sg, DType::F32, Device::CUDA);
      Tensor gl = Tensor::empty({1}, DType::F32, Device::CUDA);
      poison(g, gss);
      poison(g, gcn);
      poison(g, gl);
      ops::moe_aux_stats(g, gss, gcn, gl, gz, cs.k, cs.sigmoid);
      const std::vector<float> got[3] = {gss.to_float_vector(), gcn.to_float_vector(), gl.to_float_vector()};
      if (run == 0) {
        expect_close("moe_aux_stats counts " + tag, gcn, ccn, 0);
        expect_close("moe_aux_stats score_sums " + tag, gss, css, 1e-5);
        expect_close("moe_aux_stats lse_sq " + tag, gl, cl, 1e-5);
        for (int i = 0; i < 3; ++i) first[i] = got[i];
      } else {
        for (int i = 0; i < 3; ++i)
          EXPECT_EQ(std::memcmp(first[i].data(), got[i].data(), got[i].size() * 4), 0)
              << "moe_aux_stats is not deterministic (output " << i << ") " << tag;
      }
    }

    const auto sgrad = randn(rng, static_cast<size_t>(cs.G * cs.E), 1.f, false);
    const auto dz0 = randn(rng, z.size(), 0.1f, false);
    for (float zw : {0.f, 1e-3f}) {
      Tensor cdz = cpu_f32(dz0, sz), gdz = gpu(dz0, sz, DType::F32);
      ops::moe_aux_backward(c, cdz, cz, cpu_f32(sgrad, sg), zw, cs.sigmoid);
      ops::moe_aux_backward(g, gdz, gz, gpu(sgrad, sg, DType::F32), zw, cs.sigmoid);
      expect_close(fmt::format("moe_aux_backward (+=) z_weight={} {}", zw, tag), gdz, cdz, 1e-5);
    }
  }
}

// ---- dispatch plan -----------------------------------------------------------------------

// Rows the plan may need (ops::moe_dispatch_plan's bound).
int64_t plan_rows(int64_t Q, int64_t E, int64_t capacity, bool pad) {
  return pad ? E * capacity : capacity >= 0 ? std::min(Q, E * capacity) : Q;
}

struct Plan {
  Tensor row_of, pair_of_row, tokens_per_expert;
  int64_t rows = 0;  // sum(tokens_per_expert)
};

Plan make_plan(ops::Context& ctx, const Tensor& indices, const Tensor& probs, int64_t E, int64_t capacity, bool drop,
               bool pad) {
  const int64_t N = indices.size(0), k = indices.size(1);
  const int64_t M = std::max<int64_t>(plan_rows(N * k, E, capacity, pad), 1);
  Plan p;
  if (ctx.device() == Device::CUDA) {
    p.row_of = poisoned_i32({N, k});
    p.pair_of_row = poisoned_i32({M});
    p.tokens_per_expert = poisoned_i32({E});
  } else {
    p.row_of = i32(std::vector<int32_t>(static_cast<size_t>(N * k), 0x7eadbeef), {N, k});
    p.pair_of_row = i32(std::vector<int32_t>(static_cast<size_t>(M), 0x7eadbeef), {M});
    p.tokens_per_expert = i32(std::vector<int32_t>(static_cast<size_t>(E), 0x7eadbeef), {E});
  }
  ops::moe_dispatch_plan(ctx, p.row_of, p.pair_of_row, p.tokens_per_expert, indices, probs, capacity, drop, pad);
  for (int32_t n : ints(p.tokens_per_expert)) p.rows += n;
  return p;
}

// Runs every plan variant on one routing and checks the CUDA plans equal the CPU's.
void check_plans(ops::Context& g, ops::Context& c, const std::vector<int32_t>& idx, const std::vector<float>& probs,
                 int64_t N, int64_t E, int64_t k, const std::string& what) {
  const Tensor ci = i32(idx, {N, k}), cp = cpu_f32(probs, {N, k});
  const Tensor gi = ci.to(Device::CUDA), gp = cp.to(Device::CUDA);
  const int64_t fair = (N * k + E - 1) / E;
  struct Variant {
    int64_t capacity;
    bool drop, pad;
  };
  const Variant variants[] = {{-1, false, false},
                              {fair * 3 / 4, true, false},
                              {fair * 3 / 4, false, false},
                              {fair * 3 / 4, true, true},
                              {fair * 3 / 4, false, true},
                              {1, true, true},
                              {0, true, false},
                              {N * k, true, true}};
  for (const Variant& v : variants) {
    const std::string tag =
        fmt::format("{} capacity={} {}{}", what, v.capacity, v.drop ? "by-probs" : "by-position", v.pad ? " pad" : "");
    const Plan pc = make_plan(c, ci, cp, E, v.capacity, v.drop, v.pad);
    const Plan pg = make_plan(g, gi, gp, E, v.capacity, v.drop, v.pad);
    expect_equal_ints("dispatch tokens_per_expert " + tag, pg.tokens_per_expert, pc.tokens_per_expert);
    expect_equal_ints("dispatch row_of " + tag, pg.row_of, pc.row_of);
    ASSERT_EQ(pg.rows, pc.rows) << tag;
    if (pc.rows > 0)
      expect_equal_ints("dispatch pair_of_row " + tag, pg.pair_of_row.rows(0, pg.rows),
                        pc.pair_of_row.rows(0, pc.rows));
  }
}

// CPU routing of crafted or random logits: indices, and probs rounded to eighths so that
// drop_by_probs meets many ties (resolved by the lower pair).
void route_on_cpu(ops::Context& c, const std::vector<float>& z, int64_t N, int64_t E, int64_t k,
                  std::vector<int32_t>& idx, std::vector<float>& probs) {
  MoeRouting r;
  r.topk = k;
  Tensor cp = cpu_f32(std::vector<float>(static_cast<size_t>(N * k)), {N, k});
  Tensor ci = i32(std::vector<int32_t>(static_cast<size_t>(N * k)), {N, k});
  ops::moe_topk_forward(c, cp, ci, cpu_f32(z, {N, E}), Tensor(), r);
  idx = ints(ci);
  probs = cp.to_float_vector();
  for (float& p : probs) p = std::round(p * 8.f) / 8.f;
}

TEST(CudaMoe, DispatchPlanEqualsCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  std::vector<int32_t> idx;
  std::vector<float> probs;
  struct Case {
    int64_t N, E, k;
  };
  for (const Case cs : {Case{300, 8, 2}, Case{1000, 64, 6}, Case{2048, 256, 8}, Case{8192, 64, 8}, Case{5, 16, 3}}) {
    route_on_cpu(c, randn(rng, static_cast<size_t>(cs.N * cs.E)), cs.N, cs.E, cs.k, idx, probs);
    check_plans(g, c, idx, probs, cs.N, cs.E, cs.k, fmt::format("random N={} E={} k={}", cs.N, cs.E, cs.k));
  }

  // Awkward routings from crafted logits (E = 8): expert 0 gets no token, expert 1 exactly one
  // (token 17), expert 2 every token (k = 2) ...
  const int64_t N = 300, E = 8;
  auto z = randn(rng, static_cast<size_t>(N * E), 0.5f);
  for (int64_t t = 0; t < N; ++t) {
    z[static_cast<size_t>(t * E + 0)] = -20.f;
    z[static_cast<size_t>(t * E + 1)] = t == 17 ? 20.f : -20.f;
    z[static_cast<size_t>(t * E + 2)] = 10.f;
  }
  route_on_cpu(c, z, N, E, 2, idx, probs);
  {
    std::vector<int> per(E, 0);
    for (int32_t e : idx) ++per[static_cast<size_t>(e)];
    ASSERT_EQ(per[0], 0);
    ASSERT_EQ(per[1], 1);
    ASSERT_EQ(per[2], N);
  }
  check_plans(g, c, idx, probs, N, E, 2, "crafted k=2 (0 / 1 / all tokens)");
  // ... and with k = 1 every token to expert 5 (all other experts empty).
  for (int64_t t = 0; t < N; ++t) z[static_cast<size_t>(t * E + 5)] = 30.f;
  route_on_cpu(c, z, N, E, 1, idx, probs);
  ASSERT_TRUE(std::all_of(idx.begin(), idx.end(), [](int32_t e) { return e == 5; }));
  check_plans(g, c, idx, probs, N, E, 1, "crafted k=1 (all tokens to expert 5)");
  // Distinct probs (no ties) with drop_by_probs.
  route_on_cpu(c, randn(rng, static_cast<size_t>(N * E)), N, E, 2, idx, probs);
  for (auto& p : probs) p = std::uniform_real_distribution<float>(0.f, 1.f)(rng);
  check_plans(g, c, idx, probs, N, E, 2, "random, distinct probs");
}

// ---- permute / unpermute -----------------------------------------------------------------

TEST(CudaMoe, PermuteUnpermuteMatchCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  const int64_t N = 300, E = 8, k = 2;
  std::vector<int32_t> idx;
  std::vector<float> probs;
  route_on_cpu(c, randn(rng, static_cast<size_t>(N * E)), N, E, k, idx, probs);
  probs = randn(rng, probs.size(), 0.5f);  // any weights
  const Tensor ci = i32(idx, {N, k}), cprobs = cpu_f32(probs, {N, k}), gprobs = cprobs.to(Device::CUDA);
  struct Variant {
    int64_t capacity;
    bool pad;
  };
  for (const Variant v : {Variant{-1, false}, Variant{60, true}}) {  // dropless; dropped pairs + padding rows
    const Plan plan = make_plan(c, ci, cprobs, E, v.capacity, true, v.pad);
    const int64_t M = plan.rows;
    const Tensor cpor = plan.pair_of_row.rows(0, M), crow = plan.row_of;
    const Tensor gpor = cpor.to(Device::CUDA), grow = crow.to(Device::CUDA);
    for (int64_t C : {1000, 77}) {
      for (DType dt : {DType::BF16, DType::F32}) {
        const double tol = dt == DType::F32 ? 1e-5 : kBf16Tol;
        const std::string tag = fmt::format("C={} M={} {}{}", C, M, dtype_name(dt), v.pad ? " capacity+pad" : "");
        const auto x = randn(rng, static_cast<size_t>(N * C));
        Tensor cxp = cpu_f32(std::vector<float>(static_cast<size_t>(M * C)), {M, C});
        ops::moe_permute(c, cxp, cpu_f32(x, {N, C}), cpor, k);
        Tensor gxp = Tensor::empty({M, C}, dt, Device::CUDA);
        poison(g, gxp);
        ops::moe_permute(g, gxp, gpu(x, {N, C}, dt), gpor, k);
        expect_close("moe_permute " + tag, gxp, cxp, 0);

        const auto dx0 = randn(rng, static_cast<size_t>(N * C)), dxp = randn(rng, static_cast<size_t>(M * C));
        Tensor cdx = cpu_f32(dx0, {N, C}), gdx = gpu(dx0, {N, C}, dt);
        ops::moe_permute_backward(c, cdx, cpu_f32(dxp, {M, C}), crow);
        ops::moe_permute_backward(g, gdx, gpu(dxp, {M, C}, dt), grow);
        expect_close("moe_permute_backward (+=) " + tag, gdx, cdx, tol);

        const auto y0 = randn(rng, static_cast<size_t>(N * C)), yp = randn(rng, static_cast<size_t>(M * C));
        Tensor cy = cpu_f32(y0, {N, C}), gy = gpu(y0, {N, C}, dt);
        ops::moe_unpermute(c, cy, cpu_f32(yp, {M, C}), crow, cprobs);
        ops::moe_unpermute(g, gy, gpu(yp, {M, C}, dt), grow, gprobs);
        expect_close("moe_unpermute (+=) " + tag, gy, cy, tol);

        const auto dy = randn(rng, static_cast<size_t>(N * C));
        Tensor cdyp = cpu_f32(std::vector<float>(static_cast<size_t>(M * C)), {M, C});
        Tensor cdp = cpu_f32(std::vector<float>(static_cast<size_t>(N * k)), {N, k});
        ops::moe_unpermute_backward(c, cdyp, cdp, cpu_f32(dy, {N, C}), cpu_f32(yp, {M, C}), crow, cpor, cprobs);
        Tensor gdyp = Tensor::empty({M, C}, dt, Device::CUDA), gdp = Tensor::empty({N, k}, DType::F32, Device::CUDA);
        poison(g, gdyp);
        poison(g, gdp);
        ops::moe_unpermute_backward(g, gdyp, gdp, gpu(dy, {N, C}, dt), gpu(yp, {M, C}, dt), grow, gpor, gprobs);
        expect_close("moe_unpermute_backward d_y_perm " + tag, gdyp, cdyp, tol);
        expect_close("moe_unpermute_backward d_probs " + tag, gdp, cdp, 1e-4);
      }
    }
  }
}

// ---- grouped GEMM ------------------------------------------------------------------------

// Restores the process-wide grouped GEMM implementation at scope exit.
struct ImplGuard {
  cuda::GroupedGemmImpl saved = cuda::grouped_gemm_impl();
  ~ImplGuard() { cuda::set_grouped_gemm_impl(saved); }
};

TEST(CudaMoe, GroupedLinearMatchesCpuEveryImpl) {
  PRIMUS_REQUIRE_GPU();
  ImplGuard guard;
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  const std::vector<int64_t> rows = {0, 1, 37, 128, 0, 200};  // experts without rows and with one
  const int64_t E = static_cast<int64_t>(rows.size());
  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0}), R = total + 5;  // 5 rows unused
  struct Shape2 {
    int64_t in, out;
  };
  for (const Shape2 sh : {Shape2{96, 80}, Shape2{45, 33}}) {
    const int64_t in = sh.in, out = sh.out;
    const auto x = randn(rng, static_cast<size_t>(R * in)), w = randn(rng, static_cast<size_t>(E * out * in), 0.2f);
    const auto dy = randn(rng, static_cast<size_t>(R * out));
    const auto dw0 = randn(rng, static_cast<size_t>(E * out * in), 1.f, false);
    const Tensor cx = cpu_f32(x, {R, in}), cw = cpu_f32(w, {E, out, in}), cdy = cpu_f32(dy, {R, out});
    Tensor cy = cpu_f32(std::vector<float>(static_cast<size_t>(R * out)), {R, out});
    ops::grouped_linear_forward(c, cy, cx, cw, rows);
    Tensor cdx = cpu_f32(std::vector<float>(static_cast<size_t>(R * in)), {R, in});
    Tensor cdw_acc = cpu_f32(dw0, {E, out, in}), cdw_new = cpu_f32(dw0, {E, out, in});
    ops::grouped_linear_backward(c, &cdx, cdw_acc, cdy, cx, cw, rows, true);
    ops::grouped_linear_backward(c, nullptr, cdw_new, cdy, cx, cw, rows, false);

    const Tensor gx = gpu(x, {R, in}, DType::BF16), gw = gpu(w, {E, out, in}, DType::BF16);
    const Tensor gdy = gpu(dy, {R, out}, DType::BF16);
    for (cuda::GroupedGemmImpl impl :
         {cuda::GroupedGemmImpl::Loop, cuda::GroupedGemmImpl::Lanes, cuda::GroupedGemmImpl::Batched}) {
      cuda::set_grouped_gemm_impl(impl);
      const std::string tag = fmt::format("{} in={} out={}",
                                          impl == cuda::GroupedGemmImpl::Loop    ? "loop"
                                          : impl == cuda::GroupedGemmImpl::Lanes ? "lanes"
                                                                                 : "batched",
                                          in, out);
      Tensor gy = Tensor::empty({R, out}, DType::BF16, Device::CUDA);
      poison(g, gy);
      ops::grouped_linear_forward(g, gy, gx, gw, rows);
      expect_close("grouped_linear_forward " + tag, gy.rows(0, total), cy.rows(0, total), kGemmTol);
      const auto tail = gy.rows(total, R).to_float_vector();
      EXPECT_TRUE(std::all_of(tail.begin(), tail.end(), [](float v) { return std::isnan(v); }))
          << "grouped_linear_forward wrote rows past sum(rows) " << tag;

      // dx and dw accumulated into dw0 (fp32).
      Tensor gdx = Tensor::empty({R, in}, DType::BF16, Device::CUDA);
      poison(g, gdx);
      Tensor gdw = gpu(dw0, {E, out, in}, DType::F32);
      ops::grouped_linear_backward(g, &gdx, gdw, gdy, gx, gw, rows, true);
      expect_close("grouped_linear_backward dx " + tag, gdx.rows(0, total), cdx.rows(0, total), kGemmTol);
      expect_close("grouped_linear_backward dw (+=, fp32) " + tag, gdw, cdw_acc, kGemmTol);

      // dw overwritten (no dx): poisoned, so the experts without rows must be zero-filled.
      Tensor gdw2 = Tensor::empty({E, out, in}, DType::F32, Device::CUDA);
      poison(g, gdw2);
      ops::grouped_linear_backward(g, nullptr, gdw2, gdy, gx, gw, rows, false);
      expect_close("grouped_linear_backward dw (=, fp32) " + tag, gdw2, cdw_new, kGemmTol);
      const auto v = gdw2.to_float_vector();
      for (int64_t e = 0; e < E; ++e)
        if (rows[static_cast<size_t>(e)] == 0)
          EXPECT_TRUE(std::all_of(v.begin() + e * out * in, v.begin() + (e + 1) * out * in,
                                  [](float f) { return f == 0.f; }))
              << "expert " << e << " without rows: dw not zero-filled " << tag;

      // dw in w's dtype (bf16), overwritten.
      Tensor gdw3 = Tensor::empty({E, out, in}, DType::BF16, Device::CUDA);
      poison(g, gdw3);
      ops::grouped_linear_backward(g, nullptr, gdw3, gdy, gx, gw, rows, false);
      expect_close("grouped_linear_backward dw (=, bf16) " + tag, gdw3, cdw_new, kGemmTol);
    }
  }
}

}  // namespace
}  // namespace primus
