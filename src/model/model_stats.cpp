// Parameter, FLOP and memory accounting, from decoder_spec's parameter table (the tensors
// the model holds, their roles and splits): no shape is spelled out here.
#include "model/model_stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/decoder_spec.h"
#include "model/logits_chunk.h"
#include "parallel/pipeline_schedule.h"

namespace primus {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// The tensors of one layer's table by part (weights and biases; buffers are not parameters).
LayerParams sum_layer(const ModelConfig& m, const std::vector<ParamSpec>& table, const std::string& prefix) {
  LayerParams p;
  for (const ParamSpec& t : table) {
    if (!t.trainable() || !starts_with(t.name, prefix)) continue;
    const std::string local = t.name.substr(prefix.size());
    const int64_t n = t.numel();
    if (!t.projection()) p.unprojected += n;
    if (starts_with(local, "self_attention.")) {
      p.attention += n;
      if (t.split == ParamSplit::Replicated) p.attention_replicated += n;
    } else if (starts_with(local, "input_layernorm.") || starts_with(local, "pre_mlp_layernorm.")) {
      p.norms += n;
    } else if (starts_with(local, "mlp.router.")) {
      p.router += n;
    } else if (starts_with(local, "mlp.experts.")) {
      p.experts += n;
    } else if (starts_with(local, "mlp.shared_experts.")) {
      p.shared_experts += n;
    } else if (starts_with(local, "mlp.")) {
      p.mlp += n;
    }
  }
  if (m.num_experts > 0) p.expert = p.experts / m.num_experts;
  return p;
}

// Elements of the matrices one token multiplies by in `table` (the N of 6N): dense
// projections, the router, its top-k routed experts.
int64_t matmul_params(const ModelConfig& m, const std::vector<ParamSpec>& table) {
  int64_t n = 0;
  for (const ParamSpec& t : table) {
    if (t.role == ParamRole::Linear || t.role == ParamRole::Router || t.role == ParamRole::OutputLayer) n += t.numel();
    if (t.role == ParamRole::RoutedExperts) n += t.numel() / m.num_experts * std::min(m.moe_router_topk, m.num_experts);
  }
  return n;
}

// An MTP module's own tensors outside its transformer layer (enorm, hnorm, eh_proj, final norm),
// and of those the ones that are not projections (the norms: their gradients stay fp32 under
// grad_reduce_in_bf16).
struct MtpExtras {
  int64_t all = 0, unprojected = 0;
};
MtpExtras mtp_module_extras(const ModelConfig& m) {
  MtpExtras n;
  if (m.mtp_num_layers == 0) return n;
  const std::string layer_prefix = mtp_layer(m, 0).prefix;
  for (const ParamSpec& t : mtp_params(m, 0))
    if (t.trainable() && !starts_with(t.name, layer_prefix)) {
      n.all += t.numel();
      if (!t.projection()) n.unprojected += t.numel();
    }
  return n;
}

int64_t norm_params(const ModelConfig& m, int64_t dim) { return m.normalization == "LayerNorm" ? 2 * dim : dim; }

}  // namespace

LayerParams layer_params(const ModelConfig& m, int64_t layer) {
  const LayerSpec spec = layer < m.num_layers ? decoder_layer(m, layer) : mtp_layer(m, layer - m.num_layers);
  return sum_layer(m, primus::layer_params(m, spec), spec.prefix);
}

