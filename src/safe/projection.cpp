#include "safe/projection.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "core/error.h"
#include "safe/outliers.h"

namespace primus::safe {

namespace {

double bw(const Bandwidths& b, bool intra, CollectiveOp op) {
  const auto& table = intra ? b.intra : b.inter;
  const auto it = table.find(op);
  PRIMUS_CHECK(it != table.end() && it->second > 0,
               "projection: no {} {} bus bandwidth; give a preflight report with that op (--preflight) or "
               "--{}-busbw", intra ? "intra-node" : "inter-node", collective_op_name(op), intra ? "intra" : "inter");
  return it->second * 1e9;  // bytes/s
}

int64_t moe_layers(const ModelConfig& m) {
  int64_t n = 0;
  for (int64_t l = 0; l < m.num_layers; ++l) n += layer_params(m, l).experts > 0;
  return n;
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t k = 1; k <= n; ++k)
    if (n % k == 0) d.push_back(k);
  return d;
}

}  // namespace

Bandwidths bandwidths_from_preflight(const nlohmann::json& report, const Bandwidths& fallback) {
  Bandwidths b = fallback;
  std::map<CollectiveOp, std::vector<double>> intra, inter, world;
  for (const auto& g : report.at("groups")) {
    int64_t largest = 0;
    for (const auto& row : g.at("rows")) largest = std::max(largest, row.at("bytes").get<int64_t>());
    const std::string scope = g.at("scope").get<std::string>();
    auto& dst = scope == "intra-node" ? intra : scope == "inter-node" ? inter : world;
    for (const auto& row : g.at("rows"))
      if (row.at("bytes").get<int64_t>() == largest)
        dst[parse_collective_op(row.at("op").get<std::string>())].push_back(row.at("busbw_gbps").get<double>());
  }
  for (const auto& [op, v] : intra) b.intra[op] = median_of(v);
  for (const auto& [op, v] : (inter.empty() ? world : inter)) b.inter[op] = median_of(v);
  return b;
}

