// What a GRPO run reads from its config (train/train_options.cpp fills it; docs/RL.md lists
// the keys): sampling of the rollouts, the loss (rl/grpo_loss.h) and the reward functions
// (rl/rewards.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "infer/sampling.h"
#include "rl/grpo_loss.h"

namespace primus::rl {

struct RewardOptions {
  std::vector<std::string> funcs = {"accuracy"};  // reward_funcs
  std::vector<double> weights;                    // reward_weights (empty: 1 each)
  std::string answer_key = "answer";              // reward_answer_key
  std::string answer_regex;                       // reward_answer_regex ("" = whole completion)
  std::string format_regex;                       // reward_format_regex (needed by format)
  int64_t overlong_buffer_length = 0;             // needed by overlong (> 0)
  int64_t max_completion_length = 256;
  std::string command;                            // reward_command (needed by command)
};

struct GrpoOptions {
  int64_t num_generations = 8;          // G
  int64_t max_prompt_length = 512;
  int64_t max_completion_length = 256;
  infer::SamplingOptions sampling{1.0f, 0, 1.0f, 0};  // temperature, top_k, top_p (seed: the run's)
  std::vector<std::string> stop_strings;
  int64_t num_iterations = 1;           // μ
  RewardScaling scale_rewards = RewardScaling::Group;
  GrpoLossOptions loss;
  RewardOptions rewards;
  // generation_kv_cache_memory: bytes of the rollouts' KV cache (slots of max_prompt_length +
  // max_completion_length - 1 positions, allocated once); 0 = one slot per completion.
  int64_t generation_kv_cache_memory = 0;
};

}  // namespace primus::rl
