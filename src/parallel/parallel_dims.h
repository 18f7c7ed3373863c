// ParallelDims: how the world's ranks are laid out over tensor (tp), context (cp), expert
// (ep), data (dp) and pipeline (pp) parallelism, in Megatron's rank order.
//
// The order string lists the dims fastest-varying first. With the default
// "tp-cp-ep-dp-pp" a rank's coordinates are
//     rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))
// so tensor-parallel peers are neighbours (one node, fastest links) and pipeline stages
// are farthest apart. Example, world 16, tp2 pp4 (dp2):
//     tp groups [0,1] [2,3] ...   dp groups [0,2] [1,3] [4,6] ...   pp groups [0,4,8,12] ...
//
// Experts follow Megatron's second grid over the same world: tp (= expert tp), ep,
// expert-dp = world / (tp * ep * pp), pp, in the same order with cp removed. The
// expert-parallel ranks are carved out of the dense grid's dp x cp ranks, so ep must
// divide dp * cp.
//
// Everything here is arithmetic on integers: create() (and the model's check against a layout,
// check_parallel_layout in model/decoder_spec.h) run before any communicator or tensor exists,
// so a bad layout fails before memory is allocated.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace primus::parallel {

struct ParallelSizes {
  int tp = 1;  // tensor_model_parallel_size
  int pp = 1;  // pipeline_model_parallel_size
  int cp = 1;  // context_parallel_size
  int ep = 1;  // expert_model_parallel_size
  int dp = 0;  // 0: world / (tp * cp * pp)
  std::string order = "tp-cp-ep-dp-pp";
};

// A rank's position in both grids.
struct RankCoords {
  int tp = 0, cp = 0, dp = 0, pp = 0;  // dense grid
  int ep = 0, expert_dp = 0;           // expert grid (its tp and pp equal the dense ones)
};

// What the run must satisfy for a layout besides the model's sizes (check_parallel_layout in
// model/decoder_spec.h); zeros skip a check.
struct LayoutChecks {
  int64_t seq_length = 0;
  bool sequence_parallel = false;
  int64_t num_layers_per_virtual_pipeline_stage = 0;
  int64_t global_batch_size = 0;
  int64_t micro_batch_size = 0;
  // Megatron's uneven pipeline split (0: an even share).
  int64_t decoder_first_pipeline_num_layers = 0;
  int64_t decoder_last_pipeline_num_layers = 0;
};

class ParallelDims {
 public:
  // Throws primus::Error naming the sizes and the world when the product does not match
  // or the order string is malformed.
  static ParallelDims create(int world_size, const ParallelSizes& sizes);

  int world_size() const { return world_; }
  int tp() const { return tp_; }
  int pp() const { return pp_; }
  int cp() const { return cp_; }
  int ep() const { return ep_; }
  int dp() const { return dp_; }
  int expert_dp() const { return expert_dp_; }
  // The order with every dim present, fastest first, e.g. {"tp","cp","ep","dp","pp"}.
  const std::vector<std::string>& order() const { return order_; }

  RankCoords coords(int rank) const;

  // Every group of ranks that differ only along `dims` ("tp", "dp", "dp-cp", "tp-pp",
  // "ep", "expert_dp", ...), each group listed with the first dim of the order fastest;
  // a rank's index in its group is its rank in that group's communicator. Names from the
  // expert grid (ep, expert_dp) may not be mixed with cp or dp.
  std::vector<std::vector<int>> groups(std::string_view dims) const;
  // The group of `dims` that holds `rank`.
  std::vector<int> group_of(int rank, std::string_view dims) const;

  // "tp2 cp1 ep1 dp2 pp2 (world 8, order tp-cp-ep-dp-pp)"
  std::string describe() const;

 private:
  struct Dim {
    std::string name;
    int size;
  };
  std::vector<Dim> dense_grid() const;
  std::vector<Dim> expert_grid() const;

  int world_ = 1, tp_ = 1, pp_ = 1, cp_ = 1, ep_ = 1, dp_ = 1, expert_dp_ = 1;
  std::vector<std::string> order_;
};

// ---- The layout rules, one definition each ---------------------------------------------------
//
// What a model and a run must meet for a parallel layout is stated here once: the config check
// (config::validate, which shows where each key was set) and the start-up check
// (check_parallel_layout in model/decoder_spec.h) both call these. Each returns "" when the rule
// holds, else the problem, naming the keys and the fix.

// A number as a layout message shows it: "key = value", then " (source)" when it is known where
// it was set ("command line", "model.yaml:12").
struct LayoutValue {
  LayoutValue(std::string k, int64_t v, std::string from = "") : key(std::move(k)), value(v), source(std::move(from)) {}
  std::string key;
  int64_t value = 0;
  std::string source;
  std::string str() const;
};

// `size` splits evenly over the ranks of `parallel`: "tensor_model_parallel_size = 4 must divide
// num_attention_heads = 6", then `fix` when given.
std::string split_problem(const LayoutValue& size, const LayoutValue& parallel, std::string_view fix = {});

// An even pipeline split: pp must divide num_layers, or Megatron's uneven split sets the first /
// last stages apart.
std::string pipeline_split_problem(const LayoutValue& num_layers, const LayoutValue& pp);

// Megatron's rule: expert parallelism combined with tensor parallelism needs sequence
// parallelism (each tensor-parallel rank then routes its own share of the tokens).
std::string expert_tensor_parallel_problem(const LayoutValue& ep, const LayoutValue& tp, bool sequence_parallel);

// Expert parallelism (ep > 1) needs routed experts.
std::string expert_parallel_problem(const LayoutValue& ep, bool has_experts);

// Context parallelism gives each rank two balanced chunks of every sequence: 2 cp must divide
// seq_length.
std::string context_parallel_seq_problem(const LayoutValue& seq_length, const LayoutValue& cp);

// Every step takes the same number of micro-batches on every data-parallel rank: micro_batch x
// dp must divide the global batch. `detail` (where the sizes come from) is shown in brackets.
std::string batch_split_problem(const LayoutValue& global_batch, int64_t micro_batch, int64_t dp,
                                std::string_view detail = {});

}  // namespace primus::parallel
