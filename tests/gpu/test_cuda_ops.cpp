// CUDA kernels vs the fp32 CPU backend (the specification) on fresh random inputs, at several
// shapes including sizes that are not multiples of the kernels' vector widths or tiles.
// Inputs are rounded to bf16 first, so both backends compute on identical numbers; outputs
// are poisoned with NaN before each op so an unwritten element fails the test.
#include <gtest/gtest.h>

#include "core/master_bits.h"

#include <cmath>
#include <cstring>

#include "gpu_test_util.h"
#include "ops/cuda/cuda_backend.h"

namespace primus {
namespace {

using gputest::cpu_f32;
using gputest::expect_close;
using gputest::fresh_rng;
using gputest::gpu;
using gputest::poison;
using gputest::randn;
using ops::Transpose;

constexpr double kBf16Tol = 1e-2;

TEST(CudaElementwise, FillCastAddScale) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0);
  for (int64_t n : {1, 7, 1000, 4099, 1 << 20}) {
    const auto a = randn(rng, static_cast<size_t>(n)), b = randn(rng, static_cast<size_t>(n));
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      const std::string tag = fmt::format("n={} {}", n, dtype_name(dt));
      Tensor t = Tensor::empty({n}, dt, Device::CUDA);
      ops::fill(g, t, 1.5f);
      expect_close("fill " + tag, t, std::vector<float>(static_cast<size_t>(n), 1.5f), 0);
      Tensor ta = gpu(a, {n}, dt), tb = gpu(b, {n}, dt), out = Tensor::empty({n}, dt, Device::CUDA);
      const auto ra = gputest::round_to(a, dt), rb = gputest::round_to(b, dt);
      poison(g, out);
      ops::add(g, out, ta, tb);
      std::vector<float> sum(static_cast<size_t>(n));
      for (size_t i = 0; i < sum.size(); ++i) sum[i] = ra[i] + rb[i];
      expect_close("add " + tag, out, gputest::round_to(sum, dt), dt == DType::F32 ? 1e-7 : 4e-3);
      ops::scale(g, ta, -0.5f);
      std::vector<float> half(ra);
      for (auto& x : half) x *= -0.5f;
      expect_close("scale " + tag, ta, half, 1e-7);
      for (DType dst : {DType::F32, DType::BF16, DType::F16}) {
        Tensor c = Tensor::empty({n}, dst, Device::CUDA);
        poison(g, c);
        ops::copy_cast(g, c, tb);
        expect_close(fmt::format("copy_cast {}->{} n={}", dtype_name(dt), dtype_name(dst), n), c,
                     gputest::round_to(rb, dst), dst == DType::F32 || dt == dst ? 0 : 4e-3);
      }
    }
  }
  // Unaligned views take the scalar path.
  Tensor base = gpu(randn(rng, 101), {101}, DType::BF16);
  Tensor view = base.rows(3, 100);
  ops::fill(g, view, 2.f);
  const auto v = base.to_float_vector();
  EXPECT_NE(v[2], 2.f);
  EXPECT_EQ(v[3], 2.f);
  EXPECT_EQ(v[99], 2.f);
  EXPECT_NE(v[100], 2.f);
}

