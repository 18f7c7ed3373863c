// Helpers for the GPU tests: skip without a GPU, fresh random inputs (rounded to bf16 so the
// fp32 CPU reference and the bf16 CUDA kernels see the same numbers), the models and the
// attention reference several tests share, poisoning, and the relative-error metric
// ||out - ref|| / ||ref||. (tests/test_util.h holds what the CPU tests share as well.)
#pragma once

#include <gtest/gtest.h>

#include <execinfo.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../test_util.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "model/model_config.h"
#include "ops/ops.h"

// A crash in a GPU test (which runs on a lent machine without a debugger) prints the stack to
// stderr before the process dies: module + offset per frame, for addr2line on the unstripped
// binary of the same build.
namespace primus::gpu_test {
inline void print_stack_on_crash(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  static const char msg[] = "primus_gpu_tests: fatal signal, stack:\n";
  (void)!write(2, msg, sizeof msg - 1);
  backtrace_symbols_fd(frames, n, 2);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
inline const bool kStackOnCrash = [] {
  std::signal(SIGSEGV, print_stack_on_crash);
  std::signal(SIGABRT, print_stack_on_crash);
  return true;
}();
}  // namespace primus::gpu_test

#define PRIMUS_REQUIRE_GPU()                                          \
  do {                                                                \
    if (!::primus::cuda_available()) GTEST_SKIP() << "no CUDA GPU visible"; \
  } while (0)

namespace primus::gputest {

// A generator seeded freshly per test; the seed goes to the test log so a failure can be rerun.
inline std::mt19937_64 fresh_rng() {
  std::random_device rd;
  const uint64_t seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return std::mt19937_64(seed);
}

inline std::vector<float> randn(std::mt19937_64& rng, size_t n, float stddev = 1.f, bool round_bf16 = true) {
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = d(rng);
    if (round_bf16) x = bf16_bits_to_fp32(fp32_to_bf16_bits(x));
  }
  return v;
}

inline std::vector<float> round_to(const std::vector<float>& v, DType dt) {
  if (dt == DType::F32) return v;
  Tensor t = Tensor::from_floats(v, {static_cast<int64_t>(v.size())}, dt);
  return t.to_float_vector();
}

inline Tensor cpu_f32(const std::vector<float>& v, Shape s) { return Tensor::from_floats(v, std::move(s), DType::F32); }
inline Tensor gpu(const std::vector<float>& v, Shape s, DType dt) {
  return Tensor::from_floats(v, std::move(s), dt, Device::CUDA);
}
inline Tensor gpu_i32(const std::vector<int32_t>& v) {
  Tensor host = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) host.data<int32_t>()[i] = v[i];
  return host.to(Device::CUDA);
}
inline Tensor cpu_i32(const std::vector<int32_t>& v) {
  Tensor host = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32);
  for (size_t i = 0; i < v.size(); ++i) host.data<int32_t>()[i] = v[i];
  return host;
}

// A 2-layer Llama small enough for whole-model GPU-vs-CPU checks (GQA 4/2, hidden 64).
inline ModelConfig tiny_llama(const std::string& name, bool untied) {
  ModelConfig c = test::tiny_llama({.name = name, .hidden = 64, .ffn = 160, .vocab = 96, .max_positions = 0});
  c.untie_embeddings_and_output_weights = untied;
  return c;
}

// A small Llama for the CUDA generation paths: head dim 64 (the GQA decode kernel), 2 kv heads,
// Llama 3.1 RoPE scaling from 32 positions, tied embeddings.
inline ModelConfig decode_llama(const std::string& name) {
  ModelConfig c =
      test::tiny_llama({.name = name, .hidden = 256, .ffn = 512, .vocab = 500, .padded_vocab = 512, .max_positions = 256});
  c.init_method_std = 0.08;
  c.rotary_base = 500000;
  c.use_rope_scaling = true;
  c.original_max_position_embeddings = 32;
  c.untie_embeddings_and_output_weights = false;
  return c;
}