StepTime project_step_time(const ProjectionInput& in, const ParallelLayout& l, const MemoryEstimate& mem) {
  const ModelConfig& m = in.model;
  const TrainingSetup& t = in.setup;
  const int64_t G = in.gpus_per_node, W = in.nodes * in.gpus_per_node;
  const double micro = static_cast<double>(t.global_batch_size) / static_cast<double>(t.micro_batch_size * l.dp);
  const int64_t cp = std::max<int64_t>(1, l.cp);
  const double tokens = static_cast<double>(t.micro_batch_size * t.seq_length) / static_cast<double>(cp);  // per rank
  const double act = tokens * static_cast<double>(m.hidden_size) * 2.0;
  StepTime s;
  const StepTableEntry* measured = in.table ? step_table_entry(*in.table, l.tp) : nullptr;
  if (measured != nullptr) {
    s.measured = true;
    s.compute = table_compute_seconds(*measured, m, t, l, mem.params);
  } else {
    PRIMUS_CHECK(in.tflops > 0, "projection: no compute for tp {}: the step table has no entry for it and no --tflops "
                 "is given", l.tp);
    const double flops = training_flops_per_token(m, t.seq_length).total() *
                         static_cast<double>(t.global_batch_size * t.seq_length) / static_cast<double>(W);
    s.compute = flops / (in.tflops * 1e12);
    if (t.recompute == Recompute::kFullUniform || t.recompute == Recompute::kFullBlock) s.compute *= 4.0 / 3.0;
  }
  s.bubble = s.compute * static_cast<double>(l.pp - 1) / (micro * static_cast<double>(std::max<int64_t>(1, l.virtual_stages)));
  const double layers = static_cast<double>(m.num_layers) / static_cast<double>(l.pp);
  if (l.tp > 1) {
    const double ar = act * 2.0 * static_cast<double>(l.tp - 1) / static_cast<double>(l.tp);
    s.tp = micro * layers * 4 * ar / bw(in.bw, l.tp <= G, CollectiveOp::AllReduce);
  }
  if (cp > 1) {  // the ring: (cp-1) K/V shifts forward, (cp-1) K/V + cp dK/dV backward, per layer
    const double kv_width = m.multi_latent_attention
                                ? static_cast<double>(m.num_attention_heads * (m.qk_head_dim + m.qk_pos_emb_head_dim +
                                                                               m.v_head_dim))
                                : 2.0 * static_cast<double>((m.num_query_groups > 0 ? m.num_query_groups
                                                                                    : m.num_attention_heads) *
                                                            m.head_dim());
    const double kv = tokens * kv_width / static_cast<double>(l.tp) * 2.0;
    s.cp = micro * layers * static_cast<double>(3 * cp - 2) * kv / bw(in.bw, l.tp * cp <= G, CollectiveOp::SendRecv);
  }
  const int64_t grad_ranks = l.dp * cp;  // dense gradients are reduced over dp x cp
  if (grad_ranks > 1) {
    const bool intra = l.tp * grad_ranks <= G;
    const double frac = static_cast<double>(grad_ranks - 1) / static_cast<double>(grad_ranks);
    const double grads = 4.0 * static_cast<double>(mem.params) * t.trainable_fraction;
    const double comm = t.distributed_optimizer
                            ? grads * frac / bw(in.bw, intra, CollectiveOp::ReduceScatter) +
                                  2.0 * static_cast<double>(mem.params) * frac / bw(in.bw, intra, CollectiveOp::AllGather)
                            : grads * frac * 2 / bw(in.bw, intra, CollectiveOp::AllReduce);
    s.dp = in.overlap_grad_reduce ? std::max(0.0, comm - s.compute * 2.0 / 3.0) : comm;
  }
  if (l.pp > 1) s.pp = 2 * micro * act / bw(in.bw, W <= G, CollectiveOp::SendRecv);
  if (l.ep > 1) {
    const double bytes = act * static_cast<double>(m.moe_router_topk) * static_cast<double>(l.ep - 1) /
                         static_cast<double>(l.ep);
    s.ep = micro * static_cast<double>(moe_layers(m)) / static_cast<double>(l.pp) * 4 * bytes /
           bw(in.bw, l.tp * l.ep <= G, CollectiveOp::AllToAll);
  }
  return s;
}

