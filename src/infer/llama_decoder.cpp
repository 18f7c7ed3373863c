#include "infer/llama_decoder.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/strings.h"
#include "infer/decode_attention.h"
#include "model/llama.h"

namespace primus::infer {

namespace {

template <typename T>
void require(bool ok, const ModelConfig& c, const char* key, const T& seen, const char* expected) {
  if (!ok)
    fail("model config '{}': {} = {} is not supported by the Llama decoder (expected {})", c.name, key, seen,
         expected);
}

// Rows of logits computed per output GEMM (bounds the fp32 logits buffer to rows x V).
constexpr int64_t kLogitsChunkRows = 256;

}  // namespace

void check_supported(const ModelConfig& c) {
  require(c.num_layers > 0, c, "num_layers", c.num_layers, "> 0");
  require(c.hidden_size > 0, c, "hidden_size", c.hidden_size, "> 0");
  require(c.ffn_hidden_size > 0, c, "ffn_hidden_size", c.ffn_hidden_size, "> 0");
  require(c.num_attention_heads > 0, c, "num_attention_heads", c.num_attention_heads, "> 0");
  require(c.padded_vocab_size > 0, c, "padded_vocab_size", c.padded_vocab_size, "> 0");
  const int64_t groups = c.num_query_groups > 0 ? c.num_query_groups : c.num_attention_heads;
  require(c.num_attention_heads % groups == 0, c, "num_query_groups", groups, "a divisor of num_attention_heads");
  require(c.head_dim() > 0, c, "kv_channels", c.head_dim(), "> 0");
  const double rot = static_cast<double>(c.head_dim()) * c.rotary_percent;
  require(rot >= 2 && std::fabs(rot - std::round(rot)) < 1e-9 && static_cast<int64_t>(std::round(rot)) % 2 == 0, c,
          "rotary_percent", c.rotary_percent, "a fraction giving an even number of rotary dims");
  require(c.normalization == "RMSNorm", c, "normalization", c.normalization, "RMSNorm");
  require(c.swiglu, c, "swiglu", c.swiglu, "true");
  require(c.position_embedding_type == "rope", c, "position_embedding_type", c.position_embedding_type, "rope");
  require(!c.add_bias_linear, c, "add_bias_linear", c.add_bias_linear, "false");
  require(!c.add_qkv_bias, c, "add_qkv_bias", c.add_qkv_bias, "false");
  require(c.num_experts == 0, c, "num_experts", c.num_experts, "0 (MoE generation is not built yet)");
  require(!c.multi_latent_attention, c, "multi_latent_attention", c.multi_latent_attention, "false");
  require(c.mtp_num_layers == 0, c, "mtp_num_layers", c.mtp_num_layers, "0");
  require(c.rotary_scaling_factor == 1.0, c, "rotary_scaling_factor", c.rotary_scaling_factor,
          "1 (YaRN belongs to DeepSeek; Llama 3.1 uses use_rope_scaling)");
  require(!c.rotary_interleaved, c, "rotary_interleaved", c.rotary_interleaved, "false");
  require(c.norm_epsilon > 0, c, "norm_epsilon", c.norm_epsilon, "> 0");
}

ops::RopeScaling rope_scaling_of(const ModelConfig& c) {
  ops::RopeScaling s;
  s.enabled = c.use_rope_scaling;
  s.factor = static_cast<float>(c.rope_scaling_factor);
  s.low_freq_factor = static_cast<float>(c.rope_low_freq_factor);
  s.high_freq_factor = static_cast<float>(c.rope_high_freq_factor);
  s.original_max_position_embeddings = c.original_max_position_embeddings;
  return s;
}

int64_t rotary_dim_of(const ModelConfig& c) {
  return static_cast<int64_t>(std::round(static_cast<double>(c.head_dim()) * c.rotary_percent));
}

std::vector<std::pair<std::string, Shape>> llama_parameter_shapes(const ModelConfig& c) {
  const int64_t C = c.hidden_size, F = c.ffn_hidden_size, V = c.padded_vocab_size, D = c.head_dim();
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_query_groups > 0 ? c.num_query_groups : Hq;
  std::vector<std::pair<std::string, Shape>> out;
  out.emplace_back("embedding.word_embeddings.weight", Shape{V, C});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string pre = "decoder.layers." + std::to_string(l) + ".";
    out.emplace_back(pre + "input_layernorm.weight", Shape{C});
    out.emplace_back(pre + "self_attention.linear_qkv.weight", Shape{(Hq + 2 * Hkv) * D, C});
    out.emplace_back(pre + "self_attention.linear_proj.weight", Shape{C, Hq * D});
    out.emplace_back(pre + "pre_mlp_layernorm.weight", Shape{C});
    out.emplace_back(pre + "mlp.linear_fc1.weight", Shape{2 * F, C});
    out.emplace_back(pre + "mlp.linear_fc2.weight", Shape{C, F});
  }
  out.emplace_back("decoder.final_layernorm.weight", Shape{C});
  if (c.untie_embeddings_and_output_weights) out.emplace_back("output_layer.weight", Shape{V, C});
  return out;
}

