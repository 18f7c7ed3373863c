// Group relative policy optimisation (Shao et al. 2024, DeepSeekMath) and its variants, with the
// formulas and names TRL's GRPOTrainer uses, on the tokens of sampled completions.
//
// Advantages, per group of G completions of one prompt (rewards r_1..r_G):
//   Â_i = r_i - mean(r_group)                                   then divided by
//   scale_rewards group:  std(r_group) + 1e-6                   (std unbiased, n - 1, as torch.std)
//                 batch:  std(r of the whole global batch) + 1e-6
//                 none:   1                                     (Dr. GRPO)
// Every token of completion i gets Â_i.
//
// Per token t of completion i (log-probs of the sampled token under the policy π being trained,
// the policy that sampled it π_old, and the frozen reference π_ref):
//   ρ = exp(logp - logp_old)
//   loss_t = -min(ρ Â, clip(ρ, 1 - ε_low, 1 + ε_high) Â) + β KL_t
//   KL_t = exp(logp_ref - logp) - (logp_ref - logp) - 1          (k3 estimator; only when β > 0)
// The objective is Σ_t n_t loss_t, normalised by loss_type over the global batch of S
// completions with L_i completion tokens each (N = Σ L_i):
//   grpo      n_t = 1 / (S L_i)          (each completion's token mean, then the mean over them)
//   dapo      n_t = 1 / N                (token mean over the global batch; the default)
//   dr_grpo   n_t = 1 / (S L_max)        (L_max = max_completion_length)
//
// d loss_t / d logp = -ρ Â [the unclipped term is the minimum] + β (1 - exp(logp_ref - logp)):
// the clipped term carries no gradient when it is the smaller one, i.e. when Â > 0 and
// ρ > 1 + ε_high, or Â < 0 and ρ < 1 - ε_low (TRL's "high" and "low" clips).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace primus::rl {

enum class GrpoLossType { Grpo, Dapo, DrGrpo };
enum class RewardScaling { Group, Batch, None };
// "grpo" | "dapo" | "dr_grpo" / "group" | "batch" | "none"; anything else throws naming the key.
GrpoLossType parse_grpo_loss_type(std::string_view name);
const char* grpo_loss_type_name(GrpoLossType t);
RewardScaling parse_reward_scaling(std::string_view name);
const char* reward_scaling_name(RewardScaling s);

struct GrpoLossOptions {
  double epsilon_low = 0.2, epsilon_high = 0.2;
  double beta = 0.0;
  GrpoLossType loss_type = GrpoLossType::Dapo;
  int64_t max_completion_length = 256;
};

// Advantages of rewards laid out as consecutive groups of `group` completions (rewards.size()
// a multiple of group). With group std 0 (all rewards equal) the advantages are 0.
std::vector<double> grpo_advantages(const std::vector<double>& rewards, int64_t group, RewardScaling scaling);

// One token's loss and gradient (before the normalisation n_t).
struct GrpoTokenLoss {
  double loss = 0;        // loss_t
  double dlogp = 0;       // d loss_t / d logp
  double kl = 0;          // KL_t (0 when β = 0)
  bool clipped_low = false, clipped_high = false;
};
GrpoTokenLoss grpo_token_loss(double logp, double logp_old, double logp_ref, double advantage,
                              const GrpoLossOptions& o);

// n_t of a completion with `length` tokens in a global batch of `sequences` completions and
// `tokens` completion tokens.
double grpo_token_norm(const GrpoLossOptions& o, int64_t length, double sequences, double tokens);

}  // namespace primus::rl