ParamCounts count_parameters(const ModelConfig& m) {
  ParamCounts c;
  const int64_t h = m.hidden_size, V = m.padded_vocab_size;
  for (const ParamSpec& t : embedding_params(m)) c.embedding += t.numel();
  for (const ParamSpec& t : head_params(m)) {
    if (t.role == ParamRole::OutputLayer) c.output_layer += t.numel();
    else c.final_norm += t.numel();
  }
  int64_t skipped_experts = 0;
  for (const LayerSpec& spec : decoder_layers(m)) {
    const std::vector<ParamSpec> table = primus::layer_params(m, spec);
    const LayerParams p = sum_layer(m, table, spec.prefix);
    c.attention += p.attention;
    c.dense_mlp += p.mlp;
    c.moe_experts += p.experts;
    c.moe_shared_experts += p.shared_experts;
    c.moe_router += p.router;
    c.layer_norms += p.norms;
    skipped_experts += p.experts - std::min(m.moe_router_topk, m.num_experts) * p.expert;
    c.matmul += matmul_params(m, table);
  }
  c.matmul += V * h;  // the output layer (its own weight or the tied embedding)
  c.total = c.embedding + c.output_layer + c.final_norm + c.attention + c.dense_mlp + c.moe_experts +
            c.moe_shared_experts + c.moe_router + c.layer_norms;
  c.activated = c.total - skipped_experts;

  for (int64_t k = 0; k < m.mtp_num_layers; ++k) {
    const std::vector<ParamSpec> table = mtp_params(m, k);
    c.mtp += count_table_parameters(table);
    c.mtp_matmul += matmul_params(m, table) + V * h;  // + the shared output layer
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
    int64_t unprojected = 0;  // embeddings, output layer, norms, routers: fp32 gradients always
    int64_t fp8_linear = 0;   // parameters of the projections that run in FP8
    int64_t first = 0;
    for (int64_t s = 0; s < stage; ++s) first += stage_layers[static_cast<size_t>(s)];
    const int64_t layers_per_stage = stage_layers[static_cast<size_t>(stage)];
    for (int64_t l = first; l < first + layers_per_stage; ++l) {
      const LayerParams p = layer_params(m, l);
      dense += (p.attention - p.attention_replicated) / tp + p.attention_replicated + p.mlp / tp +
               p.shared_experts / tp + p.router + p.norms;
      unprojected += p.unprojected;
      expert += p.experts / (ep * etp);
      fp8_linear += (p.attention - p.attention_replicated) / tp + p.mlp / tp + p.shared_experts / tp;
    }
    // The embeddings, the final norm and the output layer: no projections among them.
    int64_t ends = 0;
    if (stage == 0) ends += V * h / tp + (m.position_embedding_type == "learned_absolute" ? m.max_position_embeddings * h : 0);
    if (stage == pp - 1) {
      ends += norm_params(m, h);
      if (m.untie_embeddings_and_output_weights) ends += V * h / tp;  // the output layer
      // With pp > 1 the last stage keeps its own copy of the embedding when it reads it (tied
      // output layer, or MTP's shifted tokens).
      if (pp > 1 && m.last_stage_reads_embedding()) ends += V * h / tp;
      const MtpExtras extras = mtp_module_extras(m);
      for (int64_t k = 0; k < m.mtp_num_layers; ++k) {
        const LayerParams p = layer_params(m, m.num_layers + k);
        dense += extras.all + (p.attention - p.attention_replicated) / tp + p.attention_replicated + p.mlp / tp +
                 p.shared_experts / tp + p.router + p.norms;
        unprojected += extras.unprojected + p.unprojected;
        expert += p.experts / (ep * etp);
        fp8_linear += (p.attention - p.attention_replicated) / tp + p.mlp / tp + p.shared_experts / tp;
      }
    }
    dense += ends;
    unprojected += ends;
    e.params = dense + expert;
    e.expert_params = expert;

    // ---- weights, gradients, optimizer states ------------------------------------
    const bool mixed = t.precision != Precision::kFp32;
    const double weight_b = mixed ? 2.0 : 4.0, grad_b = 4.0;
    const double master_b = !mixed ? 0.0 : t.master_remainders && t.precision == Precision::kBf16 ? 2.0 : 4.0;
    const double optim_b = master_b + (t.exp_avg_bf16 ? 2.0 : 4.0) + (t.exp_avg_sq_bf16 ? 2.0 : 4.0);
    const double dense_shards = t.distributed_optimizer ? static_cast<double>(dp * cp) : 1.0;
    const double expert_shards =
        t.distributed_optimizer ? std::max(1.0, static_cast<double>(dp * cp * tp) / static_cast<double>(ep * etp)) : 1.0;
    e.weight_bytes = weight_b * static_cast<double>(e.params) + (t.fp8 ? 2.0 * static_cast<double>(fp8_linear) : 0.0);
    e.grad_bytes = grad_b * static_cast<double>(e.params) * t.trainable_fraction;
    if (t.grad_reduce_in_bf16 && mixed && t.trainable_fraction == 1.0)
      e.grad_bytes -= 2.0 * static_cast<double>(e.params - unprojected);
    e.optimizer_bytes = optim_b * t.trainable_fraction *
                        (static_cast<double>(dense) / dense_shards + static_cast<double>(expert) / expert_shards);

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
    double logits = 0;  // bytes of one chunk of logits (made after the last layer, freed before the backward's)
    if (stage == pp - 1) {
      extra += 2 * layer_input * act_bytes;  // final norm, output-layer input
      const int64_t V_local = (V + tp - 1) / tp;
      const double rows = std::min(tokens, static_cast<double>(logits_chunk_rows(
                                               V_local, static_cast<int64_t>(act_bytes), t.logits_chunk_mb)));
      logits = rows * static_cast<double>(V_local) * (act_bytes + (t.cross_entropy_fusion ? 0.0 : 4.0));
    }
    e.activation_bytes = tokens * (in_flight * (stored * act_bytes + extra) + working * act_bytes) + logits;
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
