// validate(): consistency of a resolved config, then the values derived from it.
//
// Types, enums and ranges are checked as each value is set (Schema::coerce). Here we
// check what involves several keys: the parallel layout against the world size, batch
// sizes, attention heads against TP, the lr schedule, recompute, precision, data. Every
// message names each key involved with its value and source, and the fix. All problems
// are reported at once.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "config/config.h"
#include "core/error.h"
#include "model/model_stats.h"
#include "parallel/parallel_dims.h"

namespace primus::config {

namespace {

class Checker {
 public:
  explicit Checker(const Config& c) : c_(c) {}

  // "key = value (source)"
  std::string at(const std::string& key) const {
    return fmt::format("{} = {} ({})", key, format_value(c_.value(key)), c_.source(key).str());
  }
  void require(bool ok, std::string message) {
    if (!ok) errors_.push_back(std::move(message));
  }
  // A layout rule's problem (parallel/parallel_dims.h), "" when it holds.
  void require(std::string problem) {
    if (!problem.empty()) errors_.push_back(std::move(problem));
  }
  // An integer key as the layout rules show it: its value and where it was set.
  parallel::LayoutValue value(const std::string& key) const { return {key, c_.i(key), c_.source(key).str()}; }
  bool set(const std::string& key) const { return c_.has(key); }
  int64_t i(const std::string& key) const { return c_.i(key); }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  const Config& c_;
  std::vector<std::string> errors_;
};

int64_t megatron_ffn_default(int64_t hidden, bool swiglu) {
  // Megatron: 4h, or for SwiGLU 2/3 of that rounded down to a multiple of 64 (same FLOPs).
  return swiglu ? (8 * hidden / 3) / 64 * 64 : 4 * hidden;
}

}  // namespace

void validate(Config& cfg) {
  Checker ck(cfg);

  // ---- precision -----------------------------------------------------------------
  ck.require(!(cfg.b("bf16") && cfg.b("fp16")),
             fmt::format("{} and {} cannot both be on: choose one", ck.at("bf16"), ck.at("fp16")));
  ck.require(!cfg.has("fp8") || cfg.b("bf16") || cfg.b("fp16"),
             fmt::format("{} needs bf16: true (or fp16: true) for the non-fp8 parts", ck.at("fp8")));

  // ---- parallel layout ------------------------------------------------------------
  const int64_t tp = cfg.i("tensor_model_parallel_size"), pp = cfg.i("pipeline_model_parallel_size");
  const int64_t cp = cfg.i("context_parallel_size"), ep = cfg.i("expert_model_parallel_size");
  const int64_t etp = cfg.has("expert_tensor_parallel_size") ? cfg.i("expert_tensor_parallel_size") : tp;
  const int64_t model_ranks = tp * pp * cp;
  if (cfg.world_size <= 0) {
    // The smallest world that fits: dp = 1, or enough dp for expert parallelism
    // (EP ranks come from the data- and context-parallel ranks: ep*etp | dp*cp*tp).
    const int64_t need = ep * etp / std::gcd(ep * etp, cp * tp);
    cfg.world_size = static_cast<int>(model_ranks * need);
  }
  const int64_t world = cfg.world_size;
  int64_t dp = 1;
  const std::string layout = fmt::format("tensor_model_parallel_size {} ({}) x pipeline_model_parallel_size {} ({}) x "
                                         "context_parallel_size {} ({})",
                                         tp, cfg.source("tensor_model_parallel_size").str(), pp,
                                         cfg.source("pipeline_model_parallel_size").str(), cp,
                                         cfg.source("context_parallel_size").str());
  if (world % model_ranks != 0) {
    ck.require(false, fmt::format("world size {} (from --world-size, WORLD_SIZE or the default 1) is not a multiple of {} = {}: the "
                                  "data-parallel size would not be whole; change the world size or the layout",
                                  world, layout, model_ranks));
  } else {
    dp = world / model_ranks;
  }
  cfg.data_parallel_size = static_cast<int>(dp);

  // ---- batch sizes ------------------------------------------------------------------
  const int64_t mbs = cfg.i("micro_batch_size");
  if (cfg.has("global_batch_size")) {
    ck.require(parallel::batch_split_problem(
        ck.value("global_batch_size"), mbs, dp,
        fmt::format("micro_batch_size from {}; data-parallel size = world size {} / ({})",
                    cfg.source("micro_batch_size").str(), world, layout)));
  }
  if (cfg.has("rampup_batch_size")) {
    const auto r = cfg.numbers("rampup_batch_size");
    const bool three = r.size() == 3 && r[0] > 0 && r[1] > 0 && r[2] > 0;
    ck.require(three, fmt::format("{} must be three positive numbers: start increment samples",
                                  ck.at("rampup_batch_size")));
    if (three && cfg.has("global_batch_size"))
      ck.require(static_cast<int64_t>(cfg.i("global_batch_size") - r[0]) % static_cast<int64_t>(r[1]) == 0,
                 fmt::format("{}: global_batch_size - start must be a multiple of the increment ({})",
                             ck.at("rampup_batch_size"), ck.at("global_batch_size")));
  }

  // ---- run length and lr schedule ------------------------------------------------
  const bool by_iters = cfg.has("train_iters"), by_samples = cfg.has("train_samples");
  ck.require(by_iters || by_samples, "neither train_iters nor train_samples is set: set one of them (in `overrides:`)");
  ck.require(!(by_iters && by_samples), fmt::format("{} and {} are both set: set only one", ck.at("train_iters"),
                                                    ck.at("train_samples")));
  // "lr_decay_samples" <-> "lr_decay_iters"
  auto counterpart = [](std::string key, const std::string& from, const std::string& to) {
    return key.replace(key.find(from), from.size(), to);
  };
  if (by_iters && !by_samples) {
    for (const char* k : {"lr_decay_samples", "lr_wsd_decay_samples"})
      ck.require(!cfg.has(k), fmt::format("{} is sample-based but the run is iteration-based ({}); use {}", ck.at(k),
                                          ck.at("train_iters"), counterpart(k, "samples", "iters")));
    ck.require(cfg.i("lr_warmup_samples") == 0,
               fmt::format("{} is sample-based but the run is iteration-based ({}); use lr_warmup_iters",
                           ck.at("lr_warmup_samples"), ck.at("train_iters")));
  }
  if (by_samples && !by_iters) {
    for (const char* k : {"lr_decay_iters", "lr_wsd_decay_iters"})
      ck.require(!cfg.has(k), fmt::format("{} is iteration-based but the run is sample-based ({}); use {}", ck.at(k),
                                          ck.at("train_samples"), counterpart(k, "iters", "samples")));
    ck.require(cfg.i("lr_warmup_iters") == 0,
               fmt::format("{} is iteration-based but the run is sample-based ({}); use lr_warmup_samples",
                           ck.at("lr_warmup_iters"), ck.at("train_samples")));
  }
  ck.require(!(cfg.has("lr_warmup_fraction") && (cfg.i("lr_warmup_iters") > 0 || cfg.i("lr_warmup_samples") > 0)),
             fmt::format("{} and an explicit warm-up ({}, {}) are both set: use one", ck.at("lr_warmup_fraction"),
                         ck.at("lr_warmup_iters"), ck.at("lr_warmup_samples")));
  ck.require(cfg.f("min_lr") <= cfg.f("lr"),
             fmt::format("{} must not exceed {}", ck.at("min_lr"), ck.at("lr")));
  if (cfg.s("lr_decay_style") == "WSD")
    ck.require(cfg.has("lr_wsd_decay_iters") || cfg.has("lr_wsd_decay_samples"),
               fmt::format("{} needs lr_wsd_decay_iters (or lr_wsd_decay_samples): the length of the final decay",
                           ck.at("lr_decay_style")));
  if (by_iters && !by_samples) {
    const int64_t decay = cfg.has("lr_decay_iters") ? cfg.i("lr_decay_iters") : cfg.i("train_iters");
    ck.require(cfg.i("lr_warmup_iters") < decay || cfg.s("lr_decay_style") == "constant",
               fmt::format("{} must be shorter than the decay ({}, default train_iters)", ck.at("lr_warmup_iters"),
                           ck.at(cfg.has("lr_decay_iters") ? "lr_decay_iters" : "train_iters")));
  }

  // ---- model shape ------------------------------------------------------------------
  bool model_complete = true;
  for (const char* k : {"num_layers", "hidden_size", "num_attention_heads", "vocab_size"}) {
    if (!cfg.has(k)) {
      model_complete = false;
      ck.require(false, fmt::format("{} is not set: the model file (the experiment's `model:`) must set it", k));
    }
  }
  if (model_complete) {
    const int64_t layers = cfg.i("num_layers"), hidden = cfg.i("hidden_size"), heads = cfg.i("num_attention_heads");
    const bool gqa = cfg.b("group_query_attention");
    ck.require(parallel::split_problem(ck.value("num_attention_heads"), ck.value("tensor_model_parallel_size")));
    if (gqa) {
      if (!cfg.has("num_query_groups")) {
        ck.require(false, fmt::format("{} needs num_query_groups (the number of key/value heads)",
                                      ck.at("group_query_attention")));
      } else {
        const int64_t groups = cfg.i("num_query_groups");
        ck.require(heads % groups == 0,
                   fmt::format("{} must be divisible by {}", ck.at("num_attention_heads"), ck.at("num_query_groups")));
        ck.require(parallel::split_problem(ck.value("num_query_groups"), ck.value("tensor_model_parallel_size")));
      }
    } else if (cfg.has("num_query_groups") && cfg.i("num_query_groups") != heads) {
      ck.require(false, fmt::format("{} has no effect without group_query_attention: true ({}); set both",
                                    ck.at("num_query_groups"), ck.at("group_query_attention")));
    }
    // Layers per pipeline stage: an even split, or Megatron's uneven first/last stages.
    ParallelLayout split;
    split.pp = pp;
    split.first_stage_layers = cfg.has("decoder_first_pipeline_num_layers") ? cfg.i("decoder_first_pipeline_num_layers") : 0;
    split.last_stage_layers = cfg.has("decoder_last_pipeline_num_layers") ? cfg.i("decoder_last_pipeline_num_layers") : 0;
    std::vector<int64_t> stage_layers;
    if (split.first_stage_layers == 0 && split.last_stage_layers == 0) {
      ck.require(parallel::pipeline_split_problem(ck.value("num_layers"), ck.value("pipeline_model_parallel_size")));
      if (layers % pp == 0) stage_layers.assign(static_cast<size_t>(pp), layers / pp);
    } else if (pp == 1) {
      ck.require(false, fmt::format("{} / {} need pipeline_model_parallel_size > 1 ({})",
                                    ck.at("decoder_first_pipeline_num_layers"),
                                    ck.at("decoder_last_pipeline_num_layers"), ck.at("pipeline_model_parallel_size")));
    } else {
      try {
        stage_layers = stage_layer_counts(layers, split);
      } catch (const Error& e) {
        ck.require(false, fmt::format("{}, {} and {} with {}: {}", ck.at("num_layers"),
                                      ck.at("decoder_first_pipeline_num_layers"),
                                      ck.at("decoder_last_pipeline_num_layers"), ck.at("pipeline_model_parallel_size"),
                                      e.what()));
      }
    }
    const int64_t fewest_stage_layers =
        stage_layers.empty() ? 0 : *std::min_element(stage_layers.begin(), stage_layers.end());
    if (!cfg.has("kv_channels") && !cfg.b("multi_latent_attention"))
      ck.require(hidden % heads == 0,
                 fmt::format("{} must equal num_attention_heads x kv_channels, and kv_channels is unset: {} must "
                             "divide it (or set kv_channels)",
                             ck.at("hidden_size"), ck.at("num_attention_heads")));
    if (cfg.has("max_position_embeddings"))
      ck.require(cfg.i("seq_length") <= cfg.i("max_position_embeddings"),
                 fmt::format("{} exceeds {}", ck.at("seq_length"), ck.at("max_position_embeddings")));
    if (cfg.has("num_layers_per_virtual_pipeline_stage")) {
      const int64_t v = cfg.i("num_layers_per_virtual_pipeline_stage");
      ck.require(pp > 1, fmt::format("{} needs pipeline_model_parallel_size > 1 ({})",
                                     ck.at("num_layers_per_virtual_pipeline_stage"),
                                     ck.at("pipeline_model_parallel_size")));
      bool divides = !stage_layers.empty();
      for (int64_t n : stage_layers) divides = divides && n % v == 0;
      ck.require(divides, fmt::format("{} must divide the layers of every pipeline stage ({} over "
                                      "pipeline_model_parallel_size {})",
                                      ck.at("num_layers_per_virtual_pipeline_stage"), ck.at("num_layers"), pp));
    }
    if (cfg.b("use_rope_scaling"))
      ck.require(cfg.s("position_embedding_type") == "rope",
                 fmt::format("{} needs position_embedding_type: rope ({})", ck.at("use_rope_scaling"),
                             ck.at("position_embedding_type")));
    ck.require(cfg.i("moe_first_k_dense_replace") <= layers,
               fmt::format("{} exceeds {}", ck.at("moe_first_k_dense_replace"), ck.at("num_layers")));
    try {
      (void)parse_moe_layer_freq(cfg.s("moe_layer_freq"), layers);
    } catch (const Error& e) {
      ck.require(false, fmt::format("{}: {}", ck.at("moe_layer_freq"), e.what()));
    }

    // ---- recompute --------------------------------------------------------------
    const auto granularity = cfg.opt_s("recompute_granularity");
    if (cfg.has("recompute_method"))
      ck.require(granularity == "full", fmt::format("{} needs recompute_granularity: full ({})",
                                                    ck.at("recompute_method"), ck.at("recompute_granularity")));
    if (granularity == "full") {
      ck.require(cfg.has("recompute_method"),
                 fmt::format("{} needs recompute_method: uniform or block", ck.at("recompute_granularity")));
      ck.require(cfg.has("recompute_num_layers"),
                 fmt::format("{} needs recompute_num_layers", ck.at("recompute_granularity")));
      if (cfg.has("recompute_num_layers") && fewest_stage_layers > 0)
        ck.require(cfg.i("recompute_num_layers") <= fewest_stage_layers,
                   fmt::format("{} exceeds the {} layers of the smallest pipeline stage ({} over {} stages)",
                               ck.at("recompute_num_layers"), fewest_stage_layers, ck.at("num_layers"), pp));
    }
  }

  // ---- context parallel -------------------------------------------------------------
  ck.require(parallel::context_parallel_seq_problem(ck.value("seq_length"), ck.value("context_parallel_size")));

  // ---- mixture of experts --------------------------------------------------------
  if (cfg.has("num_experts")) {
    const int64_t experts = cfg.i("num_experts");
    ck.require(cfg.i("moe_router_topk") <= experts,
               fmt::format("{} exceeds {}", ck.at("moe_router_topk"), ck.at("num_experts")));
    ck.require(parallel::split_problem(ck.value("num_experts"), ck.value("expert_model_parallel_size")));
    ck.require((dp * cp * tp) % (ep * etp) == 0,
               fmt::format("expert_model_parallel_size {} x expert tensor-parallel size {} must divide data-parallel "
                           "x context-parallel x tensor-parallel ranks = {} x {} x {} ({}); raise the world size",
                           ep, etp, dp, cp, tp, cfg.source("expert_model_parallel_size").str()));
    ck.require(parallel::expert_tensor_parallel_problem(ck.value("expert_model_parallel_size"),
                                                        {"tensor_model_parallel_size", tp, ""},
                                                        cfg.b("sequence_parallel")));
    if (cfg.b("moe_pad_expert_input_to_capacity"))
      ck.require(cfg.has("moe_expert_capacity_factor"),
                 fmt::format("{} needs moe_expert_capacity_factor (the capacity it pads to)",
                             ck.at("moe_pad_expert_input_to_capacity")));
    const bool groups = cfg.has("moe_router_num_groups"), group_topk = cfg.has("moe_router_group_topk");
    ck.require(groups == group_topk, fmt::format("group-limited routing needs both {} and {}",
                                                 ck.at("moe_router_num_groups"), ck.at("moe_router_group_topk")));
    if (groups && group_topk) {
      ck.require(experts % cfg.i("moe_router_num_groups") == 0,
                 fmt::format("{} must divide {}", ck.at("moe_router_num_groups"), ck.at("num_experts")));
      ck.require(cfg.i("moe_router_group_topk") <= cfg.i("moe_router_num_groups"),
                 fmt::format("{} exceeds {}", ck.at("moe_router_group_topk"), ck.at("moe_router_num_groups")));
    }
    if (cfg.has("moe_router_group_score"))
      ck.require(groups, fmt::format("{} scores the groups of group-limited routing: set moe_router_num_groups and "
                                     "moe_router_group_topk, or remove it",
                                     ck.at("moe_router_group_score")));
  } else {
    ck.require(parallel::expert_parallel_problem(ck.value("expert_model_parallel_size"), false));
  }

  // ---- distributed optimizer -----------------------------------------------------
  ck.require(!cfg.b("overlap_param_gather") || cfg.b("use_distributed_optimizer"),
             fmt::format("{} needs use_distributed_optimizer: true ({})", ck.at("overlap_param_gather"),
                         ck.at("use_distributed_optimizer")));

  // ---- data -------------------------------------------------------------------------
  if (!cfg.b("mock_data")) {
    ck.require(cfg.has("data_path") || cfg.has("train_data_path"),
               fmt::format("no training data: set data_path or train_data_path, or mock_data: true ({})",
                           ck.at("mock_data")));
    if (!cfg.has("tokenizer_type")) {
      ck.require(false, "tokenizer_type is not set (needed to read real data); set it, or mock_data: true");
    } else if (cfg.s("tokenizer_type") != "NullTokenizer") {
      ck.require(cfg.has("tokenizer_model"),
                 fmt::format("{} needs tokenizer_model (a tokenizer.json or tokenizer.model file)",
                             ck.at("tokenizer_type")));
    }
  }

  if (cfg.b("profile")) {
    ck.require(cfg.i("profile_step_end") > cfg.i("profile_step_start"),
               fmt::format("{} must be after {}", ck.at("profile_step_end"), ck.at("profile_step_start")));
    for (double r : cfg.numbers("profile_ranks"))
      ck.require(r >= 0 && r == std::floor(r) && r < static_cast<double>(world),
                 fmt::format("{}: {} is not a rank of this run (0..{})", ck.at("profile_ranks"), r, world - 1));
  }
  ck.require(cfg.i("timing_log_level") <= 1,
             fmt::format("{}: level 2 (Megatron's per-stage communication timers) is not built; use 0 or 1",
                         ck.at("timing_log_level")));

  if (!ck.errors().empty()) {
    std::string msg = fmt::format("{}: invalid config ({} problem{}):", cfg.experiment_path.empty() ? "config" : cfg.experiment_path,
                                  ck.errors().size(), ck.errors().size() == 1 ? "" : "s");
    for (const auto& e : ck.errors()) msg += "\n  - " + e;
    throw Error(msg);
  }

  // ---- derived values (Megatron fills these after validating its arguments) --------
  auto derive = [&](const std::string& key, const nlohmann::json& value, const std::string& how) {
    cfg.set(key, value, Source{"derived (" + how + ")", 0});
  };
  if (!cfg.has("global_batch_size")) derive("global_batch_size", mbs * dp, "micro_batch_size x data-parallel size");
  if (!cfg.has("max_position_embeddings")) derive("max_position_embeddings", cfg.i("seq_length"), "seq_length");
  const int64_t hidden = cfg.i("hidden_size"), heads = cfg.i("num_attention_heads");
  if (!cfg.has("kv_channels")) derive("kv_channels", hidden / heads, "hidden_size / num_attention_heads");
  if (!cfg.has("num_query_groups")) derive("num_query_groups", heads, "num_attention_heads: no grouped-query attention");
  if (!cfg.has("ffn_hidden_size"))
    derive("ffn_hidden_size", megatron_ffn_default(hidden, cfg.b("swiglu")),
           cfg.b("swiglu") ? "floor(8 x hidden_size / 3 / 64) x 64" : "4 x hidden_size");
  if (cfg.has("num_experts") && !cfg.has("moe_ffn_hidden_size"))
    derive("moe_ffn_hidden_size", cfg.i("ffn_hidden_size"), "ffn_hidden_size");
  if (!cfg.has("expert_tensor_parallel_size")) derive("expert_tensor_parallel_size", tp, "tensor_model_parallel_size");
  if (by_iters && !cfg.has("lr_decay_iters")) derive("lr_decay_iters", cfg.i("train_iters"), "train_iters");
  if (by_samples && !cfg.has("lr_decay_samples")) derive("lr_decay_samples", cfg.i("train_samples"), "train_samples");
}

}  // namespace primus::config
