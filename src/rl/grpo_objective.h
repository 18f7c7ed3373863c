// The GRPO objective of a training run (rl/grpo_loss.h has the formulas, rl/rewards.h the
// reward functions). One ROUND = one generation of rollouts, reused by num_iterations (μ)
// optimizer steps; iteration i belongs to round i / μ.
//
//   1. at the first iteration of a round: P = global_batch_size / G prompts, the next ones of a
//      seeded shuffle of the prompt set (reshuffled every epoch); data-parallel rank d takes
//      prompts [d P/dp, (d+1) P/dp) and samples G completions of each with the policy's current
//      weights (infer::generate on the same device, no weight copy). The sampling stream of a
//      completion is its index in the round's global batch and the seed is drawn from (seed,
//      round): rollouts do not depend on the data-parallel split, and a resumed run samples
//      what the uninterrupted one did.
//   2. rewards (scored on each rank, summed over dp into the global batch), advantages over
//      each group of G (or the batch), every token of a completion carrying its advantage;
//      the rows prompt + completion, loss on the completion's tokens (its stop token too);
//   3. with β > 0, the reference model's log-probs of every completion token (one forward);
//   4. each step, one loss-weight hook per micro-batch (DecoderModel::MicroBatchExtras): from
//      the policy's token log-probs it computes the clipped objective and returns each token's
//      gradient weight. The first step of a round records those log-probs as π_old (so ρ = 1
//      there, as TRL with its old log-probs detached); later steps of the round reuse them.
//   5. the statistics the log reports (TRL's names), summed over dp.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/data_config.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/kv_cache.h"
#include "infer/sampling.h"
#include "model/decoder.h"
#include "parallel/communicator.h"
#include "rl/grpo_loss.h"
#include "rl/grpo_options.h"
#include "rl/prompt_set.h"
#include "rl/rewards.h"

namespace primus::pipeline {
class PipelinedModel;
}

namespace primus::rl {

// Where a run stands, for the checks the trainer makes.
struct GrpoLayout {
  int64_t global_batch = 0;  // completions per optimizer step
  int64_t micro_batch = 1;
  int64_t seq_length = 0;
  int dp_rank = 0, dp_size = 1;
  uint64_t seed = 1234;
};

// One step's statistics on this rank (sums; report() divides).
struct GrpoStepStats {
  double objective = 0;  // Σ n_t loss_t over this rank's tokens
  double tokens = 0, kl_sum = 0, clipped_low = 0, clipped_high = 0;
};

class GrpoObjective {
 public:
  // Checks the layout (names the keys): global_batch_size a multiple of num_generations, the
  // prompts of a round a multiple of the data-parallel size, the rows fitting seq_length.
  GrpoObjective(GrpoOptions options, std::vector<RlPrompt> prompts, data::Tokenizer& tokenizer,
                std::vector<int32_t> stop_ids, GrpoLayout layout);
  ~GrpoObjective();

  const GrpoOptions& options() const { return o_; }
  int64_t prompts_per_round() const { return layout_.global_batch / o_.num_generations; }
  bool round_starts_at(int64_t iteration) const { return iteration % o_.num_iterations == 0; }

  // The policy's current weights, whole (what infer::CachedDecoder reads: full tensors on the
  // context's device), asked for once per round.
  using WeightsSource = std::function<NamedTensorList()>;
  // Step 1-3 when `iteration` starts a round (the model `config` with `weights` to sample from;
  // reference: the frozen model when β > 0), then this rank's micro-batches for the step.
  const std::vector<data::Batch>& batches(int64_t iteration, const ModelConfig& config, const WeightsSource& weights,
                                          pipeline::PipelinedModel* reference, ops::Context& ctx,
                                          parallel::Communicator& dp);
  // Step 4: the hooks for the micro-batches of the last batches() call, `scale` the loss scale.
  const std::vector<LossWeightsHook>& hooks(double scale);
  // Step 5: the named values of the step, summed over dp: "grpo loss" first, then reward,
  // reward_std, rewards/<function>, kl (β > 0), clip_ratio/*, entropy, completions/*,
  // frac_reward_zero_std, and the round's generation time and tokens/s.
  std::vector<std::pair<std::string, double>> report(parallel::Communicator& dp) const;
  // Seconds the last batches() spent generating, and in the reference model's forward (0 when
  // it did not start a round).
  double generation_seconds() const { return last_generation_s_; }
  double reference_seconds() const { return last_reference_s_; }

 private:
  struct Row {
    int64_t completion_len = 0;
    double advantage = 0;
  };
  void new_round(int64_t round, const ModelConfig& config, const WeightsSource& weights,
                 pipeline::PipelinedModel* reference, ops::Context& ctx, parallel::Communicator& dp);
  std::vector<int64_t> round_prompts(int64_t round) const;  // global prompt indices of the round

  GrpoOptions o_;
  std::vector<RlPrompt> prompts_;
  data::Tokenizer& tok_;
  std::vector<int32_t> stop_ids_;
  GrpoLayout layout_;
  std::unique_ptr<RewardFunctions> rewards_;

  // The round's rollouts on this rank.
  std::vector<data::Batch> batches_;
  std::vector<Row> rows_;
  std::vector<std::vector<float>> old_logps_, ref_logps_;  // per micro-batch, B*T
  bool old_recorded_ = false;
  double global_sequences_ = 0, global_tokens_ = 0;
  std::vector<LossWeightsHook> hooks_;
  mutable GrpoStepStats step_;
  // Round statistics (global, computed once per round).
  std::vector<std::pair<std::string, double>> round_stats_;
  double last_generation_s_ = 0, last_reference_s_ = 0;
  // The rollouts' KV cache (generation_kv_cache_memory): allocated by the first round, reused.
  std::unique_ptr<infer::KvCache> rollout_cache_;
};

}  // namespace primus::rl
