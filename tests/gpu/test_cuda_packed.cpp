// Packed sequences on CUDA vs the fp32 CPU backend (issue 15): document-masked attention through
// the flash kernel (every tiling) and the simple kernel (MLA head dims 192/128 included), the
// dispatch around cuDNN, and the RoPE ops with per-token (B*T) tables.
//
// Document splits are random with length-1 documents, documents longer than a tile, and
// boundaries placed on and next to the 16/64/128-row tile edges.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "gpu_test_util.h"
#include "ops/cuda/cuda_backend.h"

namespace primus {
namespace {

using gputest::AttentionInputs;
using gputest::AttentionReference;
using gputest::attention_cpu_reference;
using gputest::cpu_f32;
using gputest::expect_close;
using gputest::gpu;
using gputest::poison;
using gputest::randn;

// (B,T) int32 document ids, non-decreasing per row. style 0: mixed random lengths with
// boundaries at tile edges; 1: every token its own document; 2: one document per row.
Tensor make_segments(std::mt19937_64& rng, int64_t B, int64_t T, int style) {
  Tensor s = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    int32_t id = static_cast<int32_t>(rng() % 5);
    int64_t t = 0;
    while (t < T) {
      int64_t len = T;
      if (style == 1) {
        len = 1;
      } else if (style == 0) {
        switch (rng() % 8) {
          case 0: len = 1; break;
          case 1: len = 2 + static_cast<int64_t>(rng() % 6); break;
          case 2: len = 64 - t % 64; break;                              // end on a 64-row tile edge
          case 3: len = 64 - t % 64 + 1; break;                          // one past it
          case 4: len = std::max<int64_t>(1, 16 - t % 16 - 1); break;    // one before a 16-row edge
          case 5: len = 128 + static_cast<int64_t>(rng() % 200); break;  // spans several tiles
          case 6: len = 63; break;
          default: len = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(std::max<int64_t>(T / 3, 1))); break;
        }
      }
      len = std::min(len, T - t);
      for (int64_t j = 0; j < len; ++j) s.data<int32_t>()[b * T + t + j] = id;
      t += len;
      id += 1 + static_cast<int32_t>(rng() % 2);
    }
  }
  return s;
}

struct Case {
  int64_t B, T, Hq, Hkv, D, Dv;
  bool causal;
  int style;
};

struct Variant {
  cuda::AttentionKernel kernel;
  cuda::FlashConfig flash;
  std::string name;
};

std::vector<Variant> flash_variants(int64_t D) {
  std::vector<Variant> out;
  for (const auto& f : cuda::flash_configs(D))
    out.push_back({cuda::AttentionKernel::Flash, f,
                   fmt::format("flash[fw{} fr{} bw{} br{} bk{}]", f.fwd_warps, f.fwd_rows, f.bwd_warps, f.bwd_rows,
                               f.bwd_keys)});
  return out;
}