NamedTensorList weights_of(LlamaModel& model) {
  NamedTensorList out;
  for (NamedTensor* p : model.parameters()) out.emplace_back(p->name, p->value);
  return out;
}

LlamaDecoder::LlamaDecoder(const ModelConfig& config, ops::Context& ctx, const NamedTensorList& weights)
    : config_(config), ctx_(ctx), arena_(ctx.device()) {
  check_supported(config_);
  if (config_.num_query_groups <= 0) config_.num_query_groups = config_.num_attention_heads;
  C_ = config_.hidden_size;
  F_ = config_.ffn_hidden_size;
  V_ = config_.padded_vocab_size;
  Hq_ = config_.num_attention_heads;
  Hkv_ = config_.num_query_groups;
  D_ = config_.head_dim();
  eps_ = static_cast<float>(config_.norm_epsilon);
  attn_scale_ = 1.f / std::sqrt(static_cast<float>(D_));
  inv_freq_ = ops::rope_inv_freq(rotary_dim_of(config_), static_cast<float>(config_.rotary_base),
                                 rope_scaling_of(config_));
  half_rot_ = static_cast<int64_t>(inv_freq_.size());

  std::map<std::string, Tensor> by_name;
  std::vector<std::string> given;
  for (const auto& [name, t] : weights) {
    PRIMUS_CHECK(by_name.emplace(name, t).second, "LlamaDecoder: weight '{}' is given twice", name);
    given.push_back(name);
  }
  const auto expected = llama_parameter_shapes(config_);
  std::vector<std::string> expected_names;
  for (const auto& e : expected) expected_names.push_back(e.first);
  dtype_ = weights.empty() ? DType::F32 : weights.front().second.dtype();
  PRIMUS_CHECK(dtype_ == DType::F32 || dtype_ == DType::BF16 || dtype_ == DType::F16,
               "LlamaDecoder: weights must be fp32, bf16 or fp16, got {}", dtype_name(dtype_));
  std::map<std::string, Tensor> used;
  for (const auto& [name, shape] : expected) {
    auto it = by_name.find(name);
    PRIMUS_CHECK(it != by_name.end(), "LlamaDecoder: model '{}' needs weight '{}' {} which is missing{}", config_.name,
                 name, shape_str(shape), did_you_mean(name, given));
    const Tensor& t = it->second;
    PRIMUS_CHECK(t.shape() == shape, "LlamaDecoder: weight '{}' has shape {}, expected {} for model '{}'", name,
                 shape_str(t.shape()), shape_str(shape), config_.name);
    PRIMUS_CHECK(t.dtype() == dtype_, "LlamaDecoder: weight '{}' is {} but the others are {} (one dtype expected)",
                 name, dtype_name(t.dtype()), dtype_name(dtype_));
    PRIMUS_CHECK(t.device() == ctx_.device(), "LlamaDecoder: weight '{}' is {} but the context runs on {}", name,
                 t.describe(), device_name(ctx_.device()));
    used[name] = t;
    by_name.erase(it);
  }
  PRIMUS_CHECK(by_name.empty(), "LlamaDecoder: weight '{}' is not a parameter of model '{}'{}",
               by_name.empty() ? "" : by_name.begin()->first, config_.name,
               by_name.empty() ? "" : did_you_mean(by_name.begin()->first, expected_names));
  embedding_ = used.at("embedding.word_embeddings.weight");
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const std::string pre = "decoder.layers." + std::to_string(l) + ".";
    layers_.push_back(Layer{used.at(pre + "input_layernorm.weight"), used.at(pre + "self_attention.linear_qkv.weight"),
                            used.at(pre + "self_attention.linear_proj.weight"),
                            used.at(pre + "pre_mlp_layernorm.weight"), used.at(pre + "mlp.linear_fc1.weight"),
                            used.at(pre + "mlp.linear_fc2.weight")});
  }
  final_norm_ = used.at("decoder.final_layernorm.weight");
  output_ = config_.untie_embeddings_and_output_weights ? used.at("output_layer.weight") : embedding_;
}

