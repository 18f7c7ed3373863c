// cuDNN's fused SDPA (src/ops/cuda/cudnn_attention.*) vs the fp32 CPU backend: causal GQA
// forward (out, lse) and backward (dq, dk, dv) on fresh random inputs rounded to bf16, every output
// poisoned with NaN first. The strict mode (AttentionKernel::Cudnn) turns any cuDNN refusal into
// a test failure that carries cuDNN's message; the Auto mode must fall back and stay correct.
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

// The CPU reference, then the CUDA backend in `kernel` mode (Cudnn: strict; Auto: cuDNN or fallback).
void run_case(const Case& cs, cuda::AttentionKernel kernel, DType dt, std::mt19937_64& rng) {
  ops::Context g = ops::Context::cuda(0);
  auto* be = cuda::as_cuda_backend(g.backend());
  ASSERT_NE(be, nullptr);
  be->set_attention_kernel(kernel);
  const AttentionInputs in(cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, rng);
  const auto& [sq, sk, sv, so, sl, q, k, v, dout, scale] = in;
  const AttentionReference ref = attention_cpu_reference(in, cs.causal);

  const cuda::CudnnAttentionShape shape{cs.B, cs.T, cs.Hq, cs.Hkv, cs.D, cs.Dv, dt, cs.causal};
  const std::string mode = kernel == cuda::AttentionKernel::Cudnn ? "cudnn" : "auto";
  const std::string tag = fmt::format("{} {}", mode, shape.describe());
  Tensor gq = gpu(q, sq, dt), gk = gpu(k, sk, dt), gv = gpu(v, sv, dt), gdo = gpu(dout, so, dt);
  Tensor gout = Tensor::empty(so, dt, Device::CUDA), glse = Tensor::empty(sl, DType::F32, Device::CUDA);
  poison(g, gout);
  poison(g, glse);
  ops::attention_forward(g, gout, glse, gq, gk, gv, scale, cs.causal);
  std::printf("[info] %s forward: %s\n", tag.c_str(),
              be->cudnn_attention().describe(cuda::CudnnPass::Forward, shape).c_str());
  expect_close("attention_forward out " + tag, gout, ref.out, 1e-2);
  expect_close("attention_forward lse " + tag, glse, ref.lse, 1e-4);

  Tensor gdq = Tensor::empty(sq, dt, Device::CUDA), gdk = Tensor::empty(sk, dt, Device::CUDA),
         gdv = Tensor::empty(sv, dt, Device::CUDA);
  poison(g, gdq);
  poison(g, gdk);
  poison(g, gdv);
  // Backward from the GPU's own forward (as in training), checked against the CPU's gradients.
  ops::attention_backward(g, gdq, gdk, gdv, gdo, gq, gk, gv, gout, glse, scale, cs.causal);
  std::printf("[info] %s backward: %s\n", tag.c_str(),
              be->cudnn_attention().describe(cuda::CudnnPass::Backward, shape).c_str());
  expect_close("attention_backward dq " + tag, gdq, ref.dq, 2e-2);
  expect_close("attention_backward dk " + tag, gdk, ref.dk, 2e-2);
  expect_close("attention_backward dv " + tag, gdv, ref.dv, 2e-2);
}

bool have_cudnn() { return cuda::CudnnAttention::compiled_in(); }

// (B,T,Hq,Hkv,D): GQA 2:1 at D=64, MHA at D=128 with T=333 (not a multiple of any tile, and the
// shape that needs the pre-9.16 padding-mask workaround in the backward), and a Llama-1B-like
// GQA 4:1 at T=1024.
TEST(CudnnAttention, CausalGqaMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  if (!have_cudnn()) GTEST_SKIP() << "built without cuDNN";
  auto rng = gputest::fresh_rng();
  for (const Case cs : {Case{2, 128, 4, 2, 64, 64, true}, Case{1, 333, 8, 8, 128, 128, true},
                        Case{2, 1024, 32, 8, 64, 64, true}}) {
    run_case(cs, cuda::AttentionKernel::Cudnn, DType::BF16, rng);
  }
}

TEST(CudnnAttention, Fp16AndNonCausalMatchCpu) {
  PRIMUS_REQUIRE_GPU();
  if (!have_cudnn()) GTEST_SKIP() << "built without cuDNN";
  auto rng = gputest::fresh_rng();
  run_case(Case{1, 256, 4, 2, 128, 128, true}, cuda::AttentionKernel::Cudnn, DType::F16, rng);
  run_case(Case{2, 200, 4, 1, 64, 64, false}, cuda::AttentionKernel::Cudnn, DType::BF16, rng);
}

// The default (Auto) dispatch: shapes cuDNN refuses (fp32 here; MLA's 192/128 wherever this cuDNN
// has no engine for it) fall back to our kernels with a warning and stay correct.
TEST(CudnnAttention, AutoFallsBackAndStaysCorrect) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  {
    ops::Context g = ops::Context::cuda(0);
    auto* be = cuda::as_cuda_backend(g.backend());
    const std::string why =
        be->cudnn_attention().prepare(cuda::CudnnPass::Forward, {1, 40, 2, 1, 64, 64, DType::F32, true});
    EXPECT_FALSE(why.empty()) << "fp32 attention must be refused by the cuDNN path";
    std::printf("[info] fp32 refusal: %s\n", why.c_str());
  }
  run_case(Case{1, 40, 2, 1, 64, 64, true}, cuda::AttentionKernel::Auto, DType::F32, rng);
  run_case(Case{1, 96, 4, 2, 192, 128, true}, cuda::AttentionKernel::Auto, DType::BF16, rng);
}

}  // namespace
}  // namespace primus
