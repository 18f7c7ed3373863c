// Attention on CUDA (the flash kernel and the simple fallback) vs the fp32 CPU backend:
// causal and not, GQA, head dims 64/128 (and 96/64 through the fallback), sequence lengths
// that are not multiples of the 64-row tiles.
#include <gtest/gtest.h>

#include <cmath>

#include "gpu_test_util.h"
#include "ops/cuda/cuda_backend.h"

namespace primus {
namespace {

using gputest::AttentionInputs;
using gputest::AttentionReference;
using gputest::attention_cpu_reference;
using gputest::expect_close;
using gputest::gpu;
using gputest::poison;
using gputest::randn;

struct Case {
  int64_t B, T, Hq, Hkv, D, Dv;
  bool causal;
};

struct Variant {
  cuda::AttentionKernel kernel;
  cuda::FlashConfig flash;
  std::string name;
};

// The CPU reference once per shape, then every variant against it.
void run_case(const Case& cs, const std::vector<Variant>& variants, DType dt, std::mt19937_64& rng) {
  ops::Context g = ops::Context::cuda(0);
  auto* be = cuda::as_cuda_backend(g.backend());
  ASSERT_NE(be, nullptr);
  const AttentionInputs in(cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, rng);
  const auto& [sq, sk, sv, so, sl, q, k, v, dout, scale] = in;
  // Backward from the CPU's own forward results.
  const AttentionReference ref = attention_cpu_reference(in, cs.causal);

  Tensor gq = gpu(q, sq, dt), gk = gpu(k, sk, dt), gv = gpu(v, sv, dt), gdo = gpu(dout, so, dt);
  for (const Variant& var : variants) {
    be->set_attention_kernel(var.kernel);
    be->set_flash_config(var.flash);
    const std::string tag = fmt::format("{} {} B={} T={} Hq={} Hkv={} D={}/{} causal={}", var.name, dtype_name(dt),
                                        cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, cs.causal);
    Tensor gout = Tensor::empty(so, dt, Device::CUDA), glse = Tensor::empty(sl, DType::F32, Device::CUDA);
    poison(g, gout);
    poison(g, glse);
    ops::attention_forward(g, gout, glse, gq, gk, gv, scale, cs.causal);
    expect_close("attention_forward out " + tag, gout, ref.out, 1e-2);
    expect_close("attention_forward lse " + tag, glse, ref.lse, 1e-4);
    Tensor gdq = Tensor::empty(sq, dt, Device::CUDA), gdk = Tensor::empty(sk, dt, Device::CUDA),
           gdv = Tensor::empty(sv, dt, Device::CUDA);
    poison(g, gdq);
    poison(g, gdk);
    poison(g, gdv);
    ops::attention_backward(g, gdq, gdk, gdv, gdo, gq, gk, gv, gout, glse, scale, cs.causal);
    expect_close("attention_backward dq " + tag, gdq, ref.dq, 2e-2);
    expect_close("attention_backward dk " + tag, gdk, ref.dk, 2e-2);
    expect_close("attention_backward dv " + tag, gdv, ref.dv, 2e-2);
  }
}

std::vector<Variant> flash_variants(int64_t D) {
  std::vector<Variant> out;
  for (const auto& f : cuda::flash_configs(D))
    out.push_back({cuda::AttentionKernel::Flash, f,
                   fmt::format("flash[fw{} fr{} bw{} br{} bk{}]", f.fwd_warps, f.fwd_rows, f.bwd_warps, f.bwd_rows,
                               f.bwd_keys)});
  return out;
}

TEST(CudaAttention, FlashMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  for (const Case cs : {Case{2, 128, 4, 2, 64, 64, true}, Case{1, 200, 4, 1, 128, 128, true},
                        Case{2, 77, 2, 2, 64, 64, false}, Case{1, 300, 2, 1, 128, 128, false},
                        Case{1, 1000, 8, 2, 64, 64, true}, Case{1, 64, 1, 1, 128, 128, true},
                        Case{1, 5, 2, 2, 64, 64, true}, Case{2, 333, 6, 3, 64, 64, true}}) {
    run_case(cs, flash_variants(cs.D), DType::BF16, rng);
  }
  run_case(Case{1, 190, 4, 2, 128, 128, true}, flash_variants(128), DType::F16, rng);
}

TEST(CudaAttention, SimpleKernelMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  for (const Case cs : {Case{2, 70, 4, 2, 64, 64, true}, Case{1, 50, 2, 1, 96, 64, true},
                        Case{1, 33, 2, 2, 192, 128, false}}) {
    run_case(cs, {{cuda::AttentionKernel::Simple, {}, "simple"}}, DType::BF16, rng);
  }
  run_case(Case{1, 40, 2, 1, 64, 64, true}, {{cuda::AttentionKernel::Simple, {}, "simple"}}, DType::F32, rng);
}

// Flash and simple kernels agree with each other at a training-sized shape the CPU would be
// slow on (a second, independent GPU implementation).
TEST(CudaAttention, FlashMatchesSimpleAtLlamaShape) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  ops::Context g = ops::Context::cuda(0);
  auto* be = cuda::as_cuda_backend(g.backend());
  const int64_t B = 1, T = 2048, Hq = 8, Hkv = 2, D = 64;
  const Shape sq{B, T, Hq, D}, sk{B, T, Hkv, D}, sl{B, Hq, T};
  const auto q = randn(rng, static_cast<size_t>(shape_numel(sq))), k = randn(rng, static_cast<size_t>(shape_numel(sk))),
             v = randn(rng, static_cast<size_t>(shape_numel(sk))), dout = randn(rng, static_cast<size_t>(shape_numel(sq)));
  Tensor gq = gpu(q, sq, DType::BF16), gk = gpu(k, sk, DType::BF16), gv = gpu(v, sk, DType::BF16),
         gdo = gpu(dout, sq, DType::BF16);
  auto run = [&](cuda::AttentionKernel kern, Tensor& out, Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
    be->set_attention_kernel(kern);
    ops::attention_forward(g, out, lse, gq, gk, gv, 0.125f, true);
    ops::attention_backward(g, dq, dk, dv, gdo, gq, gk, gv, out, lse, 0.125f, true);
  };
  auto mk = [&](const Shape& s, DType dt) { return Tensor::empty(s, dt, Device::CUDA); };
  Tensor o1 = mk(sq, DType::BF16), l1 = mk(sl, DType::F32), dq1 = mk(sq, DType::BF16), dk1 = mk(sk, DType::BF16),
         dv1 = mk(sk, DType::BF16);
  Tensor o2 = mk(sq, DType::BF16), l2 = mk(sl, DType::F32), dq2 = mk(sq, DType::BF16), dk2 = mk(sk, DType::BF16),
         dv2 = mk(sk, DType::BF16);
  run(cuda::AttentionKernel::Simple, o1, l1, dq1, dk1, dv1);
  for (const auto& f : cuda::flash_configs(D)) {
    be->set_flash_config(f);
    for (Tensor* t : {&o2, &l2, &dq2, &dk2, &dv2}) poison(g, *t);
    run(cuda::AttentionKernel::Flash, o2, l2, dq2, dk2, dv2);
    const std::string tag = fmt::format("[fw{} fr{} bw{} br{} bk{}] T=2048", f.fwd_warps, f.fwd_rows, f.bwd_warps,
                                        f.bwd_rows, f.bwd_keys);
    expect_close("flash vs simple out " + tag, o2, o1, 1e-2);
    expect_close("flash vs simple lse " + tag, l2, l1, 1e-4);
    expect_close("flash vs simple dq " + tag, dq2, dq1, 2e-2);
    expect_close("flash vs simple dk " + tag, dk2, dk1, 2e-2);
    expect_close("flash vs simple dv " + tag, dv2, dv1, 2e-2);
  }
}

}  // namespace
}  // namespace primus