TEST(CudaGemm, MatchesCpuAllTransposes) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t M, N, K;
  };
  for (const Case cs : {Case{128, 256, 64}, Case{77, 45, 33}, Case{1, 513, 130}, Case{1024, 768, 2048}}) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const Shape sa = ta ? Shape{cs.K, cs.M} : Shape{cs.M, cs.K};
      const Shape sb = tb ? Shape{cs.N, cs.K} : Shape{cs.K, cs.N};
      const auto a = randn(rng, static_cast<size_t>(cs.M * cs.K)), b = randn(rng, static_cast<size_t>(cs.K * cs.N));
      const auto o0 = randn(rng, static_cast<size_t>(cs.M * cs.N));
      Tensor ca = cpu_f32(a, sa), cb = cpu_f32(b, sb), co = cpu_f32(o0, {cs.M, cs.N});
      ops::matmul(c, co, ca, ta ? Transpose::Yes : Transpose::No, cb, tb ? Transpose::Yes : Transpose::No, 0.5f, 1.f);
      const std::string tag = fmt::format("M={} N={} K={} ta={} tb={}", cs.M, cs.N, cs.K, ta, tb);
      for (DType in : {DType::BF16, DType::F16}) {
        // out in the input dtype (beta = 0) ...
        Tensor ga = gpu(a, sa, in), gb = gpu(b, sb, in);
        Tensor go = Tensor::empty({cs.M, cs.N}, in, Device::CUDA);
        poison(g, go);
        ops::matmul(g, go, ga, ta ? Transpose::Yes : Transpose::No, gb, tb ? Transpose::Yes : Transpose::No, 0.5f, 0.f);
        Tensor co0 = cpu_f32(std::vector<float>(o0.size(), 0.f), {cs.M, cs.N});
        ops::matmul(c, co0, ca, ta ? Transpose::Yes : Transpose::No, cb, tb ? Transpose::Yes : Transpose::No, 0.5f,
                    0.f);
        expect_close(fmt::format("matmul {} {}", dtype_name(in), tag), go, co0, kBf16Tol);
      }
      // ... and fp32 out with beta = 1 (gradient accumulation).
      Tensor ga = gpu(a, sa, DType::BF16), gb = gpu(b, sb, DType::BF16), go = gpu(o0, {cs.M, cs.N}, DType::F32);
      ops::matmul(g, go, ga, ta ? Transpose::Yes : Transpose::No, gb, tb ? Transpose::Yes : Transpose::No, 0.5f, 1.f);
      expect_close("matmul bf16->fp32 beta=1 " + tag, go, co, 1e-5);
    }
  }
  // fp32 inputs (exact fp32 compute, no TF32).
  const auto a = randn(rng, 96 * 80, 1.f, false), b = randn(rng, 80 * 72, 1.f, false);
  Tensor go = Tensor::empty({96, 72}, DType::F32, Device::CUDA), co = cpu_f32(std::vector<float>(96 * 72), {96, 72});
  ops::matmul(g, go, gpu(a, {96, 80}, DType::F32), Transpose::No, gpu(b, {80, 72}, DType::F32), Transpose::No);
  ops::matmul(c, co, cpu_f32(a, {96, 80}), Transpose::No, cpu_f32(b, {80, 72}), Transpose::No);
  expect_close("matmul fp32", go, co, 1e-5);
}

// linear_forward_add: y = x @ w^T + residual with the residual read in cuBLASLt's epilogue
// (C != D), against the CPU's GEMM-then-add; y poisoned, the residual left unchanged.
TEST(CudaGemm, LinearForwardAddReadsTheResidualInTheEpilogue) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t rows, in, out;
  };
  for (const Case cs : {Case{256, 128, 64}, Case{77, 45, 33}, Case{1, 130, 513}, Case{2048, 1024, 768}}) {
    const auto x = randn(rng, static_cast<size_t>(cs.rows * cs.in)), w = randn(rng, static_cast<size_t>(cs.out * cs.in));
    const auto r = randn(rng, static_cast<size_t>(cs.rows * cs.out), 4.f);
    Tensor cy = cpu_f32(std::vector<float>(r.size()), {cs.rows, cs.out});
    ops::linear_forward_add(c, cy, cpu_f32(x, {cs.rows, cs.in}), cpu_f32(w, {cs.out, cs.in}), cpu_f32(r, {cs.rows, cs.out}));
    for (DType dt : {DType::BF16, DType::F16}) {
      Tensor gy = Tensor::empty({cs.rows, cs.out}, dt, Device::CUDA);
      poison(g, gy);
      const Tensor gr = gpu(r, {cs.rows, cs.out}, dt);
      ops::linear_forward_add(g, gy, gpu(x, {cs.rows, cs.in}, dt), gpu(w, {cs.out, cs.in}, dt), gr);
      const std::string tag = fmt::format("linear_forward_add {} rows={} in={} out={}", dtype_name(dt), cs.rows, cs.in, cs.out);
      expect_close(tag, gy, cy, kBf16Tol);
      expect_close(tag + " residual untouched", gr, gputest::round_to(r, dt), 0.0);
    }
  }
}

TEST(CudaEmbedding, ForwardAndDeterministicBackward) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t N, V, C;
  };
  for (const Case cs : {Case{64, 50, 128}, Case{333, 17, 100}, Case{4096, 32000, 256}}) {
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(cs.V - 1));
    std::vector<int32_t> ids(static_cast<size_t>(cs.N));
    for (auto& x : ids) x = id(rng);
    ids[0] = ids[1] = ids[static_cast<size_t>(cs.N - 1)];  // repeated ids
    const auto table = randn(rng, static_cast<size_t>(cs.V * cs.C));
    const auto dout = randn(rng, static_cast<size_t>(cs.N * cs.C));
    const auto dt0 = randn(rng, static_cast<size_t>(cs.V * cs.C), 1.f, false);
    const std::string tag = fmt::format("N={} V={} C={}", cs.N, cs.V, cs.C);
    Tensor cout_ = cpu_f32(std::vector<float>(static_cast<size_t>(cs.N * cs.C)), {cs.N, cs.C});
    ops::embedding_forward(c, cout_, gputest::cpu_i32(ids), cpu_f32(table, {cs.V, cs.C}));
    Tensor gout = Tensor::empty({cs.N, cs.C}, DType::BF16, Device::CUDA);
    poison(g, gout);
    Tensor gids = gputest::gpu_i32(ids);
    ops::embedding_forward(g, gout, gids, gpu(table, {cs.V, cs.C}, DType::BF16));
    expect_close("embedding_forward " + tag, gout, cout_, 0);

    Tensor cdt = cpu_f32(dt0, {cs.V, cs.C});
    ops::embedding_backward(c, cdt, cpu_f32(dout, {cs.N, cs.C}), gputest::cpu_i32(ids));
    Tensor gdout = gpu(dout, {cs.N, cs.C}, DType::BF16);
    Tensor gdt1 = gpu(dt0, {cs.V, cs.C}, DType::F32), gdt2 = gpu(dt0, {cs.V, cs.C}, DType::F32);
    ops::embedding_backward(g, gdt1, gdout, gids);
    ops::embedding_backward(g, gdt2, gdout, gids);
    expect_close("embedding_backward (+=) " + tag, gdt1, cdt, 1e-6);
    const auto r1 = gdt1.to_float_vector(), r2 = gdt2.to_float_vector();
    EXPECT_EQ(std::memcmp(r1.data(), r2.data(), r1.size() * 4), 0) << "embedding backward is not deterministic";
  }
}