std::vector<LayoutProjection> project_layouts(const ProjectionInput& in) {
  PRIMUS_CHECK(in.nodes >= 1 && in.gpus_per_node >= 1, "--nodes {} and --gpus-per-node {} must be >= 1", in.nodes,
               in.gpus_per_node);
  PRIMUS_CHECK(in.tflops > 0 || in.table, "--tflops {}: give the sustained training TFLOP/s of one GPU (primus train "
               "prints it as TFLOP/s/GPU), e.g. --tflops 400, or a step table measured on the GPU (--bench-table)",
               in.tflops);
  if (in.table) check_step_table(*in.table, in.model, in.setup, in.table_source);
  const ModelConfig& m = in.model;
  const TrainingSetup& t = in.setup;
  const int64_t W = in.nodes * in.gpus_per_node;
  const int64_t groups = m.num_query_groups > 0 ? m.num_query_groups : m.num_attention_heads;
  std::vector<LayoutProjection> out;
  for (int64_t tp = 1; tp <= in.gpus_per_node; tp *= 2) {
    if (in.gpus_per_node % tp || m.num_attention_heads % tp || groups % tp || W % tp) continue;
    for (int64_t pp : divisors(m.num_layers)) {
      if ((W / tp) % pp) continue;
      for (int64_t cp : divisors(W / (tp * pp))) {
      if (cp > 1 && t.seq_length % (2 * cp) != 0) continue;  // the load-balanced split's 2 cp chunks
      const int64_t dp = W / (tp * pp * cp);
      if (t.global_batch_size % (t.micro_batch_size * dp)) continue;
      const std::vector<int64_t> eps = m.num_experts > 0 ? divisors(m.num_experts) : std::vector<int64_t>{1};
      for (int64_t ep : eps) {
        if ((dp * cp) % ep) continue;  // experts are carved out of dp x cp
        ParallelLayout l;
        l.tp = tp;
        l.pp = pp;
        l.cp = cp;
        l.dp = dp;
        l.ep = ep;
        l.etp = tp;
        l.sequence_parallel = tp > 1;
        l.virtual_stages = pp > 1 ? in.virtual_stages : 1;
        if (in.tflops <= 0 && step_table_entry(*in.table, tp) == nullptr) continue;  // no compute for this tp
        LayoutProjection p;
        p.layout = l;
        try {
          p.memory = estimate_memory(m, l, t);
        } catch (const Error&) {
          continue;  // the layers do not split over this pp (stage_layer_counts)
        }
        p.runtime_bytes = in.table ? in.table->runtime_bytes : 0.0;
        p.time = project_step_time(in, l, p.memory);
        p.fits = p.memory_bytes() <= in.fit_fraction * in.gpu_memory_gib * 1073741824.0;
        p.tokens_per_s_per_gpu =
            static_cast<double>(t.global_batch_size * t.seq_length) / p.time.total() / static_cast<double>(W);
        out.push_back(p);
      }
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const LayoutProjection& a, const LayoutProjection& b) {
    if (a.fits != b.fits) return a.fits;
    return a.time.total() < b.time.total();
  });
  return out;
}

std::string render_projection(const ProjectionInput& in, const std::vector<LayoutProjection>& all, int top) {
  std::string s;
  const int64_t W = in.nodes * in.gpus_per_node;
  int fitting = 0;
  for (const auto& p : all) fitting += p.fits;
  s += fmt::format("projection for {} ({}), {} node(s) x {} GPU(s) = {} GPUs; {} layouts, {} fit in {:g}% of {:g} GiB\n",
                   in.model.name, format_count(count_parameters(in.model).total), in.nodes, in.gpus_per_node, W,
                   all.size(), fitting, 100 * in.fit_fraction, in.gpu_memory_gib);
  std::string compute;
  if (in.table) {
    std::vector<std::string> tps;
    for (const StepTableEntry& e : in.table->entries) tps.push_back(fmt::format("{}", e.tp));
    compute = fmt::format("compute measured on {} ({}; tp {}), memory with its runtime's {:.2f} GiB (CUDA context, "
                          "library workspaces)", in.table->device, in.table_source, fmt::join(tps, ", "),
                          in.table->runtime_bytes / 1073741824.0);
    if (in.tflops > 0) compute += fmt::format(", other tp at {:g} TFLOP/s", in.tflops);
  } else {
    compute = fmt::format("{:g} TFLOP/s per GPU sustained", in.tflops);
  }
  s += fmt::format("assumed: {}; bandwidths from {}; global batch {}, micro-batch {}, seq {}; model in "
                   "src/safe/projection.h, its measured error in docs/SAFE.md\n\n",
                   compute, in.bw.source, in.setup.global_batch_size, in.setup.micro_batch_size, in.setup.seq_length);
  s += "| tp | pp | cp | dp | ep | fits | memory GiB (w/g/opt/act) | step s | compute | bubble | tp comm | cp comm | "
       "dp comm | pp comm | ep comm | tokens/s/GPU |\n";
  s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  const double gib = 1073741824.0;
  int shown = 0;
  for (const auto& p : all) {
    if (shown++ >= top) break;
    const auto& e = p.memory;
    s += fmt::format("| {} | {} | {} | {} | {} | {} | {:.1f} ({:.1f}/{:.1f}/{:.1f}/{:.1f}) | {:.3f} | {:.3f} | {:.3f} | "
                     "{:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.0f} |\n",
                     p.layout.tp, p.layout.pp, p.layout.cp, p.layout.dp, p.layout.ep, p.fits ? "yes" : "no",
                     p.memory_bytes() / gib, e.weight_bytes / gib, e.grad_bytes / gib, e.optimizer_bytes / gib,
                     e.activation_bytes / gib, p.time.total(), p.time.compute, p.time.bubble, p.time.tp, p.time.cp,
                     p.time.dp, p.time.pp, p.time.ep, p.tokens_per_s_per_gpu);
  }
  return s;
}

}  // namespace primus::safe
