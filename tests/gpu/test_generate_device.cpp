// Generation's device path on CUDA: DeviceSampler (ops/cuda/sampling.h) picks the tokens that
// infer::sample_token picks on the same logits and uniforms (within the 1024 candidates and past
// them); the GQA split-K decode attention
// equals decode_attention_cpu on GQA/long-context shapes; infer::generate on a CUDA decoder
// (device sampling, device positions and RoPE rows) gives the CPU fp32 decoder's greedy ids
// for 64 tokens while the CPU's top-1/top-2 margin is clear of rounding, and the same ids and
// entropies as the host-sampling path of the same CUDA decoder.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/rng.h"
#include "gpu_test_util.h"
#include "infer/cached_decoder.h"
#include "infer/device_sampler.h"
#include "infer/generate.h"
#include "model/decoder.h"
#include "ops/decode_attention.h"

using namespace primus;

namespace {

// generate.cpp's entropy of softmax(z / T), NaNs skipped.
double entropy_ref(const float* z, int64_t n, double t) {
  double zmax = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(z[i])) zmax = std::max(zmax, static_cast<double>(z[i]) / t);
  if (!std::isfinite(zmax)) return 0;
  double total = 0, weighted = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(z[i])) continue;
    const double a = static_cast<double>(z[i]) / t - zmax, e = std::exp(a);
    total += e;
    weighted += e * a;
  }
  return std::log(total) - weighted / total;
}

struct Case {
  const char* name;
  infer::SamplingOptions s;
  float logit_scale;  // larger: a peaked distribution (the draw stays within the candidates)
  bool expect_device; // every row decided on the device
};

infer::SamplingOptions opts(float t, int64_t k, float p) {
  infer::SamplingOptions o;
  o.temperature = t;
  o.top_k = k;
  o.top_p = p;
  o.seed = 99;
  return o;
}

}  // namespace

TEST(GenerateDevice, SamplingMatchesHost) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cuda = ops::Context::cuda();
  const int64_t B = 6;
  const std::vector<Case> cases = {
      {"greedy", opts(0.f, 0, 1.f), 1.f, true},
      {"greedy peaked", opts(0.f, 0, 1.f), 8.f, true},
      {"top-k 1", opts(0.8f, 1, 1.f), 1.f, true},
      {"top-k 40", opts(0.7f, 40, 1.f), 1.f, true},
      {"top-k 1024", opts(1.f, 1024, 1.f), 1.f, true},
      {"top-k 40 top-p 0.8", opts(0.9f, 40, 0.8f), 2.f, true},
      {"top-p 0.9 peaked", opts(0.7f, 0, 0.9f), 8.f, true},
      {"temperature only peaked", opts(0.5f, 0, 1.f), 8.f, true},
      // Past the 1024 candidates (the weight-radix selects over the whole row):
      {"top-p 0.95 flat", opts(1.f, 0, 0.95f), 0.5f, true},
      {"temperature 1 flat (GRPO's default)", opts(1.f, 0, 1.f), 0.5f, true},
      {"temperature 1.3 top-p 0.999", opts(1.3f, 0, 0.999f), 1.f, true},
      {"top-k 5000", opts(1.f, 5000, 1.f), 1.f, false},  // a top-k set larger than the candidates: host rows
  };
  std::mt19937_64 rng = gputest::fresh_rng();
  // (V, vocab): rows of 16-byte multiples (float4 loads) with a scalar tail of the allowed ids,
  // and rows that are not (scalar loads). vocab < V: the padded columns are never chosen.
  for (const auto& [V, vocab] : std::vector<std::pair<int64_t, int64_t>>{{20000, 19501}, {20003, 19500}})
  for (const Case& c : cases) {
    for (bool entropy : {false, true}) {
      std::vector<uint64_t> streams = {0, 1, 2, 7, 1000, 3};
      const int64_t steps = 3;
      infer::DeviceSampler sampler(cuda, c.s, vocab, entropy, streams, steps);
      for (int64_t step = 0; step < steps; ++step) {
        std::vector<float> z = gputest::randn(rng, static_cast<size_t>(B * V), c.logit_scale, false);
        // Ties at the top (lowest id wins), NaNs (never chosen), a very negative logit, a row
        // with its maximum in the padded columns (outside vocab: never chosen), and a tied
        // plateau of 64 ids at the top (the radix select's ties, lowest ids first).
        z[5] = z[9] = 50.f * c.logit_scale;
        z[V + 3] = std::numeric_limits<float>::quiet_NaN();
        z[V + 4] = -1e30f;
        z[2 * V + vocab + 1] = 1e4f;
        for (int64_t i = 0; i < 64; ++i) z[3 * V + 100 + i] = 10.f * c.logit_scale;
        Tensor logits = Tensor::from_floats(z, {B, V}, DType::F32, Device::CUDA);
        sampler.choose(logits, step);
        for (int64_t b = 0; b < B; ++b) {
          const std::span<const float> row(z.data() + b * V, static_cast<size_t>(vocab));
          const int32_t want = infer::sample_token(row, c.s, streams[static_cast<size_t>(b)], static_cast<uint64_t>(step));
          EXPECT_EQ(sampler.token(b), want) << c.name << " step " << step << " row " << b;
          if (entropy) {
            const double t = c.s.greedy() ? 1.0 : static_cast<double>(c.s.temperature);
            const double e = entropy_ref(z.data() + b * V, vocab, t);
            EXPECT_NEAR(sampler.entropy(b), e, 1e-5 * std::max(1.0, std::fabs(e))) << c.name << " row " << b;
          }
        }
        // The device ids are the next step's input.
        const std::vector<float> dev = sampler.device_tokens().to_float_vector();
        for (int64_t b = 0; b < B; ++b) EXPECT_EQ(static_cast<int32_t>(dev[static_cast<size_t>(b)]), sampler.token(b));
      }
      if (c.expect_device) EXPECT_EQ(sampler.host_fallbacks(), 0) << c.name;
    }
  }
}