TEST(CudaRmsNorm, ForwardBackward) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t N, C;
    DType w;
  };
  for (const Case cs : {Case{64, 2048, DType::BF16}, Case{37, 100, DType::BF16}, Case{5, 3072, DType::F32},
                        Case{300, 8192, DType::BF16}, Case{3, 24, DType::F32}}) {
    const std::string tag = fmt::format("N={} C={} w={}", cs.N, cs.C, dtype_name(cs.w));
    const auto x = randn(rng, static_cast<size_t>(cs.N * cs.C), 2.f);
    auto w = randn(rng, static_cast<size_t>(cs.C), 0.3f);
    for (auto& v : w) v = bf16_bits_to_fp32(fp32_to_bf16_bits(1.f + v));
    const auto dy = randn(rng, static_cast<size_t>(cs.N * cs.C));
    const auto dx0 = randn(rng, static_cast<size_t>(cs.N * cs.C));
    const auto dw0 = randn(rng, static_cast<size_t>(cs.C), 1.f, false);
    Tensor cy = cpu_f32(std::vector<float>(x.size()), {cs.N, cs.C}), crstd = cpu_f32(std::vector<float>(cs.N), {cs.N});
    ops::rmsnorm_forward(c, cy, crstd, cpu_f32(x, {cs.N, cs.C}), cpu_f32(w, {cs.C}), 1e-5f);
    Tensor gx = gpu(x, {cs.N, cs.C}, DType::BF16), gw = gpu(w, {cs.C}, cs.w);
    Tensor gy = Tensor::empty({cs.N, cs.C}, DType::BF16, Device::CUDA), grstd = Tensor::empty({cs.N}, DType::F32, Device::CUDA);
    poison(g, gy);
    poison(g, grstd);
    ops::rmsnorm_forward(g, gy, grstd, gx, gw, 1e-5f);
    expect_close("rmsnorm_forward y " + tag, gy, cy, kBf16Tol);
    expect_close("rmsnorm_forward rstd " + tag, grstd, crstd, 1e-5);

    Tensor cdx = cpu_f32(dx0, {cs.N, cs.C}), cdw = cpu_f32(dw0, {cs.C});
    ops::rmsnorm_backward(c, cdx, cdw, cpu_f32(dy, {cs.N, cs.C}), cpu_f32(x, {cs.N, cs.C}), cpu_f32(w, {cs.C}), crstd);
    Tensor gdx = gpu(dx0, {cs.N, cs.C}, DType::BF16), gdw = gpu(dw0, {cs.C}, DType::F32);
    ops::rmsnorm_backward(g, gdx, gdw, gpu(dy, {cs.N, cs.C}, DType::BF16), gx, gw, grstd);
    expect_close("rmsnorm_backward dx (+=) " + tag, gdx, cdx, kBf16Tol);
    expect_close("rmsnorm_backward dw (+=) " + tag, gdw, cdw, 1e-4);
  }
}

std::pair<std::vector<float>, std::vector<float>> rope_tables(int64_t T, int64_t R) {
  std::vector<float> inv(static_cast<size_t>(R / 2));
  for (int64_t i = 0; i < R / 2; ++i) inv[static_cast<size_t>(i)] = std::pow(10000.f, -2.f * i / R);
  std::vector<float> cs(static_cast<size_t>(T * R / 2)), sn(cs.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < R / 2; ++i) {
      cs[static_cast<size_t>(t * R / 2 + i)] = std::cos(t * inv[static_cast<size_t>(i)]);
      sn[static_cast<size_t>(t * R / 2 + i)] = std::sin(t * inv[static_cast<size_t>(i)]);
    }
  return {cs, sn};
}

