#include "safe/model_shapes.h"

#include <algorithm>

#include <fmt/ranges.h>

#include "config/config.h"
#include "core/error.h"
#include "model/decoder_spec.h"

namespace primus::safe {

std::optional<ModelConfig> builtin_model(const std::string& name) {
  // name: (layers, hidden, heads, kv_heads, head_dim, ffn, vocab), untied output layer.
  std::optional<DenseShape> s;
  if (name == "llama-tiny") s = DenseShape{name, 12, 768, 12, 4, 64, 2048, 32000, true};
  if (name == "llama3.2-1B") s = DenseShape{name, 16, 2048, 32, 8, 64, 8192, 128256, true};
  if (name == "llama3.2-3B") s = DenseShape{name, 28, 3072, 24, 8, 128, 8192, 128256, true};
  if (s) return model_of(*s);
  // The MoE peer's shapes (pt_moe_bench.py): (layers, hidden, heads, kv_heads, experts, topk, expert ffn,
  // shared ffn, vocab); RoPE theta 1e6, untied output layer, the switch load-balancing loss (1e-2).
  auto moe = [&](int64_t L, int64_t d, int64_t H, int64_t KV, int64_t E, int64_t k, int64_t f, int64_t shared,
                 int64_t V, bool renorm) {
    ModelConfig m = model_of(DenseShape{name, L, d, H, KV, d / H, f, V, true});
    m.num_experts = E;
    m.moe_router_topk = k;
    m.moe_ffn_hidden_size = f;
    m.moe_shared_expert_intermediate_size = shared;
    // Mixtral renormalises the top-k probabilities (softmax after top-k); DeepSeek-MoE keeps the
    // softmax over all experts (pre-softmax).
    m.moe_router_pre_softmax = !renorm;
    m.moe_aux_loss_coeff = 1e-2;
    m.rotary_base = 1e6;
    return m;
  };
  if (name == "mixtral-mini") return moe(8, 2048, 32, 8, 8, 2, 5632, 0, 32000, true);
  if (name == "deepseek-moe-mini") return moe(4, 2048, 16, 16, 64, 6, 1408, 2816, 102400, false);
  return std::nullopt;
}

std::vector<std::string> builtin_shape_names() {
  return {"llama-tiny", "llama3.2-1B", "llama3.2-3B", "mixtral-mini", "deepseek-moe-mini"};
}

ModelConfig resolve_model(const std::string& spec) {
  if (auto b = builtin_model(spec)) return *b;
  try {
    return config::load_model(spec);
  } catch (const Error& e) {
    fail("model '{}' is neither a built-in shape ({}) nor a loadable zoo model or model file: {}", spec,
         fmt::join(builtin_shape_names(), ", "), e.what());
  }
}

ModelConfig model_of(const DenseShape& s) {
  ModelConfig m;
  m.name = s.name;
  m.num_layers = s.layers;
  m.hidden_size = s.hidden;
  m.num_attention_heads = s.heads;
  m.num_query_groups = s.kv_heads;
  m.kv_channels = s.head_dim;
  m.ffn_hidden_size = s.ffn;
  m.padded_vocab_size = m.vocab_size = s.vocab;
  m.untie_embeddings_and_output_weights = s.untied_head;
  m.normalization = "RMSNorm";
  m.swiglu = true;
  m.position_embedding_type = "rope";
  m.add_bias_linear = false;
  return m;
}

DenseShape shape_of(const ModelConfig& m) {
  return DenseShape{m.name,        m.num_layers,         m.hidden_size,     m.num_attention_heads, m.query_groups(),
                    m.head_dim(), m.ffn_hidden_size, m.padded_vocab_size, m.untie_embeddings_and_output_weights};
}

std::optional<DenseShape> builtin_shape(const std::string& name) {
  if (auto m = builtin_model(name)) return shape_of(*m);
  return std::nullopt;
}

DenseShape resolve_shape(const std::string& spec) { return shape_of(resolve_model(spec)); }

DenseShape shape_from_flags(const ShapeFlags& f, const std::string& default_model) {
  const bool explicit_sizes = f.layers || f.hidden || f.heads;
  DenseShape s;
  if (!f.model.empty()) s = resolve_shape(f.model);
  else if (!explicit_sizes) s = resolve_shape(default_model);
  else s.name = "custom";
  if (f.layers) s.layers = f.layers;
  if (f.hidden) s.hidden = f.hidden;
  if (f.heads) s.heads = f.heads;
  if (f.kv_heads) s.kv_heads = f.kv_heads;
  if (f.ffn) s.ffn = f.ffn;
  if (f.vocab) s.vocab = f.vocab;
  if (f.head_dim) s.head_dim = f.head_dim;
  if (s.kv_heads == 0) s.kv_heads = s.heads;
  if (s.head_dim == 0 && s.heads > 0) s.head_dim = s.hidden / s.heads;
  if (s.ffn == 0) s.ffn = 4 * s.hidden;
  if (s.vocab == 0) s.vocab = 32000;
  PRIMUS_CHECK(s.layers > 0 && s.hidden > 0 && s.heads > 0,
               "model shape: need --model-config (or --shape) or all of --layers, --hidden, --heads; got layers={} "
               "hidden={} heads={}",
               s.layers, s.hidden, s.heads);
  PRIMUS_CHECK(s.heads % s.kv_heads == 0, "model shape: {} heads is not a multiple of {} kv heads", s.heads,
               s.kv_heads);
  return s;
}

namespace {

// The benchmark label of a layer linear: qkv, attn_out, gate_up, down (shared experts: "shared ...").
std::string gemm_label(const std::string& local) {
  std::string l = local;
  for (const char* drop : {"self_attention.", "mlp.", ".weight"}) {
    const size_t at = l.find(drop);
    if (at != std::string::npos) l.erase(at, std::string(drop).size());
  }
  if (l.rfind("shared_experts.", 0) == 0) l = "shared " + l.substr(15);
  if (l.rfind("experts.", 0) == 0) l = "experts " + l.substr(8);
  if (l == "linear_qkv") return "qkv";
  if (l == "linear_proj") return "attn_out";
  for (const char* from : {"linear_fc1", "linear_fc2"}) {
    const size_t at = l.find(from);
    if (at != std::string::npos) l.replace(at, 10, std::string(from) == "linear_fc1" ? "gate_up" : "down");
  }
  return l;
}

}  // namespace

std::vector<GemmProblem> training_gemms(const ModelConfig& m, int64_t tokens, int64_t logits_chunk_rows,
                                        DType layer_grad) {
  PRIMUS_CHECK(tokens > 0 && logits_chunk_rows > 0, "training_gemms: tokens {} and logits_chunk_rows {} must be > 0",
               tokens, logits_chunk_rows);
  std::vector<GemmProblem> out;
  // One entry per distinct problem: the layers that run the same GEMM add to its count.
  auto add = [&](GemmProblem p) {
    for (GemmProblem& q : out)
      if (q.label == p.label && q.m == p.m && q.n == p.n && q.k == p.k && q.ta == p.ta && q.tb == p.tb &&
          q.out == p.out && q.accumulate == p.accumulate) {
        q.count += p.count;
        return;
      }
    out.push_back(std::move(p));
  };
  auto fwd_dgrad = [&](const std::string& name, int64_t n_out, int64_t n_in, int64_t rows, int64_t count,
                       bool residual_in_epilogue) {
    add({name + " fwd", rows, n_out, n_in, false, true, DType::BF16, DType::BF16, residual_in_epilogue, count});
    add({name + " dgrad", rows, n_in, n_out, false, false, DType::BF16, DType::BF16, false, count});
  };
  auto wgrad = [&](const std::string& label, int64_t n_out, int64_t n_in, int64_t rows, int64_t count, bool accumulate,
                   DType out = DType::F32) {
    add({label, n_out, n_in, rows, true, false, DType::BF16, out, accumulate, count});
  };
  // Decoder layers: the dense projections of every layer, as decoder_spec lists them. The weight
  // gradients are written (the first micro-batch's keys); the projections into the residual
  // stream add it in the GEMM's epilogue.
  for (const LayerSpec& layer : decoder_layers(m)) {
    for (const ParamSpec& p : layer_params(m, layer)) {
      const std::string name = gemm_label(p.name.substr(layer.prefix.size()));
      if (p.role == ParamRole::Linear) {
        fwd_dgrad(name, p.shape[0], p.shape[1], tokens, 1, p.init == ParamInit::ScaledNormal);
        wgrad(name + " wgrad", p.shape[0], p.shape[1], tokens, 1, false, layer_grad);
      } else if (p.role == ParamRole::RoutedExperts) {
        // One GEMM per expert at the even share of the routed rows (tokens x top-k / E); the
        // real shares vary with the routing.
        const int64_t E = p.shape[0], rows = std::max<int64_t>(1, tokens * m.moe_router_topk / E);
        fwd_dgrad(name, p.shape[1], p.shape[2], rows, E, false);
        wgrad(name + " wgrad", p.shape[1], p.shape[2], rows, E, false, layer_grad);
      }
    }
  }
  // The output layer in chunks of `chunk` rows (a shorter last one when they do not divide):
  // an untied head's weight gradient is written by the first chunk and accumulated after it;
  // a tied one always adds into the embedding's gradient.
  const int64_t V = m.padded_vocab_size, C = m.hidden_size;
  const int64_t chunk = std::min(tokens, logits_chunk_rows);
  const int64_t full = tokens / chunk, rest = tokens % chunk;
  const int64_t written = m.untie_embeddings_and_output_weights ? 1 : 0;
  fwd_dgrad("lm_head", V, C, chunk, full, false);
  if (written > 0) wgrad("lm_head wgrad (write)", V, C, chunk, written, false);
  if (full > written) wgrad("lm_head wgrad (accumulate)", V, C, chunk, full - written, true);
  if (rest > 0) {
    fwd_dgrad("lm_head", V, C, rest, 1, false);
    wgrad("lm_head wgrad (accumulate)", V, C, rest, 1, true);
  }
  return out;
}

}  // namespace primus::safe
