// LlamaDecoder: inference forward of the Llama family with a KV cache.
//
// The same math as LlamaModel's forward (model/llama_layer.h), split in two phases:
//   prefill(prompts)  all prompt tokens of B sequences at once (right-padded to the longest
//                     prompt; causal attention keeps padding out of the real positions),
//                     filling the cache at positions 0..len_b-1;
//   decode(tokens)    one new token per sequence at position cache.lengths[b]: RoPE at that
//                     position, attention of the one query over the cached keys
//                     (decode_attention.h), the cache grows by one.
// Positions and RoPE tables are those of training: ops::rope_inv_freq with the config's
// Llama 3.1 scaling (rope_scaling_of()) and ops::rope_tables, row p = position p.
//
// Weights are read by their Megatron-core names (LlamaModel::parameters()):
//   embedding.word_embeddings.weight (V,C); per layer decoder.layers.<l>.
//   input_layernorm.weight (C), self_attention.linear_qkv.weight ((Hq+2Hkv)D, C) rows
//   [q heads | k heads | v heads], self_attention.linear_proj.weight (C, Hq D),
//   pre_mlp_layernorm.weight (C), mlp.linear_fc1.weight (2F, C) rows [gate | up],
//   mlp.linear_fc2.weight (C, F); decoder.final_layernorm.weight (C); output_layer.weight
//   (V,C) unless tied to the embedding.
// All weights share one dtype (the compute dtype: fp32 on CPU, bf16 or fp32 on CUDA) and
// live on the context's device; the decoder keeps views of them (no copies). Logits are
// returned as fp32 host tensors (the output GEMM accumulates into fp32 directly).
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/safetensors.h"
#include "infer/kv_cache.h"
#include "model/model_config.h"
#include "ops/ops.h"

namespace primus {
class LlamaModel;
}

namespace primus::infer {

// Throws naming the key when `c` is not a dense Llama the decoder runs (RMSNorm, SwiGLU,
// rotate-half RoPE without YaRN, no biases, no MoE/MLA/MTP).
void check_supported(const ModelConfig& c);

// The RoPE frequency scaling of `c`, exactly as LlamaModel builds it for training.
ops::RopeScaling rope_scaling_of(const ModelConfig& c);
int64_t rotary_dim_of(const ModelConfig& c);

// Parameter names and shapes the decoder reads, in LlamaModel::parameters() order.
std::vector<std::pair<std::string, Shape>> llama_parameter_shapes(const ModelConfig& c);

// Views of a LlamaModel's parameter values by name (no copies).
NamedTensorList weights_of(LlamaModel& model);

class LlamaDecoder {
 public:
  // `weights` must hold exactly the names of llama_parameter_shapes(config) with those
  // shapes, one float dtype, on ctx's device. `ctx` must outlive the decoder.
  LlamaDecoder(const ModelConfig& config, ops::Context& ctx, const NamedTensorList& weights);

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  ops::Context& context() const { return ctx_; }

  // A zeroed cache for `batch` sequences of up to `max_len` positions (prompt + new tokens).
  KvCache new_cache(int64_t batch, int64_t max_len) const;

  // Runs every prompt token (prompts.size() == cache.batch; each prompt non-empty and no
  // longer than cache.max_len; ids in [0, padded_vocab_size)). Sets cache.lengths[b] to
  // the prompt length and returns the logits of each prompt's last token, (B, V) fp32 on
  // the host. With `all_logits`, also fills it with (B, Tmax, V) fp32 host logits of every
  // position (rows at and past a shorter prompt's length belong to padding).
  Tensor prefill(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits = nullptr);

  // One token per sequence (tokens.size() == cache.batch) at position cache.lengths[b]
  // (< cache.max_len); appends to the cache and returns the next-token logits (B, V) fp32
  // on the host.
  Tensor decode(KvCache& cache, std::span<const int32_t> tokens);

 private:
  struct Layer {
    Tensor input_norm, qkv, proj, mlp_norm, fc1, fc2;
  };
  // x (N,C) -> x (N,C) through the MLP half of a layer (the attention half differs per phase).
  void mlp_block(const Layer& w, Tensor& x, Tensor& x_mid);
  Tensor final_logits(const Tensor& x_rows);  // (n,C) -> (n,V) fp32 host
  void ensure_rope_rows(int64_t n);
  Tensor to_device(const Tensor& host);  // an arena copy on the device

  ModelConfig config_;
  ops::Context& ctx_;
  DType dtype_ = DType::F32;
  int64_t C_ = 0, F_ = 0, V_ = 0, Hq_ = 0, Hkv_ = 0, D_ = 0, half_rot_ = 0;
  float eps_ = 1e-5f, attn_scale_ = 1.f;
  Tensor embedding_, final_norm_, output_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  Tensor cos_host_, sin_host_;  // (rows, R/2) fp32: positions [0, rows)
  Arena arena_;
};

}  // namespace primus::infer