TEST(CudaRope, RopeAndQkvSplit) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t B, T, Hq, Hkv, D, R;
  };
  for (const Case cs : {Case{2, 33, 4, 2, 64, 64}, Case{1, 17, 3, 1, 128, 64}, Case{2, 100, 8, 8, 64, 32},
                        Case{1, 9, 2, 1, 64, 20}}) {
    const std::string tag = fmt::format("B={} T={} Hq={} Hkv={} D={} R={}", cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.R);
    auto [cosv, sinv] = rope_tables(cs.T, cs.R);
    Tensor ccos = cpu_f32(cosv, {cs.T, cs.R / 2}), csin = cpu_f32(sinv, {cs.T, cs.R / 2});
    Tensor gcos = ccos.to(Device::CUDA), gsin = csin.to(Device::CUDA);
    const Shape sx{cs.B, cs.T, cs.Hq, cs.D};
    const auto x = randn(rng, static_cast<size_t>(shape_numel(sx)));
    Tensor cout_ = cpu_f32(std::vector<float>(x.size()), sx), gout = Tensor::empty(sx, DType::BF16, Device::CUDA);
    ops::rope_forward(c, cout_, cpu_f32(x, sx), ccos, csin);
    poison(g, gout);
    ops::rope_forward(g, gout, gpu(x, sx, DType::BF16), gcos, gsin);
    expect_close("rope_forward " + tag, gout, cout_, kBf16Tol);
    Tensor cdx = cpu_f32(std::vector<float>(x.size()), sx), gdx = Tensor::empty(sx, DType::BF16, Device::CUDA);
    ops::rope_backward(c, cdx, cpu_f32(x, sx), ccos, csin);
    poison(g, gdx);
    ops::rope_backward(g, gdx, gpu(x, sx, DType::BF16), gcos, gsin);
    expect_close("rope_backward " + tag, gdx, cdx, kBf16Tol);

    const int64_t W = (cs.Hq + 2 * cs.Hkv) * cs.D;
    const auto qkv = randn(rng, static_cast<size_t>(cs.B * cs.T * W));
    const Shape sq{cs.B, cs.T, cs.Hq, cs.D}, sk{cs.B, cs.T, cs.Hkv, cs.D};
    Tensor cq = cpu_f32(std::vector<float>(shape_numel(sq)), sq), ck = cpu_f32(std::vector<float>(shape_numel(sk)), sk),
           cv = cpu_f32(std::vector<float>(shape_numel(sk)), sk);
    ops::qkv_split_rope_forward(c, cq, ck, cv, cpu_f32(qkv, {cs.B * cs.T, W}), ccos, csin);
    Tensor gq = Tensor::empty(sq, DType::BF16, Device::CUDA), gk = Tensor::empty(sk, DType::BF16, Device::CUDA),
           gv = Tensor::empty(sk, DType::BF16, Device::CUDA);
    poison(g, gq);
    poison(g, gk);
    poison(g, gv);
    ops::qkv_split_rope_forward(g, gq, gk, gv, gpu(qkv, {cs.B * cs.T, W}, DType::BF16), gcos, gsin);
    expect_close("qkv_split_rope_forward q " + tag, gq, cq, kBf16Tol);
    expect_close("qkv_split_rope_forward k " + tag, gk, ck, kBf16Tol);
    expect_close("qkv_split_rope_forward v " + tag, gv, cv, 0);

    const auto dq = randn(rng, static_cast<size_t>(shape_numel(sq))), dk = randn(rng, static_cast<size_t>(shape_numel(sk))),
               dv = randn(rng, static_cast<size_t>(shape_numel(sk)));
    Tensor cdqkv = cpu_f32(std::vector<float>(qkv.size()), {cs.B * cs.T, W});
    ops::qkv_split_rope_backward(c, cdqkv, cpu_f32(dq, sq), cpu_f32(dk, sk), cpu_f32(dv, sk), ccos, csin);
    Tensor gdqkv = Tensor::empty({cs.B * cs.T, W}, DType::BF16, Device::CUDA);
    poison(g, gdqkv);
    ops::qkv_split_rope_backward(g, gdqkv, gpu(dq, sq, DType::BF16), gpu(dk, sk, DType::BF16), gpu(dv, sk, DType::BF16),
                                 gcos, gsin);
    expect_close("qkv_split_rope_backward " + tag, gdqkv, cdqkv, kBf16Tol);
  }
}