KvCache LlamaDecoder::new_cache(int64_t batch, int64_t max_len) const {
  return KvCache::allocate(config_.num_layers, batch, max_len, Hkv_, D_, dtype_, ctx_.device());
}

void LlamaDecoder::ensure_rope_rows(int64_t n) {
  if (cos_host_.defined() && cos_host_.size(0) >= n) return;
  cos_host_ = Tensor();
  sin_host_ = Tensor();
  ops::rope_tables(cos_host_, sin_host_, n, inv_freq_);
}

Tensor LlamaDecoder::to_device(const Tensor& host) {
  if (ctx_.device() == Device::CPU) return host;
  Tensor t = arena_.alloc(host.shape(), host.dtype());
  t.copy_from(host);
  return t;
}

void LlamaDecoder::mlp_block(const Layer& w, Tensor& x, Tensor& x_mid) {
  const int64_t N = x.size(0);
  const Arena::Mark m = arena_.mark();
  Tensor h = arena_.alloc({N, C_}, dtype_), rstd = arena_.alloc({N}, DType::F32);
  Tensor gate_up = arena_.alloc({N, 2 * F_}, dtype_), act = arena_.alloc({N, F_}, dtype_);
  ops::rmsnorm_forward(ctx_, h, rstd, x_mid, w.mlp_norm, eps_);
  ops::linear_forward(ctx_, gate_up, h, w.fc1);
  ops::swiglu_forward(ctx_, act, gate_up);
  ops::linear_forward(ctx_, x, act, w.fc2);
  ops::add(ctx_, x, x, x_mid);
  arena_.release(m);
}

Tensor LlamaDecoder::final_logits(const Tensor& x_rows) {
  const int64_t n = x_rows.size(0);
  Tensor host = Tensor::empty({n, V_}, DType::F32);
  for (int64_t r0 = 0; r0 < n; r0 += kLogitsChunkRows) {
    const int64_t r1 = std::min(n, r0 + kLogitsChunkRows);
    const Arena::Mark m = arena_.mark();
    Tensor h = arena_.alloc({r1 - r0, C_}, dtype_), rstd = arena_.alloc({r1 - r0}, DType::F32);
    ops::rmsnorm_forward(ctx_, h, rstd, x_rows.rows(r0, r1), final_norm_, eps_);
    Tensor logits = arena_.alloc({r1 - r0, V_}, DType::F32);
    ops::matmul(ctx_, logits, h, ops::Transpose::No, output_, ops::Transpose::Yes);
    Tensor dst = host.rows(r0, r1);
    dst.copy_from(logits);
    arena_.release(m);
  }
  return host;
}