TEST(GenerateDevice, GqaDecodeAttentionMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  ops::Context cuda = ops::Context::cuda();
  // {B, Lmax, Hq, Hkv, D}: Llama-3.2-1B heads at small and large batch (splits / no splits),
  // head dim 128, 8 and 12 query heads per kv head (two head chunks), MHA, a long context
  // with one sequence (many splits), fp32 head dims 32 and 128.
  const std::vector<std::array<int64_t, 5>> shapes = {{2, 300, 32, 8, 64},  {16, 130, 32, 8, 64}, {3, 77, 16, 2, 128},
                                                      {2, 50, 24, 2, 64},   {4, 33, 4, 4, 64},    {1, 2500, 8, 1, 64},
                                                      {2, 200, 8, 2, 32},   {3, 65, 6, 3, 256},   {2, 40, 4, 2, 16}};
  for (DType dt : {DType::BF16, DType::F32}) {
    for (const auto& [B, L, Hq, Hkv, D] : shapes) {
      if (dt == DType::F32 && D > 128) continue;  // fp32 D 256 takes the fallback kernel (tested elsewhere)
      const auto q = gputest::round_to(gputest::randn(rng, B * Hq * D), dt);
      const auto kn = gputest::round_to(gputest::randn(rng, B * Hkv * D), dt);
      const auto vn = gputest::round_to(gputest::randn(rng, B * Hkv * D), dt);
      const auto kc = gputest::round_to(gputest::randn(rng, B * L * Hkv * D), dt);
      const auto vc = gputest::round_to(gputest::randn(rng, B * L * Hkv * D), dt);
      std::vector<int32_t> pos;  // the last position, the first, and positions in between
      for (int64_t b = 0; b < B; ++b)
        pos.push_back(static_cast<int32_t>(b == 0 ? L - 1 : b == 1 ? 0 : (b * 37 + L / 2) % L));
      const float scale = 1.f / std::sqrt(static_cast<float>(D));
      Tensor q_c = gputest::cpu_f32(q, {B, Hq, D}), out_c = Tensor::empty({B, Hq, D}, DType::F32);
      Tensor kc_c = gputest::cpu_f32(kc, {B, L, Hkv, D}), vc_c = gputest::cpu_f32(vc, {B, L, Hkv, D});
      ops::decode_attention_cpu(out_c, q_c, gputest::cpu_f32(kn, {B, Hkv, D}), gputest::cpu_f32(vn, {B, Hkv, D}), kc_c,
                                vc_c, pos.data(), scale);
      Tensor q_g = gputest::gpu(q, {B, Hq, D}, dt), out_g = Tensor::empty({B, Hq, D}, dt, Device::CUDA);
      Tensor kc_g = gputest::gpu(kc, {B, L, Hkv, D}, dt), vc_g = gputest::gpu(vc, {B, L, Hkv, D}, dt);
      ops::fill(cuda, out_g, std::nanf(""));  // every output element must be written
      ops::decode_attention(cuda, out_g, q_g, gputest::gpu(kn, {B, Hkv, D}, dt), gputest::gpu(vn, {B, Hkv, D}, dt), kc_g,
                            vc_g, gputest::gpu_i32(pos), scale);
      cuda.synchronize();
      const std::vector<float> got = out_g.to_float_vector(), want = out_c.to_float_vector();
      double diff = 0, ref = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_FALSE(std::isnan(got[i])) << dtype_name(dt) << " element " << i;
        diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
        ref = std::max(ref, std::fabs(static_cast<double>(want[i])));
      }
      EXPECT_LT(diff / ref, dt == DType::F32 ? 1e-5 : 1e-2)
          << dtype_name(dt) << " B " << B << " L " << L << " Hq " << Hq << " Hkv " << Hkv << " D " << D;
    }
  }
}