// Multi-latent attention's split + RoPE (both directions) and the column copy it uses.
TEST(CudaRope, MlaQkvSplitAndCopyColumns) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  struct Case {
    int64_t B, T, H, Dn, Dr, Dv, L;
  };
  for (const Case cs : {Case{2, 33, 4, 128, 64, 128, 512}, Case{1, 17, 3, 8, 4, 6, 12}, Case{2, 5, 2, 0, 8, 16, 3}}) {
    const std::string tag = fmt::format("B={} T={} H={} Dn={} Dr={} Dv={} L={}", cs.B, cs.T, cs.H, cs.Dn, cs.Dr, cs.Dv,
                                        cs.L);
    auto [cosv, sinv] = rope_tables(cs.T, cs.Dr);
    Tensor ccos = cpu_f32(cosv, {cs.T, cs.Dr / 2}), csin = cpu_f32(sinv, {cs.T, cs.Dr / 2});
    Tensor gcos = ccos.to(Device::CUDA), gsin = csin.to(Device::CUDA);
    const int64_t N = cs.B * cs.T, Dq = cs.Dn + cs.Dr;
    const Shape sqp{N, cs.H * Dq}, skv{N, cs.H * (cs.Dn + cs.Dv)}, skd{N, cs.L + cs.Dr};
    const Shape sq{cs.B, cs.T, cs.H, Dq}, sv{cs.B, cs.T, cs.H, cs.Dv};
    const auto qp = randn(rng, static_cast<size_t>(shape_numel(sqp)));
    const auto kv = randn(rng, static_cast<size_t>(shape_numel(skv)));
    const auto kd = randn(rng, static_cast<size_t>(shape_numel(skd)));
    auto zeros = [](const Shape& s) { return cpu_f32(std::vector<float>(static_cast<size_t>(shape_numel(s))), s); };
    Tensor cq = zeros(sq), ck = zeros(sq), cv = zeros(sv);
    ops::mla_qkv_rope_forward(c, cq, ck, cv, cpu_f32(qp, sqp), cpu_f32(kv, skv), cpu_f32(kd, skd), ccos, csin);
    Tensor gq = Tensor::empty(sq, DType::BF16, Device::CUDA), gk = Tensor::empty(sq, DType::BF16, Device::CUDA),
           gv = Tensor::empty(sv, DType::BF16, Device::CUDA);
    poison(g, gq);
    poison(g, gk);
    poison(g, gv);
    ops::mla_qkv_rope_forward(g, gq, gk, gv, gpu(qp, sqp, DType::BF16), gpu(kv, skv, DType::BF16),
                              gpu(kd, skd, DType::BF16), gcos, gsin);
    expect_close("mla_qkv_rope_forward q " + tag, gq, cq, kBf16Tol);
    expect_close("mla_qkv_rope_forward k " + tag, gk, ck, kBf16Tol);
    expect_close("mla_qkv_rope_forward v " + tag, gv, cv, 0);

    const auto dq = randn(rng, static_cast<size_t>(shape_numel(sq))), dk = randn(rng, static_cast<size_t>(shape_numel(sq))),
               dv = randn(rng, static_cast<size_t>(shape_numel(sv)));
    Tensor cdqp = zeros(sqp), cdkv = zeros(skv), cdpe = zeros({N, cs.Dr});
    ops::mla_qkv_rope_backward(c, cdqp, cdkv, cdpe, cpu_f32(dq, sq), cpu_f32(dk, sq), cpu_f32(dv, sv), ccos, csin);
    Tensor gdqp = Tensor::empty(sqp, DType::BF16, Device::CUDA), gdkv = Tensor::empty(skv, DType::BF16, Device::CUDA),
           gdpe = Tensor::empty({N, cs.Dr}, DType::BF16, Device::CUDA);
    poison(g, gdqp);
    poison(g, gdkv);
    poison(g, gdpe);
    ops::mla_qkv_rope_backward(g, gdqp, gdkv, gdpe, gpu(dq, sq, DType::BF16), gpu(dk, sq, DType::BF16),
                               gpu(dv, sv, DType::BF16), gcos, gsin);
    expect_close("mla_qkv_rope_backward dq_proj " + tag, gdqp, cdqp, kBf16Tol);
    expect_close("mla_qkv_rope_backward dkv_up " + tag, gdkv, cdkv, 0);
    expect_close("mla_qkv_rope_backward dk_pe " + tag, gdpe, cdpe, kBf16Tol);

    // kv_down's columns [1, L) into columns [2, L + 1) of a wider tensor; the rest untouched.
    if (cs.L > 1) {
      const Shape sd{N, cs.L + 3};
      Tensor cdst = zeros(sd), gdst = Tensor::empty(sd, DType::BF16, Device::CUDA);
      ops::fill(g, gdst, 0.f);
      ops::copy_columns(c, cdst, 2, cpu_f32(kd, skd), 1, cs.L - 1);
      ops::copy_columns(g, gdst, 2, gpu(kd, skd, DType::BF16), 1, cs.L - 1);
      expect_close("copy_columns " + tag, gdst, cdst, 0);
    }
  }
}