Tensor LlamaDecoder::prefill(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits) {
  const int64_t B = static_cast<int64_t>(prompts.size());
  PRIMUS_CHECK(B == cache.batch, "prefill: {} prompts for a cache of {} sequences", B, cache.batch);
  PRIMUS_CHECK(cache.num_layers() == config_.num_layers && cache.kv_heads == Hkv_ && cache.head_dim == D_ &&
                   cache.k[0].dtype() == dtype_ && cache.k[0].device() == ctx_.device(),
               "prefill: the cache ({} layers, {} kv heads of {} dims, {}) was not made for this decoder "
               "({} layers, {} kv heads of {} dims, {}): use new_cache()",
               cache.num_layers(), cache.kv_heads, cache.head_dim, cache.k[0].describe(), config_.num_layers, Hkv_, D_,
               dtype_name(dtype_));
  int64_t T = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    PRIMUS_CHECK(!p.empty(), "prefill: prompt {} is empty (at least one token is needed)", b);
    PRIMUS_CHECK(static_cast<int64_t>(p.size()) <= cache.max_len,
                 "prefill: prompt {} has {} tokens but the cache holds {} positions", b, p.size(), cache.max_len);
    for (size_t i = 0; i < p.size(); ++i)
      PRIMUS_CHECK(p[i] >= 0 && p[i] < V_, "prefill: prompt {} token {} is id {}, outside the vocabulary [0, {})", b,
                   i, p[i], V_);
    T = std::max<int64_t>(T, static_cast<int64_t>(p.size()));
  }
  const int64_t N = B * T;
  arena_.reset();
  ensure_rope_rows(cache.max_len);  // once for the whole generation (decode reuses the rows)

  // Right-padded ids (padding repeats id 0: causal attention keeps it out of real rows).
  Tensor ids_host = Tensor::zeros({N}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    std::copy(prompts[static_cast<size_t>(b)].begin(), prompts[static_cast<size_t>(b)].end(),
              ids_host.data<int32_t>() + b * T);
  const Tensor ids = to_device(ids_host);
  const Tensor cos = to_device(cos_host_.rows(0, T)), sin = to_device(sin_host_.rows(0, T));

  Tensor x = arena_.alloc({N, C_}, dtype_);
  ops::embedding_forward(ctx_, x, ids, embedding_);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const Layer& w = layers_[static_cast<size_t>(l)];
    const Arena::Mark m = arena_.mark();
    Tensor x_mid = arena_.alloc({N, C_}, dtype_);
    {
      const Arena::Mark m2 = arena_.mark();
      Tensor h = arena_.alloc({N, C_}, dtype_), rstd = arena_.alloc({N}, DType::F32);
      Tensor qkv = arena_.alloc({N, (Hq_ + 2 * Hkv_) * D_}, dtype_);
      Tensor q = arena_.alloc({B, T, Hq_, D_}, dtype_), k = arena_.alloc({B, T, Hkv_, D_}, dtype_),
             v = arena_.alloc({B, T, Hkv_, D_}, dtype_);
      Tensor attn = arena_.alloc({B, T, Hq_, D_}, dtype_), lse = arena_.alloc({B, Hq_, T}, DType::F32);
      ops::rmsnorm_forward(ctx_, h, rstd, x, w.input_norm, eps_);
      ops::linear_forward(ctx_, qkv, h, w.qkv);
      ops::qkv_split_rope_forward(ctx_, q, k, v, qkv, cos, sin);
      ops::attention_forward(ctx_, attn, lse, q, k, v, attn_scale_, true);
      // Cache positions 0..T-1 of every sequence (padding rows are overwritten by decode
      // before any query can see them: a query at position p reads keys 0..p only).
      const int64_t row = Hkv_ * D_;
      Tensor kc = cache.k[static_cast<size_t>(l)].view({B * cache.max_len, row});
      Tensor vc = cache.v[static_cast<size_t>(l)].view({B * cache.max_len, row});
      const Tensor kr = k.view({N, row}), vr = v.view({N, row});
      for (int64_t b = 0; b < B; ++b) {  // T <= max_len (checked above)
        Tensor kd = kc.rows(b * cache.max_len, b * cache.max_len + T);
        Tensor vd = vc.rows(b * cache.max_len, b * cache.max_len + T);
        ops::copy_cast(ctx_, kd, kr.rows(b * T, (b + 1) * T));
        ops::copy_cast(ctx_, vd, vr.rows(b * T, (b + 1) * T));
      }
      ops::linear_forward(ctx_, x_mid, attn.view({N, Hq_ * D_}), w.proj);
      ops::add(ctx_, x_mid, x_mid, x);
      arena_.release(m2);
    }
    mlp_block(w, x, x_mid);
    arena_.release(m);
  }
  for (int64_t b = 0; b < B; ++b) cache.lengths[static_cast<size_t>(b)] = static_cast<int64_t>(prompts[static_cast<size_t>(b)].size());

  if (all_logits != nullptr) *all_logits = final_logits(x).view({B, T, V_});
  Tensor last = arena_.alloc({B, C_}, dtype_);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = b * T + static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()) - 1;
    Tensor dst = last.rows(b, b + 1);
    ops::copy_cast(ctx_, dst, x.rows(r, r + 1));
  }
  return final_logits(last);
}