namespace {

using gputest::to_device;

// A small Llama whose greedy path the test follows: head dim 64 (the GQA kernel), 2 kv heads.
ModelConfig small_llama() { return gputest::decode_llama("small_llama"); }

}  // namespace

TEST(GenerateDevice, GreedyIdsMatchCpuDecoder) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  const ModelConfig c = small_llama();
  DecoderOptions opt;
  opt.seed = 5;
  DecoderModel model(c, cpu, opt);
  const NamedTensorList w = infer::weights_of(model);
  const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 2, 30, 11, 400, 3}, {7, 3}, {42}};
  const int64_t N = 64;

  // The CPU fp32 reference: greedy ids and the top-1/top-2 margin of every step.
  infer::CachedDecoder ref(c, cpu, w);
  infer::KvCache kc = ref.new_cache(3, 8 + N);
  std::vector<std::vector<int32_t>> want(3);
  std::vector<std::vector<double>> margin(3);
  Tensor logits = ref.prefill(kc, prompts);
  for (int64_t s = 0; s < N; ++s) {
    std::vector<int32_t> next(3);
    for (int64_t b = 0; b < 3; ++b) {
      const float* row = logits.data<float>() + b * c.padded_vocab_size;
      std::vector<float> r(row, row + c.vocab_size);
      const int32_t t = infer::argmax(r);
      std::sort(r.begin(), r.end(), std::greater<float>());
      double scale = 0;
      for (float v : r) scale = std::max(scale, std::fabs(static_cast<double>(v)));
      want[static_cast<size_t>(b)].push_back(t);
      margin[static_cast<size_t>(b)].push_back((r[0] - r[1]) / std::max(scale, 1e-30));
      next[static_cast<size_t>(b)] = t;
    }
    if (s + 1 < N) logits = ref.decode(kc, next);
  }

  infer::GenerateOptions o;
  o.max_new_tokens = N;
  o.vocab_limit = c.vocab_size;
  o.keep_entropy = true;
  for (DType dt : {DType::F32, DType::BF16}) {
    const NamedTensorList wg = to_device(w, dt);
    infer::CachedDecoder dec(c, cuda, wg);
    const infer::GenerateResult got = infer::generate(dec, prompts, o);
    // A relative margin below this may flip by the device's rounding: compare up to there.
    const double clear = dt == DType::F32 ? 1e-4 : 5e-2;
    for (int64_t b = 0; b < 3; ++b) {
      const auto& g = got.tokens[static_cast<size_t>(b)];
      ASSERT_EQ(static_cast<int64_t>(g.size()), N);
      int64_t compared = 0;
      for (int64_t s = 0; s < N; ++s) {
        if (margin[static_cast<size_t>(b)][static_cast<size_t>(s)] < clear) break;  // a tie within rounding
        EXPECT_EQ(g[static_cast<size_t>(s)], want[static_cast<size_t>(b)][static_cast<size_t>(s)])
            << dtype_name(dt) << " sequence " << b << " step " << s << " (CPU margin "
            << margin[static_cast<size_t>(b)][static_cast<size_t>(s)] << ")";
        if (g[static_cast<size_t>(s)] != want[static_cast<size_t>(b)][static_cast<size_t>(s)]) break;
        ++compared;
      }
      if (dt == DType::F32) EXPECT_GE(compared, 16) << "sequence " << b << ": the CPU margins are too small to test";
      std::printf("[ greedy ] %s sequence %ld: %ld of %ld ids compared and equal\n", std::string(dtype_name(dt)).c_str(), static_cast<long>(b),
                  static_cast<long>(compared), static_cast<long>(N));
    }
    // The same CUDA decoder with host sampling (the logits copied back each step): the same
    // ids and entropies, greedy and sampled.
    for (float temperature : {0.f, 0.8f}) {
      infer::GenerateOptions on = o, off = o;
      on.sampling.temperature = off.sampling.temperature = temperature;
      on.sampling.top_p = off.sampling.top_p = temperature > 0 ? 0.9f : 1.f;
      on.sample_ids = off.sample_ids = {11, 12, 13};
      off.sample_on_device = false;
      infer::GenerateOptions eager = on;
      eager.cuda_graphs = false;
      const infer::GenerateResult a = infer::generate(dec, prompts, on), h = infer::generate(dec, prompts, off);
      const infer::GenerateResult e = infer::generate(dec, prompts, eager);
      EXPECT_EQ(a.tokens, h.tokens) << dtype_name(dt) << " temperature " << temperature;
      EXPECT_EQ(a.tokens, e.tokens) << dtype_name(dt) << " temperature " << temperature << ": graph vs eager";
      ASSERT_EQ(a.entropy_sums.size(), h.entropy_sums.size());
      for (size_t b = 0; b < a.entropy_sums.size(); ++b) {
        EXPECT_NEAR(a.entropy_sums[b], h.entropy_sums[b], 1e-4 * std::max(1.0, h.entropy_sums[b]));
        EXPECT_NEAR(a.entropy_sums[b], e.entropy_sums[b], 1e-4 * std::max(1.0, e.entropy_sums[b]));
      }
      EXPECT_EQ(a.decode_steps, N - 1);
      // Two eager warm-up steps (three when the first grows the backend's scratch), the
      // captured one, then replays.
      EXPECT_GE(a.graph_steps, N - 1 - 3) << "capture failed: " << a.graph_failure;
      EXPECT_EQ(e.graph_steps, 0);
    }
  }
}