TEST(CudaSwiglu, ForwardBackward) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  for (auto [N, F] : {std::pair<int64_t, int64_t>{64, 512}, {13, 100}, {1000, 8192}, {3, 5}}) {
    const std::string tag = fmt::format("N={} F={}", N, F);
    const auto gu = randn(rng, static_cast<size_t>(N * 2 * F), 2.f), dout = randn(rng, static_cast<size_t>(N * F));
    Tensor cout_ = cpu_f32(std::vector<float>(static_cast<size_t>(N * F)), {N, F});
    ops::swiglu_forward(c, cout_, cpu_f32(gu, {N, 2 * F}));
    Tensor ggu = gpu(gu, {N, 2 * F}, DType::BF16), gout = Tensor::empty({N, F}, DType::BF16, Device::CUDA);
    poison(g, gout);
    ops::swiglu_forward(g, gout, ggu);
    expect_close("swiglu_forward " + tag, gout, cout_, kBf16Tol);
    Tensor cd = cpu_f32(std::vector<float>(gu.size()), {N, 2 * F});
    ops::swiglu_backward(c, cd, cpu_f32(dout, {N, F}), cpu_f32(gu, {N, 2 * F}));
    Tensor gd = Tensor::empty({N, 2 * F}, DType::BF16, Device::CUDA);
    poison(g, gd);
    ops::swiglu_backward(g, gd, gpu(dout, {N, F}, DType::BF16), ggu);
    expect_close("swiglu_backward " + tag, gd, cd, kBf16Tol);
  }
}

TEST(CudaCrossEntropy, ForwardAndFused) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  for (auto [N, V] : {std::pair<int64_t, int64_t>{37, 1003}, {64, 32000}, {16, 128256}, {5, 7}}) {
    const std::string tag = fmt::format("N={} V={}", N, V);
    const auto logits = randn(rng, static_cast<size_t>(N * V), 3.f);
    std::uniform_int_distribution<int32_t> tg(0, static_cast<int32_t>(V - 1));
    std::vector<int32_t> targets(static_cast<size_t>(N));
    for (auto& t : targets) t = tg(rng);
    targets[1] = -1;  // ignored
    std::vector<float> dloss(static_cast<size_t>(N));
    for (auto& d : dloss) d = 1.f / static_cast<float>(N);
    Tensor closs = cpu_f32(std::vector<float>(static_cast<size_t>(N)), {N});
    ops::cross_entropy_forward(c, closs, cpu_f32(logits, {N, V}), gputest::cpu_i32(targets));
    Tensor gloss = Tensor::empty({N}, DType::F32, Device::CUDA);
    Tensor glogits = gpu(logits, {N, V}, DType::BF16);
    Tensor gt = gputest::gpu_i32(targets);
    poison(g, gloss);
    ops::cross_entropy_forward(g, gloss, glogits, gt);
    expect_close("cross_entropy_forward loss " + tag, gloss, closs, 1e-5);

    Tensor clog = cpu_f32(logits, {N, V}), closs2 = cpu_f32(std::vector<float>(static_cast<size_t>(N)), {N});
    Tensor cdl = cpu_f32(dloss, {N});
    ops::cross_entropy_fused(c, closs2, clog, gputest::cpu_i32(targets), cdl);
    poison(g, gloss);
    ops::cross_entropy_fused(g, gloss, glogits, gt, cdl.to(Device::CUDA));
    expect_close("cross_entropy_fused loss " + tag, gloss, closs2, 1e-5);
    expect_close("cross_entropy_fused dlogits " + tag, glogits, clog, kBf16Tol);
  }
}

// lr 3e-3, betas 0.9 / 0.95, weight decay 0.1, gradients halved (a loss scale of 2), at `step`.
ops::AdamWParams adamw_test_params(int64_t step) {
  ops::AdamWParams hp;
  hp.lr = 3e-3f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-8f;
  hp.weight_decay = 0.1f;
  hp.step = step;
  hp.grad_scale = 0.5f;
  return hp;
}

