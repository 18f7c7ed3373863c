// Parameter, FLOP and memory accounting. Shapes follow Megatron-core's modules:
//   attention  q (h x a*d), k, v (h x g*d), o (a*d x h)                    [g = query groups]
//   MLA        q_down (h x q_lora), q_up (q_lora x a*(dn+dr)) or q (h x a*(dn+dr)),
//              kv_down (h x (kv_lora+dr)), kv_up (kv_lora x a*(dn+dv)), o (a*dv x h)
//   MLP        SwiGLU: fc1 (h x 2f) + fc2 (f x h); GeLU: fc1 (h x f) + fc2 (f x h)
//   MoE        router (h x E), E routed experts of inner size fe, shared experts of total size fs
//   MTP        enorm, hnorm (h each), eh_proj (2h x h), one transformer layer, final norm (h)
#include "model/model_stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "parallel/pipeline_schedule.h"

namespace primus {

namespace {

int64_t norm_params(const ModelConfig& m, int64_t dim) { return m.normalization == "LayerNorm" ? 2 * dim : dim; }

int64_t mlp_params(const ModelConfig& m, int64_t inner) {
  const int64_t h = m.hidden_size;
  const int64_t weights = (m.swiglu ? 3 : 2) * h * inner;
  const int64_t biases = m.add_bias_linear ? (m.swiglu ? 2 * inner : inner) + h : 0;
  return weights + biases;
}

int64_t mlp_matmul(const ModelConfig& m, int64_t inner) { return (m.swiglu ? 3 : 2) * m.hidden_size * inner; }

struct AttentionShape {
  int64_t weights = 0;     // matrices (what 6N counts)
  int64_t all = 0;         // weights + biases + norms
  int64_t replicated = 0;  // not split by TP
};

AttentionShape attention_shape(const ModelConfig& m) {
  const int64_t h = m.hidden_size, a = m.num_attention_heads;
  const bool bias = m.add_bias_linear;
  AttentionShape s;
  if (m.multi_latent_attention) {
    const int64_t dq = m.qk_head_dim + m.qk_pos_emb_head_dim;  // query/key head: non-rotary + rotary
    const int64_t kv_down_out = m.kv_lora_rank + m.qk_pos_emb_head_dim;
    int64_t q = 0, q_replicated = 0, q_bias = 0;
    if (m.q_lora_rank > 0) {
      q_replicated = h * m.q_lora_rank;
      q = q_replicated + m.q_lora_rank * a * dq;
      q_bias = bias ? m.q_lora_rank + a * dq : 0;
    } else {
      q = h * a * dq;
      q_bias = bias ? a * dq : 0;
    }
    const int64_t kv_down = h * kv_down_out;
    const int64_t kv_up = m.kv_lora_rank * a * (m.qk_head_dim + m.v_head_dim);
    const int64_t o = a * m.v_head_dim * h;
    s.weights = q + kv_down + kv_up + o;
    const int64_t biases = q_bias + (bias ? kv_down_out + a * (m.qk_head_dim + m.v_head_dim) + h : 0);
    const int64_t latent_norms =
        m.qk_layernorm ? norm_params(m, m.kv_lora_rank) + (m.q_lora_rank > 0 ? norm_params(m, m.q_lora_rank) : 0) : 0;
    s.all = s.weights + biases + latent_norms;
    s.replicated = q_replicated + kv_down + latent_norms;
    return s;
  }
  const int64_t d = m.head_dim(), g = m.num_query_groups > 0 ? m.num_query_groups : a;
  const int64_t qkv_out = (a + 2 * g) * d;
  s.weights = h * qkv_out + a * d * h;
  const int64_t biases = (bias || m.add_qkv_bias ? qkv_out : 0) + (bias ? h : 0);
  const int64_t qk_norms = m.qk_layernorm ? 2 * norm_params(m, d) : 0;
  s.all = s.weights + biases + qk_norms;
  s.replicated = qk_norms;
  return s;
}

int64_t mtp_module_extras(const ModelConfig& m) {
  // enorm + hnorm + eh_proj (2h -> h) + the module's final norm
  const int64_t h = m.hidden_size;
  return 3 * norm_params(m, h) + 2 * h * h + (m.add_bias_linear ? h : 0);
}

}  // namespace

LayerParams layer_params(const ModelConfig& m, int64_t layer) {
  LayerParams p;
  const AttentionShape att = attention_shape(m);
  p.attention = att.all;
  p.attention_replicated = att.replicated;
  p.norms = 2 * norm_params(m, m.hidden_size);
  if (m.is_moe_layer(layer)) {
    p.expert = mlp_params(m, m.moe_ffn_hidden_size);
    p.experts = m.num_experts * p.expert;
    p.shared_experts = m.moe_shared_expert_intermediate_size > 0 ? mlp_params(m, m.moe_shared_expert_intermediate_size) : 0;
    p.router = m.num_experts * m.hidden_size;
  } else {
    p.mlp = mlp_params(m, m.ffn_hidden_size);
  }
  return p;
}

ParamCounts count_parameters(const ModelConfig& m) {
  ParamCounts c;
  const int64_t h = m.hidden_size, V = m.padded_vocab_size;
  c.embedding = V * h + (m.position_embedding_type == "learned_absolute" ? m.max_position_embeddings * h : 0);
  c.output_layer = m.untie_embeddings_and_output_weights ? V * h : 0;
  c.final_norm = norm_params(m, h);
  const int64_t attention_matmul = attention_shape(m).weights;

  int64_t skipped_experts = 0;
  for (int64_t l = 0; l < m.num_layers; ++l) {
    const LayerParams p = layer_params(m, l);
    c.attention += p.attention;
    c.dense_mlp += p.mlp;
    c.moe_experts += p.experts;
    c.moe_shared_experts += p.shared_experts;
    c.moe_router += p.router;
    c.layer_norms += p.norms;
    skipped_experts += p.experts - std::min(m.moe_router_topk, m.num_experts) * p.expert;
    c.matmul += attention_matmul + p.router;
    if (m.is_moe_layer(l)) {
      c.matmul += m.moe_router_topk * mlp_matmul(m, m.moe_ffn_hidden_size);
      if (m.moe_shared_expert_intermediate_size > 0) c.matmul += mlp_matmul(m, m.moe_shared_expert_intermediate_size);
    } else {
      c.matmul += mlp_matmul(m, m.ffn_hidden_size);
    }
  }
  c.matmul += V * h;  // the output layer (its own weight or the tied embedding)
  c.total = c.embedding + c.output_layer + c.final_norm + c.attention + c.dense_mlp + c.moe_experts +
            c.moe_shared_experts + c.moe_router + c.layer_norms;
  c.activated = c.total - skipped_experts;

  for (int64_t k = 0; k < m.mtp_num_layers; ++k) {
    const int64_t l = m.num_layers + k;
    c.mtp += mtp_module_extras(m) + layer_params(m, l).total();
    c.mtp_matmul += 2 * h * h + attention_matmul + layer_params(m, l).router + V * h;
    if (m.is_moe_layer(l)) {
      c.mtp_matmul += m.moe_router_topk * mlp_matmul(m, m.moe_ffn_hidden_size);
      if (m.moe_shared_expert_intermediate_size > 0) c.mtp_matmul += mlp_matmul(m, m.moe_shared_expert_intermediate_size);
    } else {
      c.mtp_matmul += mlp_matmul(m, m.ffn_hidden_size);
    }
  }
  return c;
}

FlopsPerToken training_flops_per_token(const ModelConfig& m, int64_t seq_length) {
  const ParamCounts c = count_parameters(m);
  FlopsPerToken f;
  f.matmul = 6.0 * static_cast<double>(c.matmul + c.mtp_matmul);
  const double d_qk = m.multi_latent_attention ? static_cast<double>(m.qk_head_dim + m.qk_pos_emb_head_dim)
                                               : static_cast<double>(m.head_dim());
  const double d_v = m.multi_latent_attention ? static_cast<double>(m.v_head_dim) : static_cast<double>(m.head_dim());
  const double layers = static_cast<double>(m.num_layers + m.mtp_num_layers);
  f.attention = 6.0 * layers * static_cast<double>(seq_length) * static_cast<double>(m.num_attention_heads) * (d_qk + d_v);
  return f;
}

namespace {

// Elements per token saved for backward by one layer, split by how they shard:
// `seq` is divided by TP only with sequence parallelism (norm inputs, linear inputs),
// `tp` always by TP (heads, MLP columns), `full` never (MLA latents, router scores).
struct ActivationElems {
  double seq = 0, tp = 0, full = 0;
  double per_gpu(int64_t tp_size, bool sp) const {
    return seq / (sp ? static_cast<double>(tp_size) : 1.0) + tp / static_cast<double>(tp_size) + full;
  }
};

ActivationElems layer_activations(const ModelConfig& m, int64_t layer, int64_t etp, int64_t tp) {
  const double h = static_cast<double>(m.hidden_size), a = static_cast<double>(m.num_attention_heads);
  ActivationElems e;
  // attention block: norm input, projection input
  e.seq += 2 * h;
  if (m.multi_latent_attention) {
    const double dq = static_cast<double>(m.qk_head_dim + m.qk_pos_emb_head_dim);
    const double dv = static_cast<double>(m.v_head_dim);
    e.tp += a * dq * 2 + a * dv * 2;  // q, k, v, attention output
    e.full += (m.q_lora_rank > 0 ? 2.0 * static_cast<double>(m.q_lora_rank) : 0.0) +
              2.0 * static_cast<double>(m.kv_lora_rank) + static_cast<double>(m.qk_pos_emb_head_dim);
  } else {
    const double d = static_cast<double>(m.head_dim());
    const double g = static_cast<double>(m.num_query_groups > 0 ? m.num_query_groups : m.num_attention_heads);
    e.tp += (a + 2 * g) * d + a * d;  // q, k, v after RoPE; attention output (= o-projection input)
  }
  e.tp += 2 * a;  // flash-attention log-sum-exp, fp32 per head
  if (m.hidden_dropout > 0) e.seq += h;  // two 1-byte dropout masks
  // MLP block: norm input, MLP input
  e.seq += 2 * h;
  auto mlp = [&](double inner, double split) { return (m.swiglu ? 3.0 : 2.0) * inner / split; };
  if (m.is_moe_layer(layer)) {
    const double k = static_cast<double>(m.moe_router_topk);
    e.full += 2.0 * static_cast<double>(m.num_experts);  // fp32 router scores
    e.seq += k * 2 * h;                                  // permuted expert inputs and expert outputs
    e.full += k * mlp(static_cast<double>(m.moe_ffn_hidden_size), static_cast<double>(etp));
    if (m.moe_shared_expert_intermediate_size > 0)
      e.full += mlp(static_cast<double>(m.moe_shared_expert_intermediate_size), static_cast<double>(tp));
  } else {
    e.tp += mlp(static_cast<double>(m.ffn_hidden_size), 1.0);
  }
  return e;
}

}  // namespace

std::vector<int64_t> stage_layer_counts(int64_t num_layers, const ParallelLayout& L) {
  const int pp = static_cast<int>(std::max<int64_t>(1, L.pp));
  const parallel::UnevenSplit split{L.first_stage_layers, L.last_stage_layers};
  if (pp == 1) return {num_layers};  // first/last counts without a pipeline: config validation reports them
  return parallel::pipeline_stage_layers(num_layers, pp, split);
}

MemoryEstimate estimate_memory(const ModelConfig& m, const ParallelLayout& L, const TrainingSetup& t) {
  const int64_t tp = std::max<int64_t>(1, L.tp), pp = std::max<int64_t>(1, L.pp), cp = std::max<int64_t>(1, L.cp);
  const int64_t dp = std::max<int64_t>(1, L.dp), ep = std::max<int64_t>(1, L.ep);
  const int64_t etp = L.etp > 0 ? L.etp : tp;
  const std::vector<int64_t> stage_layers = stage_layer_counts(m.num_layers, L);
  const int64_t h = m.hidden_size, V = m.padded_vocab_size;
  const double act_bytes = t.precision == Precision::kFp32 ? 4.0 : 2.0;
  const double tokens = static_cast<double>(t.seq_length * t.micro_batch_size) / static_cast<double>(cp);
  const int64_t microbatches = std::max<int64_t>(1, t.global_batch_size / std::max<int64_t>(1, t.micro_batch_size * dp));

  MemoryEstimate best;
  // The first stage (embedding, most micro-batches in flight), a middle one, the last (output layer, MTP).
  for (const int64_t stage : {int64_t{0}, std::min<int64_t>(1, pp - 1), pp - 1}) {
    MemoryEstimate e;
    e.stage = stage;
    // ---- parameters held by one GPU of this stage --------------------------------
    int64_t dense = 0, expert = 0;
    int64_t first = 0;
    for (int64_t s = 0; s < stage; ++s) first += stage_layers[static_cast<size_t>(s)];
    const int64_t layers_per_stage = stage_layers[static_cast<size_t>(stage)];
    for (int64_t l = first; l < first + layers_per_stage; ++l) {
      const LayerParams p = layer_params(m, l);
      dense += (p.attention - p.attention_replicated) / tp + p.attention_replicated + p.mlp / tp +
               p.shared_experts / tp + p.router + p.norms;
      expert += p.experts / (ep * etp);
    }
    if (stage == 0) dense += V * h / tp + (m.position_embedding_type == "learned_absolute" ? m.max_position_embeddings * h : 0);
    if (stage == pp - 1) {
      dense += norm_params(m, h);
      // The output layer; with a tied embedding and pp > 1 the last stage keeps its own copy.
      if (m.untie_embeddings_and_output_weights || pp > 1) dense += V * h / tp;
      for (int64_t k = 0; k < m.mtp_num_layers; ++k) {
        const LayerParams p = layer_params(m, m.num_layers + k);
        dense += mtp_module_extras(m) + (p.attention - p.attention_replicated) / tp + p.attention_replicated +
                 p.mlp / tp + p.shared_experts / tp + p.router + p.norms;
        expert += p.experts / (ep * etp);
      }
    }
    e.params = dense + expert;
    e.expert_params = expert;

    // ---- weights, gradients, optimizer states ------------------------------------
    const bool mixed = t.precision != Precision::kFp32;
    const double weight_b = mixed ? 2.0 : 4.0, grad_b = 4.0, optim_b = mixed ? 12.0 : 8.0;
    const double dense_shards = t.distributed_optimizer ? static_cast<double>(dp * cp) : 1.0;
    const double expert_shards =
        t.distributed_optimizer ? std::max(1.0, static_cast<double>(dp * cp * tp) / static_cast<double>(ep * etp)) : 1.0;
    e.weight_bytes = weight_b * static_cast<double>(e.params);
    e.grad_bytes = grad_b * static_cast<double>(e.params);
    e.optimizer_bytes = optim_b * (static_cast<double>(dense) / dense_shards + static_cast<double>(expert) / expert_shards);

    // ---- activations -------------------------------------------------------------
    // A 1F1B pipeline keeps (pp - stage) micro-batches in flight on a stage; the
    // interleaved schedule adds (pp-1)/(pp*v) of a stage's worth more.
    double in_flight = static_cast<double>(std::min<int64_t>(pp - stage, microbatches));
    if (L.virtual_stages > 1 && pp > 1)
      in_flight *= 1.0 + static_cast<double>(pp - 1) / static_cast<double>(pp * L.virtual_stages);
    e.microbatches_in_flight = static_cast<int64_t>(std::ceil(in_flight));
    const double layer_input = static_cast<double>(h) / (L.sequence_parallel ? static_cast<double>(tp) : 1.0);
    double stored = 0, working = 0;  // elements per token
    for (int64_t l = first; l < first + layers_per_stage; ++l) {
      const double full = layer_activations(m, l, etp, tp).per_gpu(tp, L.sequence_parallel);
      const int64_t pos = l - first;
      switch (t.recompute) {
        case Recompute::kNone:
        case Recompute::kSelective:  // flash attention stores no scores: nothing left to recompute
          stored += full;
          break;
        case Recompute::kFullUniform:
          // Each chunk of recompute_num_layers keeps its input; one chunk is rebuilt at a time.
          if (pos % std::max<int64_t>(1, t.recompute_num_layers) == 0) stored += layer_input;
          if (pos < t.recompute_num_layers) working += full;
          break;
        case Recompute::kFullBlock:
          if (pos < t.recompute_num_layers) {
            stored += layer_input;
            working = std::max(working, full);
          } else {
            stored += full;
          }
          break;
      }
    }
    double extra = 0;  // bytes per token outside the layers
    if (stage == 0) extra += layer_input * act_bytes;  // embedding output
    if (stage == pp - 1) {
      extra += 2 * layer_input * act_bytes;                                       // final norm, output-layer input
      extra += static_cast<double>(V) / static_cast<double>(tp) * (act_bytes + (t.cross_entropy_fusion ? 0.0 : 4.0));
    }
    e.activation_bytes = tokens * (in_flight * (stored * act_bytes + extra) + working * act_bytes);
    if (e.total_bytes() > best.total_bytes()) best = e;
  }
  return best;
}

std::string format_count(int64_t n) {
  const double v = static_cast<double>(n);
  const char* suffix = "";
  double scaled = v;
  if (v >= 1e12) {
    scaled = v / 1e12;
    suffix = "T";
  } else if (v >= 1e9) {
    scaled = v / 1e9;
    suffix = "B";
  } else if (v >= 1e6) {
    scaled = v / 1e6;
    suffix = "M";
  } else if (v >= 1e3) {
    scaled = v / 1e3;
    suffix = "K";
  }
  const int decimals = scaled >= 100 ? 0 : scaled >= 10 ? 1 : 2;
  return fmt::format("{:.{}f}{}", scaled, decimals, suffix);
}

}  // namespace primus