// The CPU reference (fp32, segments) once per case, then every variant against it.
void run_case(const Case& cs, const std::vector<Variant>& variants, DType dt, std::mt19937_64& rng) {
  ops::Context g = ops::Context::cuda(0);
  auto* be = cuda::as_cuda_backend(g.backend());
  ASSERT_NE(be, nullptr);
  const AttentionInputs in(cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, rng);
  const auto& [sq, sk, sv, so, sl, q, k, v, dout, scale] = in;
  const Tensor cseg = make_segments(rng, cs.B, cs.T, cs.style), gseg = cseg.to(Device::CUDA);
  const AttentionReference ref = attention_cpu_reference(in, cs.causal, &cseg);

  Tensor gq = gpu(q, sq, dt), gk = gpu(k, sk, dt), gv = gpu(v, sv, dt), gdo = gpu(dout, so, dt);
  for (const Variant& var : variants) {
    be->set_attention_kernel(var.kernel);
    be->set_flash_config(var.flash);
    const std::string tag = fmt::format("{} {} B={} T={} Hq={} Hkv={} D={}/{} causal={} docs={}", var.name,
                                        dtype_name(dt), cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, cs.causal, cs.style);
    Tensor gout = Tensor::empty(so, dt, Device::CUDA), glse = Tensor::empty(sl, DType::F32, Device::CUDA);
    poison(g, gout);
    poison(g, glse);
    ops::attention_forward(g, gout, glse, gq, gk, gv, scale, cs.causal, &gseg);
    expect_close("packed forward out " + tag, gout, ref.out, 1e-2);
    expect_close("packed forward lse " + tag, glse, ref.lse, 1e-4);
    Tensor gdq = Tensor::empty(sq, dt, Device::CUDA), gdk = Tensor::empty(sk, dt, Device::CUDA),
           gdv = Tensor::empty(sv, dt, Device::CUDA);
    poison(g, gdq);
    poison(g, gdk);
    poison(g, gdv);
    ops::attention_backward(g, gdq, gdk, gdv, gdo, gq, gk, gv, gout, glse, scale, cs.causal, &gseg);
    if (cs.style == 1) {
      // Every document is one token: each query sees only its own key, the softmax is constant,
      // and d q, d k are exactly zero (the reference holds rounding noise, ~1e-6): compare
      // absolutely.
      for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"dq", &gdq}, {"dk", &gdk}}) {
        float worst = 0.f;
        for (float x : t->to(Device::CPU).to_float_vector()) worst = std::max(worst, std::fabs(x));
        EXPECT_LT(worst, 1e-4f) << "packed backward " << name << " " << tag << ": length-1 documents must give 0";
      }
    } else {
      expect_close("packed backward dq " + tag, gdq, ref.dq, 2e-2);
      expect_close("packed backward dk " + tag, gdk, ref.dk, 2e-2);
    }
    expect_close("packed backward dv " + tag, gdv, ref.dv, 2e-2);
  }
  be->set_attention_kernel(cuda::AttentionKernel::Auto);
  be->set_flash_config({});
}

TEST(CudaPacked, FlashMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  const Variant simple{cuda::AttentionKernel::Simple, {}, "simple"};
  for (const Case cs : {Case{2, 256, 4, 2, 64, 64, true, 0}, Case{2, 256, 4, 2, 128, 128, true, 0},
                        Case{1, 256, 2, 1, 64, 64, true, 1}, Case{1, 256, 2, 2, 128, 128, false, 1},
                        Case{2, 1000, 4, 1, 64, 64, true, 0}, Case{1, 1000, 4, 2, 128, 128, false, 0},
                        Case{1, 2048, 8, 2, 64, 64, true, 0}, Case{1, 2048, 4, 2, 128, 128, true, 0},
                        Case{2, 333, 6, 3, 64, 64, true, 2}, Case{1, 5, 2, 2, 64, 64, true, 0}}) {
    auto variants = flash_variants(cs.D);
    variants.push_back(simple);
    run_case(cs, variants, DType::BF16, rng);
  }
  run_case(Case{1, 300, 4, 2, 128, 128, true, 0}, flash_variants(128), DType::F16, rng);
}

TEST(CudaPacked, SimpleKernelMlaHeadDims) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  const std::vector<Variant> simple{{cuda::AttentionKernel::Simple, {}, "simple"}};
  for (const Case cs : {Case{2, 150, 4, 4, 192, 128, true, 0}, Case{1, 97, 2, 2, 192, 128, false, 0},
                        Case{1, 64, 2, 1, 96, 64, true, 1}}) {
    run_case(cs, simple, DType::BF16, rng);
  }
  run_case(Case{1, 80, 2, 1, 64, 64, true, 0}, simple, DType::F32, rng);
  // The default dispatch (auto: cuDNN where it builds) must not hand segments to cuDNN: MLA
  // dims go to simple, 64/128 to flash.
  run_case(Case{1, 120, 2, 2, 192, 128, true, 0}, {{cuda::AttentionKernel::Auto, {}, "auto"}}, DType::BF16, rng);
  run_case(Case{1, 300, 4, 2, 128, 128, true, 0}, {{cuda::AttentionKernel::Auto, {}, "auto"}}, DType::BF16, rng);
}

TEST(CudaPacked, CudnnStrictRefusesSegments) {
  PRIMUS_REQUIRE_GPU();
  ops::Context g = ops::Context::cuda(0);
  auto* be = cuda::as_cuda_backend(g.backend());
  be->set_attention_kernel(cuda::AttentionKernel::Cudnn);
  const int64_t B = 1, T = 64, H = 2, D = 64;
  Tensor q = Tensor::zeros({B, T, H, D}, DType::BF16, Device::CUDA), out = q.clone();
  Tensor lse = Tensor::zeros({B, H, T}, DType::F32, Device::CUDA);
  Tensor seg = Tensor::zeros({B, T}, DType::I32, Device::CUDA);
  try {
    ops::attention_forward(g, out, lse, q, q, q, 0.125f, true, &seg);
    ADD_FAILURE() << "cudnn-strict accepted segments";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("segments"), std::string::npos) << e.what();
  }
  be->set_attention_kernel(cuda::AttentionKernel::Auto);
}