// use_precision_aware_optimizer on the GPU against the CPU backend: bf16 moments, masters held as
// bf16 weight + int16 remainder, bf16 or fp32 gradients, odd sizes (the scalar tails).
TEST(CudaOptim, PrecisionAwareAdamWMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  std::vector<int64_t> sizes;
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + (i * 7919) % 3001);
  sizes.push_back(1 << 20);
  std::vector<ops::AdamWTensor> gp, cp;
  std::vector<std::vector<float>> initial;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t n = sizes[i];
    const bool split = i % 3 != 2, m16 = i % 2 == 0, v16 = i % 4 < 2, g16 = i % 5 == 1;
    auto p = gputest::round_to(randn(rng, static_cast<size_t>(n), 1.f, false), DType::BF16);
    const auto gr = randn(rng, static_cast<size_t>(n), 1.f, false);
    auto m = gputest::round_to(randn(rng, static_cast<size_t>(n), 0.1f, false), DType::BF16);
    auto v = randn(rng, static_cast<size_t>(n), 0.1f, false);
    for (auto& x : v) x = x * x;
    v = gputest::round_to(v, DType::BF16);
    initial.push_back(p);
    ops::AdamWTensor a, b;
    if (split) {  // remainder 0: the master is the bf16 weight
      a.model = gpu(p, {n}, DType::BF16);
      a.master_remainder = Tensor::zeros({n}, DType::I16, Device::CUDA);
      b.model = Tensor::from_floats(p, {n}, DType::BF16);
      b.master_remainder = Tensor::zeros({n}, DType::I16);
    } else {
      a.master = gpu(p, {n}, DType::F32);
      a.model = Tensor::empty({n}, DType::BF16, Device::CUDA);
      b.master = cpu_f32(p, {n});
      b.model = Tensor::empty({n}, DType::BF16);
    }
    a.grad = gpu(gr, {n}, g16 ? DType::BF16 : DType::F32);
    b.grad = cpu_f32(g16 ? gputest::round_to(gr, DType::BF16) : gr, {n});
    a.exp_avg = gpu(m, {n}, m16 ? DType::BF16 : DType::F32);
    b.exp_avg = Tensor::from_floats(m, {n}, m16 ? DType::BF16 : DType::F32);
    a.exp_avg_sq = gpu(v, {n}, v16 ? DType::BF16 : DType::F32);
    b.exp_avg_sq = Tensor::from_floats(v, {n}, v16 ? DType::BF16 : DType::F32);
    a.weight_decay_mult = b.weight_decay_mult = i % 4 == 0 ? 0.f : 1.f;
    gp.push_back(a);
    cp.push_back(b);
  }
  ops::AdamWParams hp = adamw_test_params(5);
  for (int s = 0; s < 3; ++s) {
    ops::adamw_step(g, gp, hp);
    ops::adamw_step(c, cp, hp);
    ++hp.step;
  }
  // The fp32 master of each parameter, joined where it is split.
  auto master = [](const ops::AdamWTensor& t) {
    if (!t.master_remainder.defined()) return t.master.to_float_vector();
    const Tensor w = t.model.to(Device::CPU), r = t.master_remainder.to(Device::CPU);
    std::vector<float> out(static_cast<size_t>(w.numel()));
    for (int64_t i = 0; i < w.numel(); ++i) {
      const uint32_t bits = join_master_bits(static_cast<const uint16_t*>(w.raw())[i], r.data<int16_t>()[i]);
      std::memcpy(&out[static_cast<size_t>(i)], &bits, sizeof(bits));
    }
    return out;
  };
  double worst_master = 0, worst_m = 0, worst_v = 0;
  int64_t moved = 0;
  for (size_t i = 0; i < gp.size(); ++i) {
    const std::vector<float> gm = master(gp[i]), cm = master(cp[i]);
    worst_master = std::max(worst_master, gputest::compare(gm, cm).rel);
    worst_m = std::max(worst_m, gputest::compare(gp[i].exp_avg.to_float_vector(), cp[i].exp_avg.to_float_vector()).rel);
    worst_v = std::max(worst_v, gputest::compare(gp[i].exp_avg_sq.to_float_vector(), cp[i].exp_avg_sq.to_float_vector()).rel);
    // The weights are the masters rounded to nearest, on both sides.
    const std::vector<float> w = gp[i].model.to_float_vector();
    for (size_t j = 0; j < w.size(); ++j) ASSERT_NEAR(w[j], gm[j], std::abs(gm[j]) * (1.f / 256) + 1e-30f) << i << "/" << j;
    for (size_t j = 0; j < w.size(); ++j) moved += w[j] != initial[i][j];
  }
  std::printf("[check] precision-aware adamw (%zu tensors) master %.3e m %.3e v %.3e\n", gp.size(), worst_master,
              worst_m, worst_v);
  // The two sides' fp32 arithmetic differs in its last bits (the GPU contracts into FMAs), and a
  // bf16 moment may then round the other way: 2^-8 of that element's update, lr = 3e-3 of a
  // weight of ~1. Measured on an H100 (2026-12-07): master 3.3e-6, m 8.3e-4, v 7.7e-5.
  EXPECT_LE(worst_master, 2e-5);
  EXPECT_LE(worst_m, 8e-3);
  EXPECT_LE(worst_v, 8e-3);
  EXPECT_GT(moved, (1 << 20) / 2);  // three steps of lr 3e-3 move most bf16 weights
}