Tensor LlamaDecoder::decode(KvCache& cache, std::span<const int32_t> tokens) {
  const int64_t B = cache.batch;
  PRIMUS_CHECK(static_cast<int64_t>(tokens.size()) == B, "decode: {} tokens for a cache of {} sequences",
               tokens.size(), B);
  PRIMUS_CHECK(cache.num_layers() == config_.num_layers && cache.kv_heads == Hkv_ && cache.head_dim == D_ &&
                   cache.k[0].dtype() == dtype_,
               "decode: the cache was not made for this decoder: use new_cache()");
  Tensor ids_host = Tensor::empty({B}, DType::I32), pos_host = Tensor::empty({B}, DType::I32);
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = cache.lengths[static_cast<size_t>(b)];
    PRIMUS_CHECK(p >= 1, "decode: sequence {} has no prompt in the cache: call prefill() first", b);
    PRIMUS_CHECK(p < cache.max_len, "decode: sequence {} is at position {} but the cache holds {} positions", b, p,
                 cache.max_len);
    const int32_t t = tokens[static_cast<size_t>(b)];
    PRIMUS_CHECK(t >= 0 && t < V_, "decode: token {} of sequence {} is outside the vocabulary [0, {})", t, b, V_);
    ids_host.data<int32_t>()[b] = t;
    pos_host.data<int32_t>()[b] = static_cast<int32_t>(p);
    max_pos = std::max(max_pos, p);
  }
  arena_.reset();
  ensure_rope_rows(std::max(max_pos + 1, cache.max_len));
  // RoPE rows of each sequence's own position: the batch sits in the T dim of the RoPE
  // ops, so row b of these (B, R/2) tables rotates sequence b.
  Tensor cos_host = Tensor::empty({B, half_rot_}, DType::F32), sin_host = Tensor::empty({B, half_rot_}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = pos_host.data<int32_t>()[b];
    std::copy_n(cos_host_.data<float>() + p * half_rot_, half_rot_, cos_host.data<float>() + b * half_rot_);
    std::copy_n(sin_host_.data<float>() + p * half_rot_, half_rot_, sin_host.data<float>() + b * half_rot_);
  }
  const Tensor ids = to_device(ids_host), positions = to_device(pos_host);
  const Tensor cos = to_device(cos_host), sin = to_device(sin_host);

  Tensor x = arena_.alloc({B, C_}, dtype_);
  ops::embedding_forward(ctx_, x, ids, embedding_);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const Layer& w = layers_[static_cast<size_t>(l)];
    const Arena::Mark m = arena_.mark();
    Tensor x_mid = arena_.alloc({B, C_}, dtype_);
    {
      const Arena::Mark m2 = arena_.mark();
      Tensor h = arena_.alloc({B, C_}, dtype_), rstd = arena_.alloc({B}, DType::F32);
      Tensor qkv = arena_.alloc({B, (Hq_ + 2 * Hkv_) * D_}, dtype_);
      Tensor q = arena_.alloc({1, B, Hq_, D_}, dtype_), k = arena_.alloc({1, B, Hkv_, D_}, dtype_),
             v = arena_.alloc({1, B, Hkv_, D_}, dtype_);
      Tensor attn = arena_.alloc({B, Hq_, D_}, dtype_);
      ops::rmsnorm_forward(ctx_, h, rstd, x, w.input_norm, eps_);
      ops::linear_forward(ctx_, qkv, h, w.qkv);
      ops::qkv_split_rope_forward(ctx_, q, k, v, qkv, cos, sin);
      decode_attention(ctx_, attn, q.view({B, Hq_, D_}), k.view({B, Hkv_, D_}), v.view({B, Hkv_, D_}),
                       cache.k[static_cast<size_t>(l)], cache.v[static_cast<size_t>(l)], positions, attn_scale_);
      ops::linear_forward(ctx_, x_mid, attn.view({B, Hq_ * D_}), w.proj);
      ops::add(ctx_, x_mid, x_mid, x);
      arena_.release(m2);
    }
    mlp_block(w, x, x_mid);
    arena_.release(m);
  }
  for (int64_t b = 0; b < B; ++b) ++cache.lengths[static_cast<size_t>(b)];
  return final_logits(x);
}

}  // namespace primus::infer
