// Generation on CUDA (src/infer): the decode-attention kernels against the CPU loop, and
// the whole CachedDecoder (prefill + KV-cache decode) on CUDA against the CPU decoder with
// the same weights, in fp32 (tight) and bf16 (loose; greedy tokens mostly agree).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "../generate/checkpoint_fixture.h"
#include "core/rng.h"
#include "gpu_test_util.h"
#include "ops/decode_attention.h"
#include "infer/generate.h"
#include "infer/cached_decoder.h"

using namespace primus;

namespace {

using gputest::to_device;
using test::max_rel_error;

}  // namespace

TEST(GenerateCuda, DecodeAttentionMatchesCpu) {
  PRIMUS_REQUIRE_GPU();
  auto rng = gputest::fresh_rng();
  ops::Context cuda = ops::Context::cuda();
  for (DType dt : {DType::F32, DType::BF16}) {
    for (const auto& [B, L, Hq, Hkv, D] : std::vector<std::array<int64_t, 5>>{{3, 40, 8, 2, 64}, {2, 7, 4, 4, 128}, {1, 300, 6, 1, 80}}) {
      const auto q = gputest::round_to(gputest::randn(rng, B * Hq * D), dt);
      const auto kn = gputest::round_to(gputest::randn(rng, B * Hkv * D), dt);
      const auto vn = gputest::round_to(gputest::randn(rng, B * Hkv * D), dt);
      const auto kc = gputest::round_to(gputest::randn(rng, B * L * Hkv * D), dt);
      const auto vc = gputest::round_to(gputest::randn(rng, B * L * Hkv * D), dt);
      std::vector<int32_t> pos;
      for (int64_t b = 0; b < B; ++b) pos.push_back(static_cast<int32_t>((b * 5 + L - 1) % L));
      Tensor q_c = gputest::cpu_f32(q, {B, Hq, D}), out_c = Tensor::empty({B, Hq, D}, DType::F32);
      Tensor kc_c = gputest::cpu_f32(kc, {B, L, Hkv, D}), vc_c = gputest::cpu_f32(vc, {B, L, Hkv, D});
      ops::decode_attention_cpu(out_c, q_c, gputest::cpu_f32(kn, {B, Hkv, D}), gputest::cpu_f32(vn, {B, Hkv, D}),
                                  kc_c, vc_c, pos.data(), 0.125f);
      Tensor q_g = gputest::gpu(q, {B, Hq, D}, dt), out_g = Tensor::empty({B, Hq, D}, dt, Device::CUDA);
      Tensor kc_g = gputest::gpu(kc, {B, L, Hkv, D}, dt), vc_g = gputest::gpu(vc, {B, L, Hkv, D}, dt);
      ops::decode_attention(cuda, out_g, q_g, gputest::gpu(kn, {B, Hkv, D}, dt), gputest::gpu(vn, {B, Hkv, D}, dt),
                              kc_g, vc_g, gputest::gpu_i32(pos), 0.125f);
      cuda.synchronize();
      const double tol = dt == DType::F32 ? 1e-5 : 1e-2;
      EXPECT_LT(max_rel_error(out_g.to_float_vector(), out_c.to_float_vector()), tol) << dtype_name(dt) << " B " << B << " L " << L;
      EXPECT_EQ(gputest::round_to(kc_g.to_float_vector(), dt), gputest::round_to(kc_c.to_float_vector(), dt));
      EXPECT_EQ(gputest::round_to(vc_g.to_float_vector(), dt), gputest::round_to(vc_c.to_float_vector(), dt));
    }
  }
}

TEST(GenerateCuda, DecoderMatchesCpuDecoder) {
  PRIMUS_REQUIRE_GPU();
  ops::Context cpu = ops::Context::cpu(), cuda = ops::Context::cuda();
  // Multi-latent attention (query latent, latent norms, YaRN): the latent cache and the absorbed
  // decode kernels (ops/mla_decode.h) against the CPU.
  ModelConfig mla = test_generate::tiny_gqa();
  mla.name = "tiny_mla";
  mla.multi_latent_attention = true;
  mla.qk_layernorm = true;
  mla.q_lora_rank = 12;
  mla.kv_lora_rank = 40;
  mla.qk_head_dim = 8;
  mla.qk_pos_emb_head_dim = 8;
  mla.v_head_dim = 8;
  mla.rotary_scaling_factor = 4;
  mla.original_max_position_embeddings = 8;
  for (const ModelConfig& c : {test_generate::tiny_gqa(), test_generate::tiny_rope_scaling_tied(), mla}) {
    // Head dim 8 is not a flash-attention shape: the CUDA backend's plain kernel runs the
    // prefill; ours runs the decode.
    DecoderOptions opt;
    opt.seed = 17;
    DecoderModel model(c, cpu, opt);
    const NamedTensorList w = infer::weights_of(model);
    infer::CachedDecoder ref(c, cpu, w);
    for (DType dt : {DType::F32, DType::BF16}) {
      const NamedTensorList wg = to_device(w, dt);
      infer::CachedDecoder dec(c, cuda, wg);
      const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 2, 30, 11}, {7, 3}};
      infer::KvCache kc = ref.new_cache(2, 20), kg = dec.new_cache(2, 20);
      double worst = max_rel_error(dec.prefill(kg, prompts).to_float_vector(), ref.prefill(kc, prompts).to_float_vector());
      for (int s = 0; s < 10; ++s) {
        const std::vector<int32_t> next = {static_cast<int32_t>((s * 7) % 30), static_cast<int32_t>((s * 3 + 1) % 30)};
        worst = std::max(worst, max_rel_error(dec.decode(kg, next).to_float_vector(), ref.decode(kc, next).to_float_vector()));
      }
      EXPECT_LT(worst, dt == DType::F32 ? 1e-4 : 5e-2) << c.name << " " << dtype_name(dt);
    }
  }
}
