// Direct preference optimisation (Rafailov et al. 2023) and its variants, with the formulas and
// names TRL's DPOTrainer uses, on the summed log-probabilities of each completion:
//
//   logp(y) = sum over the completion's tokens of log pi(y_t | x, y_<t)   (policy pi, reference pi_ref)
//   Δ = [logp(y_w) - logp_ref(y_w)] - [logp(y_l) - logp_ref(y_l)]         (w chosen, l rejected)
//
//   sigmoid  -(1-ε) log σ(βΔ) - ε log σ(-βΔ)              (ε = label smoothing: cDPO; 0 = DPO)
//   robust   (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)  (Chowdhury et al. 2024)
//   hinge    relu(1 - βΔ)                                  (SLiC)
//   ipo      (Δ - 1/(2β))²  with every logp divided by its completion's length (Azar et al. 2023)
//
// Metrics (TRL's): rewards/chosen = β (logp(y_w) - logp_ref(y_w)), rewards/rejected likewise,
// rewards/margins = their difference, rewards/accuracies = share of pairs with chosen > rejected.
// The loss is the mean over the pairs of the global batch.
#pragma once

#include <string_view>
#include <vector>

namespace primus::train {

enum class DpoLossType { Sigmoid, Hinge, Ipo, Robust };
// "sigmoid" | "hinge" | "ipo" | "robust"; anything else throws naming the key dpo_loss_type.
DpoLossType parse_dpo_loss_type(std::string_view name);
const char* dpo_loss_type_name(DpoLossType t);

struct DpoOptions {
  double beta = 0.1;             // dpo_beta
  DpoLossType loss = DpoLossType::Sigmoid;
  double label_smoothing = 0.0;  // dpo_label_smoothing: sigmoid and robust, in [0, 0.5)
};

// P pairs: summed completion log-probs of the policy and the reference, and the completions'
// token counts (used by ipo).
struct DpoPairs {
  std::vector<double> policy_chosen, policy_rejected, ref_chosen, ref_rejected;
  std::vector<double> len_chosen, len_rejected;
  size_t size() const { return policy_chosen.size(); }
};

struct DpoStats {
  double loss_sum = 0;                       // sum over pairs of the loss
  double chosen_reward_sum = 0, rejected_reward_sum = 0, accuracy_sum = 0;
  double pairs = 0;
  DpoStats& operator+=(const DpoStats& o);
};

// The losses and statistics of the pairs; with d_policy_chosen / d_policy_rejected given,
// also d (sum of losses) / d logp(y) of each completion.
DpoStats dpo_loss(const DpoPairs& pairs, const DpoOptions& o, std::vector<double>* d_policy_chosen = nullptr,
                  std::vector<double>* d_policy_rejected = nullptr);

}  // namespace primus::train
