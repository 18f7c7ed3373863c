#include "safe/step_table.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>

#include "core/error.h"

namespace primus::safe {

nlohmann::json to_json(const StepTable& t) {
  nlohmann::json entries = nlohmann::json::array();
  for (const StepTableEntry& e : t.entries)
    entries.push_back({{"tp", e.tp},
                       {"layers_fwd_us", e.layers_fwd_us},
                       {"layers_bwd_us", e.layers_bwd_us},
                       {"head_us", e.head_us},
                       {"optimizer_ns_per_param", e.optimizer_ns_per_param},
                       {"parts", e.parts}});
  return {{"kind", "primus step bench"}, {"model", t.model},     {"device", t.device},
          {"layers", t.layers},          {"hidden", t.hidden},   {"seq_length", t.seq_length},
          {"micro_batch_size", t.micro_batch_size},              {"runtime_bytes", t.runtime_bytes},
          {"entries", entries}};
}

StepTable step_table_from_json(const nlohmann::json& j, const std::string& source) {
  PRIMUS_CHECK(j.is_object() && j.value("kind", std::string()) == "primus step bench",
               "{}: not a step table (write one with `primus bench step --config EXP.yaml --out FILE.json` on the GPU)",
               source);
  StepTable t;
  try {
    t.model = j.at("model").get<std::string>();
    t.device = j.at("device").get<std::string>();
    t.layers = j.at("layers").get<int64_t>();
    t.hidden = j.at("hidden").get<int64_t>();
    t.seq_length = j.at("seq_length").get<int64_t>();
    t.micro_batch_size = j.at("micro_batch_size").get<int64_t>();
    t.runtime_bytes = j.value("runtime_bytes", 0.0);
    for (const auto& e : j.at("entries")) {
      StepTableEntry x;
      x.tp = e.at("tp").get<int64_t>();
      x.layers_fwd_us = e.at("layers_fwd_us").get<double>();
      x.layers_bwd_us = e.at("layers_bwd_us").get<double>();
      x.head_us = e.at("head_us").get<double>();
      x.optimizer_ns_per_param = e.at("optimizer_ns_per_param").get<double>();
      x.parts = e.value("parts", nlohmann::json::object());
      PRIMUS_CHECK(x.tp >= 1 && x.layers_fwd_us > 0 && x.layers_bwd_us > 0 && x.head_us > 0 &&
                       x.optimizer_ns_per_param > 0,
                   "{}: the entry for tp {} has a time that is not positive", source, x.tp);
      t.entries.push_back(std::move(x));
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a malformed step table ({}); write it again with `primus bench step`", source, e.what());
  }
  PRIMUS_CHECK(!t.entries.empty(), "{}: the step table has no entries", source);
  return t;
}

StepTable read_step_table(const std::string& path) {
  std::ifstream f(path);
  PRIMUS_CHECK(f.good(), "--bench-table '{}': cannot read it; write it with `primus bench step --config EXP.yaml --out "
               "FILE.json` on the GPU", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("--bench-table '{}': not JSON ({})", path, e.what());
  }
  return step_table_from_json(j, path);
}

ModelConfig tp_local_model(const ModelConfig& m, int64_t tp) {
  PRIMUS_CHECK(tp >= 1, "tensor-parallel size {} must be >= 1", tp);
  ModelConfig l = m;
  l.kv_channels = m.head_dim();
  l.num_query_groups = m.query_groups();
  auto split = [&](int64_t& v, const char* what) {
    if (v == 0) return;
    PRIMUS_CHECK(v % tp == 0, "tensor-parallel size {} does not divide {} ({})", tp, what, v);
    v /= tp;
  };
  split(l.num_attention_heads, "num_attention_heads");
  split(l.num_query_groups, "num_query_groups");
  split(l.ffn_hidden_size, "ffn_hidden_size");
  split(l.moe_ffn_hidden_size, "moe_ffn_hidden_size");
  split(l.moe_shared_expert_intermediate_size, "moe_shared_expert_intermediate_size");
  // The vocabulary is padded to a multiple of tp by the trainer; the shard is its share.
  l.padded_vocab_size = (m.padded_vocab_size + tp - 1) / tp;
  l.vocab_size = std::min(l.vocab_size, l.padded_vocab_size);
  return l;
}

void check_step_table(const StepTable& t, const ModelConfig& m, const TrainingSetup& s, const std::string& source) {
  PRIMUS_CHECK(t.layers == m.num_layers && t.hidden == m.hidden_size,
               "{}: measured for model '{}' ({} layers, hidden {}), but this experiment's model '{}' has {} layers, "
               "hidden {}; run `primus bench step` with this experiment",
               source, t.model, t.layers, t.hidden, m.name, m.num_layers, m.hidden_size);
  PRIMUS_CHECK(t.seq_length == s.seq_length && t.micro_batch_size == s.micro_batch_size,
               "{}: measured at seq_length {} x micro_batch_size {}, but the experiment runs {} x {}; run `primus "
               "bench step` with the same --set overrides",
               source, t.seq_length, t.micro_batch_size, s.seq_length, s.micro_batch_size);
}

const StepTableEntry* step_table_entry(const StepTable& t, int64_t tp) {
  for (const StepTableEntry& e : t.entries)
    if (e.tp == tp) return &e;
  return nullptr;
}

double table_compute_seconds(const StepTableEntry& e, const ModelConfig& m, const TrainingSetup& s,
                             const ParallelLayout& l, int64_t params) {
  const double micro =
      static_cast<double>(s.global_batch_size) / static_cast<double>(s.micro_batch_size * std::max<int64_t>(1, l.dp));
  const std::vector<int64_t> stages = stage_layer_counts(m.num_layers, l);
  const double share = static_cast<double>(*std::max_element(stages.begin(), stages.end())) /
                       static_cast<double>(m.num_layers);
  const bool full = s.recompute == Recompute::kFullUniform || s.recompute == Recompute::kFullBlock;
  const double layers_us = e.layers_fwd_us * (full ? 2.0 : 1.0) + e.layers_bwd_us;
  const double cp = static_cast<double>(std::max<int64_t>(1, l.cp));
  const double micro_batch_s = (share * layers_us + e.head_us) / cp * 1e-6;
  double opt_params = static_cast<double>(params) * s.trainable_fraction;
  if (s.distributed_optimizer) opt_params /= static_cast<double>(std::max<int64_t>(1, l.dp) * std::max<int64_t>(1, l.cp));
  return micro * micro_batch_s + opt_params * e.optimizer_ns_per_param * 1e-9;
}

}  // namespace primus::safe