TEST(CudaOptim, MultiTensorAdamWAndReductions) {
  PRIMUS_REQUIRE_GPU();
  auto rng = fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  // More tensors than one chunk list of the reductions, odd sizes, unaligned tails.
  std::vector<int64_t> sizes;
  for (int i = 0; i < 120; ++i) sizes.push_back(1 + (i * 7919) % 5000);
  sizes.push_back(3 << 20);
  std::vector<ops::AdamWTensor> gp, cp;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const int64_t n = sizes[i];
    const auto p = randn(rng, static_cast<size_t>(n), 1.f, false), gr = randn(rng, static_cast<size_t>(n), 1.f, false);
    auto m = randn(rng, static_cast<size_t>(n), 0.1f, false), v = randn(rng, static_cast<size_t>(n), 0.1f, false);
    for (auto& x : v) x = x * x;
    ops::AdamWTensor a, b;
    a.master = gpu(p, {n}, DType::F32);
    // Every other tensor's gradient in bf16 (grad_reduce_in_bf16); the CPU gets its bf16 values.
    const bool bf16_grad = i % 2 == 1;
    a.grad = gpu(gr, {n}, bf16_grad ? DType::BF16 : DType::F32);
    a.exp_avg = gpu(m, {n}, DType::F32);
    a.exp_avg_sq = gpu(v, {n}, DType::F32);
    a.model = Tensor::empty({n}, i % 3 == 0 ? DType::F16 : DType::BF16, Device::CUDA);
    poison(g, a.model);
    a.weight_decay_mult = i % 4 == 0 ? 0.f : 1.f;
    b.master = cpu_f32(p, {n});
    b.grad = cpu_f32(bf16_grad ? gputest::round_to(gr, DType::BF16) : gr, {n});
    b.exp_avg = cpu_f32(m, {n});
    b.exp_avg_sq = cpu_f32(v, {n});
    b.model = Tensor::empty({n}, a.model.dtype());
    b.weight_decay_mult = a.weight_decay_mult;
    gp.push_back(a);
    cp.push_back(b);
  }
  ops::AdamWParams hp = adamw_test_params(7);
  ops::adamw_step(g, gp, hp);
  ops::adamw_step(c, cp, hp);
  double worst_master = 0, worst_m = 0, worst_v = 0, worst_model = 0;
  for (size_t i = 0; i < gp.size(); ++i) {
    worst_master = std::max(worst_master, gputest::compare(gp[i].master.to_float_vector(), cp[i].master.to_float_vector()).rel);
    worst_m = std::max(worst_m, gputest::compare(gp[i].exp_avg.to_float_vector(), cp[i].exp_avg.to_float_vector()).rel);
    worst_v = std::max(worst_v, gputest::compare(gp[i].exp_avg_sq.to_float_vector(), cp[i].exp_avg_sq.to_float_vector()).rel);
    const auto mc = gputest::compare(gp[i].model.to_float_vector(), cp[i].model.to_float_vector());
    EXPECT_EQ(mc.nonfinite, 0) << "model copy of param " << i << " not written";
    worst_model = std::max(worst_model, mc.rel);
  }
  std::printf("[check] adamw (%zu tensors) master %.3e m %.3e v %.3e model %.3e\n", gp.size(), worst_master, worst_m,
              worst_v, worst_model);
  EXPECT_LE(worst_master, 1e-6);
  EXPECT_LE(worst_m, 1e-6);
  EXPECT_LE(worst_v, 1e-6);
  EXPECT_LE(worst_model, 4e-3);

  // Reductions over mixed dtypes.
  std::vector<Tensor> gt, ct;
  double ref = 0;
  int64_t zeros = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto x = randn(rng, static_cast<size_t>(sizes[i]));
    for (size_t j = 0; j < x.size(); j += 5) x[j] = 0.f;
    const DType dt = i % 3 == 0 ? DType::F32 : (i % 3 == 1 ? DType::BF16 : DType::F16);
    const auto r = gputest::round_to(x, dt);
    for (float v : r) {
      ref += static_cast<double>(v) * v;
      zeros += v == 0.f;
    }
    gt.push_back(gpu(x, {sizes[i]}, dt));
  }
  const double ss = ops::sum_of_squares(g, gt);
  const int64_t nz = ops::count_zeros(g, gt);
  std::printf("[check] sum_of_squares rel_err %.3e  count_zeros %lld vs %lld\n", std::abs(ss - ref) / ref,
              static_cast<long long>(nz), static_cast<long long>(zeros));
  EXPECT_LE(std::abs(ss - ref) / ref, 1e-6);
  EXPECT_EQ(nz, zeros);
  gt.push_back(gpu({1.f, std::nanf(""), 2.f}, {3}, DType::BF16));
  EXPECT_TRUE(std::isnan(ops::sum_of_squares(g, gt))) << "NaN must propagate into the grad norm";
}

}  // namespace
}  // namespace primus