// Weights copied to the GPU in `dt` (a CPU model's weights for a CUDA decoder).
inline NamedTensorList to_device(const NamedTensorList& w, DType dt) {
  NamedTensorList out;
  for (const auto& [name, t] : w)
    out.emplace_back(name, Tensor::from_floats(t.to_float_vector(), t.shape(), dt, Device::CUDA));
  return out;
}

// One attention case's inputs: q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,Dv) and the output's
// gradient dout (B,T,Hq,Dv), drawn from `rng` in that order (bf16-rounded); scale 1/sqrt(D).
struct AttentionInputs {
  Shape sq, sk, sv, so, sl;  // q, k, v, out (and dout), lse (B,Hq,T)
  std::vector<float> q, k, v, dout;
  float scale = 1.f;
  AttentionInputs(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t Dv, std::mt19937_64& rng)
      : sq{B, T, Hq, D}, sk{B, T, Hkv, D}, sv{B, T, Hkv, Dv}, so{B, T, Hq, Dv}, sl{B, Hq, T} {
    q = randn(rng, static_cast<size_t>(shape_numel(sq)));
    k = randn(rng, static_cast<size_t>(shape_numel(sk)));
    v = randn(rng, static_cast<size_t>(shape_numel(sv)));
    dout = randn(rng, static_cast<size_t>(shape_numel(so)));
    scale = 1.f / std::sqrt(static_cast<float>(D));
  }
};

// The fp32 CPU backend's attention of `in` (the specification): forward (out, lse), then the
// backward of in.dout from that forward; `segments` (B,T) int32 document ids when packed.
struct AttentionReference {
  Tensor out, lse, dq, dk, dv;
};
inline AttentionReference attention_cpu_reference(const AttentionInputs& in, bool causal,
                                                  const Tensor* segments = nullptr) {
  ops::Context c = ops::Context::cpu();
  AttentionReference r;
  const Tensor q = cpu_f32(in.q, in.sq), k = cpu_f32(in.k, in.sk), v = cpu_f32(in.v, in.sv);
  r.out = Tensor::zeros(in.so, DType::F32);
  r.lse = Tensor::zeros(in.sl, DType::F32);
  ops::attention_forward(c, r.out, r.lse, q, k, v, in.scale, causal, segments);
  r.dq = Tensor::zeros(in.sq, DType::F32);
  r.dk = Tensor::zeros(in.sk, DType::F32);
  r.dv = Tensor::zeros(in.sv, DType::F32);
  ops::attention_backward(c, r.dq, r.dk, r.dv, cpu_f32(in.dout, in.so), q, k, v, r.out, r.lse, in.scale, causal,
                          segments);
  return r;
}

// Fills a CUDA output with NaN so an element the kernel forgets to write is caught.
inline void poison(ops::Context& ctx, Tensor& t) { ops::fill(ctx, t, std::nanf("")); }

struct Compare {
  double rel = 0;       // ||out - ref|| / ||ref||
  double max_abs = 0;
  int64_t nonfinite = 0;
};

inline Compare compare(const std::vector<float>& out, const std::vector<float>& ref) {
  Compare c;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size() && i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) {
      ++c.nonfinite;
      continue;
    }
    const double d = static_cast<double>(out[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
    c.max_abs = std::max(c.max_abs, std::abs(d));
  }
  c.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return c;
}

// Asserts size, no NaN/Inf and relative error <= tol; prints the error for the log table.
inline void expect_close(const std::string& what, const Tensor& out, const std::vector<float>& ref, double tol) {
  const std::vector<float> o = out.to_float_vector();
  ASSERT_EQ(o.size(), ref.size()) << what;
  const Compare c = compare(o, ref);
  std::printf("[check] %-48s rel_err %.3e  max_abs %.3e  nonfinite %lld  (tol %.1e)\n", what.c_str(), c.rel,
              c.max_abs, static_cast<long long>(c.nonfinite), tol);
  EXPECT_EQ(c.nonfinite, 0) << what << ": elements not written or not finite";
  EXPECT_LE(c.rel, tol) << what << ": relative error too large (max abs diff " << c.max_abs << ")";
}
inline void expect_close(const std::string& what, const Tensor& out, const Tensor& ref, double tol) {
  expect_close(what, out, ref.to_float_vector(), tol);
}

}  // namespace primus::gputest