TEST(GenerateDevice, StopIdsAndLengthsOnDevice) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  const ModelConfig c = small_llama();
  DecoderModel model(c, cpu, DecoderOptions{});
  infer::CachedDecoder dec(c, cuda, to_device(infer::weights_of(model), DType::F32));
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}};
  infer::GenerateOptions host;
  host.max_new_tokens = 12;
  host.vocab_limit = c.vocab_size;
  host.sample_on_device = false;  // the reference: the same decoder, tokens chosen on the host
  const infer::GenerateResult first = infer::generate(dec, prompts, host);
  // Stop on sequence 0's third token: sequence 0 stops there, the batch goes on.
  host.stop_ids = {first.tokens[0][2]};
  infer::GenerateOptions device = host;
  device.sample_on_device = true;
  const infer::GenerateResult h = infer::generate(dec, prompts, host), d = infer::generate(dec, prompts, device);
  EXPECT_EQ(d.tokens, h.tokens);
  EXPECT_EQ(d.finish_reasons, h.finish_reasons);
  EXPECT_EQ(d.finish_reasons[0], "stop");
  EXPECT_EQ(d.generated_tokens, h.generated_tokens);
  EXPECT_EQ(d.decode_steps, h.decode_steps);
  std::vector<std::pair<int64_t, int32_t>> streamed;
  device.on_token = [&](int64_t b, int32_t t) { streamed.emplace_back(b, t); };
  const infer::GenerateResult again = infer::generate(dec, prompts, device);
  EXPECT_EQ(again.tokens, h.tokens);
  EXPECT_EQ(static_cast<int64_t>(streamed.size()), h.generated_tokens);
  // Every sequence stops early: the greedy device loop has queued one step more than it uses
  // (dropped), and the next generation on the same decoder is not disturbed by it.
  host.stop_ids = {first.tokens[0][2], first.tokens[1][1]};
  device.stop_ids = host.stop_ids;
  device.on_token = nullptr;
  const infer::GenerateResult h2 = infer::generate(dec, prompts, host), d2 = infer::generate(dec, prompts, device);
  EXPECT_EQ(d2.tokens, h2.tokens);
  EXPECT_EQ(d2.finish_reasons, h2.finish_reasons);
  EXPECT_EQ(d2.decode_steps, h2.decode_steps);
  const infer::GenerateResult d3 = infer::generate(dec, prompts, device);
  EXPECT_EQ(d3.tokens, h2.tokens);
}