// Per-token tables: positions restarting at 0 per document, gathered on each device.
TEST(CudaPacked, RopeOpsWithPerTokenTables) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  ops::Context g = ops::Context::cuda(0), c = ops::Context::cpu();
  constexpr double kBf16Tol = 1e-2;
  const int64_t B = 2, T = 100, Hq = 4, Hkv = 2, D = 64, R = 64;
  const Tensor seg = make_segments(rng, B, T, 0);
  Tensor pos = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0, start = 0; t < T; ++t) {
      if (t > 0 && seg.data<int32_t>()[b * T + t] != seg.data<int32_t>()[b * T + t - 1]) start = t;
      pos.data<int32_t>()[b * T + t] = static_cast<int32_t>(t - start);
    }
  Tensor table_cos, table_sin;
  ops::rope_tables(table_cos, table_sin, T, ops::rope_inv_freq(R, 10000.f, {}));
  Tensor ccos = Tensor::empty({B * T, R / 2}, DType::F32), csin = ccos.clone();
  ops::rope_gather_tables(c, ccos, csin, table_cos, table_sin, pos);
  Tensor gcos = Tensor::empty({B * T, R / 2}, DType::F32, Device::CUDA), gsin = gcos.clone();
  poison(g, gcos);
  poison(g, gsin);
  ops::rope_gather_tables(g, gcos, gsin, table_cos.to(Device::CUDA), table_sin.to(Device::CUDA), pos.to(Device::CUDA));
  EXPECT_EQ(gcos.to_float_vector(), ccos.to_float_vector());
  EXPECT_EQ(gsin.to_float_vector(), csin.to_float_vector());

  // rope_forward / rope_backward
  const Shape sx{B, T, Hq, D};
  const auto x = randn(rng, static_cast<size_t>(shape_numel(sx)));
  Tensor cy = Tensor::empty(sx, DType::F32), cdx = cy.clone();
  ops::rope_forward(c, cy, cpu_f32(x, sx), ccos, csin);
  ops::rope_backward(c, cdx, cpu_f32(x, sx), ccos, csin);
  Tensor gy = Tensor::empty(sx, DType::BF16, Device::CUDA), gdx = gy.clone();
  ops::rope_forward(g, gy, gpu(x, sx, DType::BF16), gcos, gsin);
  ops::rope_backward(g, gdx, gpu(x, sx, DType::BF16), gcos, gsin);
  expect_close("packed rope_forward", gy, cy, kBf16Tol);
  expect_close("packed rope_backward", gdx, cdx, kBf16Tol);

  // qkv_split_rope forward / backward
  const int64_t W = (Hq + 2 * Hkv) * D;
  const auto qkv = randn(rng, static_cast<size_t>(B * T * W));
  Tensor cq = Tensor::empty({B, T, Hq, D}, DType::F32), ck = Tensor::empty({B, T, Hkv, D}, DType::F32), cv = ck.clone();
  ops::qkv_split_rope_forward(c, cq, ck, cv, cpu_f32(qkv, {B * T, W}), ccos, csin);
  Tensor gq = Tensor::empty({B, T, Hq, D}, DType::BF16, Device::CUDA),
         gk = Tensor::empty({B, T, Hkv, D}, DType::BF16, Device::CUDA), gv = gk.clone();
  ops::qkv_split_rope_forward(g, gq, gk, gv, gpu(qkv, {B * T, W}, DType::BF16), gcos, gsin);
  expect_close("packed qkv_split_rope q", gq, cq, kBf16Tol);
  expect_close("packed qkv_split_rope k", gk, ck, kBf16Tol);
  expect_close("packed qkv_split_rope v", gv, cv, kBf16Tol);
  Tensor cdqkv = Tensor::empty({B * T, W}, DType::F32);
  ops::qkv_split_rope_backward(c, cdqkv, cq, ck, cv, ccos, csin);
  Tensor gdqkv = Tensor::empty({B * T, W}, DType::BF16, Device::CUDA);
  ops::qkv_split_rope_backward(g, gdqkv, gpu(cq.to_float_vector(), cq.shape(), DType::BF16),
                               gpu(ck.to_float_vector(), ck.shape(), DType::BF16),
                               gpu(cv.to_float_vector(), cv.shape(), DType::BF16), gcos, gsin);
  expect_close("packed qkv_split_rope_backward", gdqkv, cdqkv, kBf16Tol);

  // MLA: Dn 128 + Dr 64 query/key dims, Dv 128, latent 32; the tables rotate Dr = 64 dims.
  const int64_t H = 2, Dn = 128, Dr = R, Dq = Dn + Dr, Dv = 128, L = 32;
  const auto qp = randn(rng, static_cast<size_t>(B * T * H * Dq)),
             kvu = randn(rng, static_cast<size_t>(B * T * H * (Dn + Dv))),
             kvd = randn(rng, static_cast<size_t>(B * T * (L + Dr)));
  Tensor mq = Tensor::empty({B, T, H, Dq}, DType::F32), mk = mq.clone(), mv = Tensor::empty({B, T, H, Dv}, DType::F32);
  ops::mla_qkv_rope_forward(c, mq, mk, mv, cpu_f32(qp, {B * T, H * Dq}), cpu_f32(kvu, {B * T, H * (Dn + Dv)}),
                            cpu_f32(kvd, {B * T, L + Dr}), ccos, csin);
  Tensor gmq = Tensor::empty({B, T, H, Dq}, DType::BF16, Device::CUDA), gmk = gmq.clone(),
         gmv = Tensor::empty({B, T, H, Dv}, DType::BF16, Device::CUDA);
  ops::mla_qkv_rope_forward(g, gmq, gmk, gmv, gpu(qp, {B * T, H * Dq}, DType::BF16),
                            gpu(kvu, {B * T, H * (Dn + Dv)}, DType::BF16), gpu(kvd, {B * T, L + Dr}, DType::BF16), gcos,
                            gsin);
  expect_close("packed mla_qkv_rope q", gmq, mq, kBf16Tol);
  expect_close("packed mla_qkv_rope k", gmk, mk, kBf16Tol);
  expect_close("packed mla_qkv_rope v", gmv, mv, kBf16Tol);
  Tensor cdqp = Tensor::empty({B * T, H * Dq}, DType::F32), cdkvu = Tensor::empty({B * T, H * (Dn + Dv)}, DType::F32),
         cdkpe = Tensor::empty({B * T, Dr}, DType::F32);
  ops::mla_qkv_rope_backward(c, cdqp, cdkvu, cdkpe, mq, mk, mv, ccos, csin);
  Tensor gdqp = Tensor::empty({B * T, H * Dq}, DType::BF16, Device::CUDA),
         gdkvu = Tensor::empty({B * T, H * (Dn + Dv)}, DType::BF16, Device::CUDA),
         gdkpe = Tensor::empty({B * T, Dr}, DType::BF16, Device::CUDA);
  ops::mla_qkv_rope_backward(g, gdqp, gdkvu, gdkpe, gpu(mq.to_float_vector(), mq.shape(), DType::BF16),
                             gpu(mk.to_float_vector(), mk.shape(), DType::BF16),
                             gpu(mv.to_float_vector(), mv.shape(), DType::BF16), gcos, gsin);
  expect_close("packed mla_qkv_rope_backward dq_proj", gdqp, cdqp, kBf16Tol);
  expect_close("packed mla_qkv_rope_backward dkv_up", gdkvu, cdkvu, kBf16Tol);
  expect_close("packed mla_qkv_rope_backward dk_pe", gdkpe, cdkpe, kBf16Tol);

  // A position outside the table gives NaN rows on the device (no host check there).
  Tensor bad_pos = gputest::gpu_i32({0, 1, static_cast<int32_t>(T), 2});
  Tensor bc = Tensor::empty({4, R / 2}, DType::F32, Device::CUDA), bs = bc.clone();
  ops::rope_gather_tables(g, bc, bs, table_cos.to(Device::CUDA), table_sin.to(Device::CUDA), bad_pos);
  const auto bcv = bc.to_float_vector();
  EXPECT_TRUE(std::isnan(bcv[2 * (R / 2)]));
  EXPECT_FALSE(std::isnan(bcv[0]));
}

}  // namespace
}  // namespace primus
