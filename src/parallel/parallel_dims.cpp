#include "parallel/parallel_dims.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "core/strings.h"
#include "parallel/pipeline_schedule.h"

namespace primus::parallel {
namespace {

const std::vector<std::string> kDimNames = {"tp", "cp", "ep", "dp", "pp"};

std::vector<std::string> split_dims(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == '-') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

}  // namespace

ParallelDims ParallelDims::create(int world_size, const ParallelSizes& s) {
  PRIMUS_CHECK(world_size >= 1, "parallel layout: world size {} must be at least 1", world_size);
  auto positive = [](const char* key, int v) {
    if (v < 1) fail("parallel layout: {}={} must be at least 1", key, v);
  };
  positive("tensor_model_parallel_size", s.tp);
  positive("pipeline_model_parallel_size", s.pp);
  positive("context_parallel_size", s.cp);
  positive("expert_model_parallel_size", s.ep);
  PRIMUS_CHECK(s.dp >= 0, "parallel layout: data parallel size {} must be >= 0 (0 = inferred)", s.dp);

  ParallelDims d;
  d.world_ = world_size;
  d.tp_ = s.tp;
  d.pp_ = s.pp;
  d.cp_ = s.cp;
  d.ep_ = s.ep;
  const int64_t model_ranks = int64_t(s.tp) * s.cp * s.pp;
  if (s.dp == 0) {
    if (world_size % model_ranks != 0) {
      fail("parallel layout: world size {} is not divisible by tensor_model_parallel_size {} x "
           "context_parallel_size {} x pipeline_model_parallel_size {} = {}; choose sizes whose "
           "product divides the number of processes (GPUS_PER_NODE x NNODES)",
           world_size, s.tp, s.cp, s.pp, model_ranks);
    }
    d.dp_ = static_cast<int>(world_size / model_ranks);
  } else {
    d.dp_ = s.dp;
    if (model_ranks * s.dp != world_size) {
      fail("parallel layout: tp {} x cp {} x dp {} x pp {} = {} but the world has {} processes; "
           "the product must equal the world size",
           s.tp, s.cp, s.dp, s.pp, model_ranks * s.dp, world_size);
    }
  }
  if ((int64_t(d.dp_) * d.cp_) % d.ep_ != 0) {
    fail("parallel layout: expert_model_parallel_size {} must divide data parallel {} x context "
         "parallel {} = {} (experts are spread over the data-parallel ranks)",
         d.ep_, d.dp_, d.cp_, d.dp_ * d.cp_);
  }
  d.expert_dp_ = d.dp_ * d.cp_ / d.ep_;

  // The order: known names, no repeats; dims missing from it must have size 1 and go last.
  std::vector<std::string> order = split_dims(s.order);
  for (const std::string& name : order) {
    if (std::find(kDimNames.begin(), kDimNames.end(), name) == kDimNames.end()) {
      fail("parallel layout: order '{}' has unknown dim '{}'{}; use names from tp, cp, ep, dp, pp "
           "joined by '-' (default tp-cp-ep-dp-pp)",
           s.order, name, did_you_mean(name, kDimNames));
    }
    if (std::count(order.begin(), order.end(), name) > 1)
      fail("parallel layout: order '{}' names '{}' twice", s.order, name);
  }
  for (const std::string& name : kDimNames) {
    if (std::find(order.begin(), order.end(), name) != order.end()) continue;
    int size = name == "tp" ? d.tp_ : name == "cp" ? d.cp_ : name == "ep" ? d.ep_ : name == "dp" ? d.dp_ : d.pp_;
    if (size != 1)
      fail("parallel layout: order '{}' leaves out '{}' whose size is {}; add it to the order",
           s.order, name, size);
    order.push_back(name);
  }
  d.order_ = std::move(order);
  return d;
}

std::vector<ParallelDims::Dim> ParallelDims::dense_grid() const {
  std::vector<Dim> g;
  for (const std::string& n : order_) {
    int size = n == "tp" ? tp_ : n == "cp" ? cp_ : n == "ep" ? 1 : n == "dp" ? dp_ : pp_;
    g.push_back({n, size});
  }
  return g;
}

std::vector<ParallelDims::Dim> ParallelDims::expert_grid() const {
  std::vector<Dim> g;
  for (const std::string& n : order_) {
    if (n == "cp") g.push_back({"cp", 1});
    else if (n == "ep") g.push_back({"ep", ep_});
    else if (n == "dp") g.push_back({"expert_dp", expert_dp_});
    else g.push_back({n, n == "tp" ? tp_ : pp_});
  }
  return g;
}

RankCoords ParallelDims::coords(int rank) const {
  PRIMUS_CHECK(rank >= 0 && rank < world_, "parallel layout: rank {} is outside the world of {}",
               rank, world_);
  RankCoords c;
  auto decompose = [rank](const std::vector<Dim>& grid, auto&& set) {
    int r = rank;
    for (const Dim& d : grid) {
      set(d.name, r % d.size);
      r /= d.size;
    }
  };
  decompose(dense_grid(), [&](const std::string& n, int v) {
    if (n == "tp") c.tp = v;
    else if (n == "cp") c.cp = v;
    else if (n == "dp") c.dp = v;
    else if (n == "pp") c.pp = v;
  });
  decompose(expert_grid(), [&](const std::string& n, int v) {
    if (n == "ep") c.ep = v;
    else if (n == "expert_dp") c.expert_dp = v;
  });
  return c;
}

std::vector<std::vector<int>> ParallelDims::groups(std::string_view dims) const {
  std::vector<std::string> wanted = split_dims(dims);
  const bool expert = std::any_of(wanted.begin(), wanted.end(),
                                  [](const std::string& n) { return n == "ep" || n == "expert_dp"; });
  std::vector<Dim> grid = expert ? expert_grid() : dense_grid();
  std::vector<std::string> names;
  for (const Dim& d : grid) names.push_back(d.name);
  for (const std::string& w : wanted) {
    if (std::find(names.begin(), names.end(), w) == names.end() || (expert && (w == "cp" || w == "dp"))) {
      fail("parallel groups: '{}' in '{}' is not a dim of the {} grid ({}){}", w, dims,
           expert ? "expert" : "dense", expert ? "tp, ep, expert_dp, pp" : "tp, cp, ep, dp, pp",
           did_you_mean(w, names));
    }
  }
  std::vector<int> stride(grid.size());
  int s = 1;
  for (size_t i = 0; i < grid.size(); ++i) {
    stride[i] = s;
    s *= grid[i].size;
  }
  std::vector<size_t> in, out;  // grid indices inside / outside the group
  for (size_t i = 0; i < grid.size(); ++i) {
    bool sel = std::find(wanted.begin(), wanted.end(), grid[i].name) != wanted.end();
    (sel ? in : out).push_back(i);
  }
  auto count = [&](const std::vector<size_t>& idx) {
    int n = 1;
    for (size_t i : idx) n *= grid[i].size;
    return n;
  };
  // Rank offset of the combination `k` of the dims `idx`, first dim fastest.
  auto offset = [&](const std::vector<size_t>& idx, int k) {
    int off = 0;
    for (size_t i : idx) {
      off += (k % grid[i].size) * stride[i];
      k /= grid[i].size;
    }
    return off;
  };
  std::vector<std::vector<int>> result;
  for (int o = 0; o < count(out); ++o) {
    std::vector<int> g;
    for (int k = 0; k < count(in); ++k) g.push_back(offset(out, o) + offset(in, k));
    result.push_back(std::move(g));
  }
  return result;
}

std::vector<int> ParallelDims::group_of(int rank, std::string_view dims) const {
  for (std::vector<int>& g : groups(dims))
    if (std::find(g.begin(), g.end(), rank) != g.end()) return g;
  fail("parallel groups: rank {} is outside the world of {}", rank, world_);
}

std::string ParallelDims::describe() const {
  std::string order;
  for (const std::string& n : order_) order += (order.empty() ? "" : "-") + n;
  return fmt::format("tp{} cp{} ep{} dp{} pp{} (world {}, order {})", tp_, cp_, ep_, dp_, pp_, world_,
                     order);
}

// ---- layout rules ----------------------------------------------------------------------------

std::string LayoutValue::str() const {
  return source.empty() ? fmt::format("{} = {}", key, value) : fmt::format("{} = {} ({})", key, value, source);
}

std::string split_problem(const LayoutValue& size, const LayoutValue& parallel, std::string_view fix) {
  if (parallel.value > 0 && size.value % parallel.value == 0) return "";
  return fmt::format("{} must divide {}{}{}", parallel.str(), size.str(), fix.empty() ? "" : " ", fix);
}

std::string pipeline_split_problem(const LayoutValue& num_layers, const LayoutValue& pp) {
  return split_problem(num_layers, pp, "(or set decoder_first_pipeline_num_layers / decoder_last_pipeline_num_layers)");
}

std::string expert_tensor_parallel_problem(const LayoutValue& ep, const LayoutValue& tp, bool sequence_parallel) {
  if (ep.value <= 1 || tp.value <= 1 || sequence_parallel) return "";
  return fmt::format("{} with {} needs sequence_parallel: true (as Megatron requires: each tensor-parallel rank then "
                     "routes its own share of the tokens); set sequence_parallel: true, or one of the two sizes to 1",
                     ep.str(), tp.str());
}

std::string expert_parallel_problem(const LayoutValue& ep, bool has_experts) {
  if (ep.value <= 1 || has_experts) return "";
  return fmt::format("{} needs an MoE model (num_experts is unset or 0); set num_experts, or {}: 1", ep.str(), ep.key);
}

std::string context_parallel_seq_problem(const LayoutValue& seq_length, const LayoutValue& cp) {
  if (cp.value <= 1 || seq_length.value % (2 * cp.value) == 0) return "";
  return fmt::format("{} must be divisible by 2 x {} = {}{} for load-balanced causal attention (each rank holds two "
                     "balanced chunks of every sequence)",
                     seq_length.str(), cp.key, 2 * cp.value, cp.source.empty() ? "" : " (" + cp.source + ")");
}

std::string batch_split_problem(const LayoutValue& global_batch, int64_t micro_batch, int64_t dp,
                                std::string_view detail) {
  if (micro_batch > 0 && dp > 0 && global_batch.value % (micro_batch * dp) == 0) return "";
  return fmt::format("{} must be divisible by micro_batch_size x data-parallel size = {} x {} = {}{}{}{}",
                     global_batch.str(), micro_batch, dp, micro_batch * dp, detail.empty() ? "" : " (", detail,
                     detail.empty() ? "" : ")");
}

}  // namespace primus::parallel
