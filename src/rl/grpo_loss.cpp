#include "rl/grpo_loss.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/strings.h"

namespace primus::rl {

GrpoLossType parse_grpo_loss_type(std::string_view name) {
  if (name == "grpo") return GrpoLossType::Grpo;
  if (name == "dapo") return GrpoLossType::Dapo;
  if (name == "dr_grpo") return GrpoLossType::DrGrpo;
  throw Error(fmt::format("grpo_loss_type '{}' is not one of grpo, dapo, dr_grpo{}", name,
                          did_you_mean(std::string(name), {"grpo", "dapo", "dr_grpo"})));
}

const char* grpo_loss_type_name(GrpoLossType t) {
  switch (t) {
    case GrpoLossType::Grpo: return "grpo";
    case GrpoLossType::Dapo: return "dapo";
    case GrpoLossType::DrGrpo: return "dr_grpo";
  }
  return "?";
}

RewardScaling parse_reward_scaling(std::string_view name) {
  if (name == "group") return RewardScaling::Group;
  if (name == "batch") return RewardScaling::Batch;
  if (name == "none") return RewardScaling::None;
  throw Error(fmt::format("scale_rewards '{}' is not one of group, batch, none{}", name,
                          did_you_mean(std::string(name), {"group", "batch", "none"})));
}

const char* reward_scaling_name(RewardScaling s) {
  switch (s) {
    case RewardScaling::Group: return "group";
    case RewardScaling::Batch: return "batch";
    case RewardScaling::None: return "none";
  }
  return "?";
}

namespace {
// Unbiased standard deviation (n - 1), 0 for fewer than two values.
double stddev(const double* v, size_t n) {
  if (n < 2) return 0.0;
  double mean = 0;
  for (size_t i = 0; i < n; ++i) mean += v[i];
  mean /= static_cast<double>(n);
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += (v[i] - mean) * (v[i] - mean);
  return std::sqrt(ss / static_cast<double>(n - 1));
}
}  // namespace

std::vector<double> grpo_advantages(const std::vector<double>& rewards, int64_t group, RewardScaling scaling) {
  PRIMUS_CHECK(group >= 1 && rewards.size() % static_cast<size_t>(group) == 0,
               "grpo_advantages: {} rewards do not form groups of {}", rewards.size(), group);
  const size_t G = static_cast<size_t>(group);
  std::vector<double> adv(rewards.size());
  const double batch_std = stddev(rewards.data(), rewards.size());
  for (size_t g0 = 0; g0 < rewards.size(); g0 += G) {
    double mean = 0;
    for (size_t i = 0; i < G; ++i) mean += rewards[g0 + i];
    mean /= static_cast<double>(G);
    double div = 1.0;
    if (scaling == RewardScaling::Group) div = stddev(rewards.data() + g0, G) + 1e-6;
    if (scaling == RewardScaling::Batch) div = batch_std + 1e-6;
    for (size_t i = 0; i < G; ++i) adv[g0 + i] = (rewards[g0 + i] - mean) / div;
  }
  return adv;
}

GrpoTokenLoss grpo_token_loss(double logp, double logp_old, double logp_ref, double advantage,
                              const GrpoLossOptions& o) {
  GrpoTokenLoss r;
  const double ratio = std::exp(logp - logp_old);
  const double clipped = std::clamp(ratio, 1.0 - o.epsilon_low, 1.0 + o.epsilon_high);
  const double unclipped_term = ratio * advantage, clipped_term = clipped * advantage;
  r.clipped_low = advantage < 0 && ratio < 1.0 - o.epsilon_low;
  r.clipped_high = advantage > 0 && ratio > 1.0 + o.epsilon_high;
  r.loss = -std::min(unclipped_term, clipped_term);
  // Inside the clip range both terms are ρÂ (the clamp passes the gradient); outside it the
  // minimum is the unclipped term unless that is a clip named above.
  r.dlogp = (r.clipped_low || r.clipped_high) ? 0.0 : -unclipped_term;
  if (o.beta != 0.0) {
    const double d = logp_ref - logp, e = std::exp(d);
    r.kl = e - d - 1.0;
    r.loss += o.beta * r.kl;
    r.dlogp += o.beta * (1.0 - e);
  }
  return r;
}

double grpo_token_norm(const GrpoLossOptions& o, int64_t length, double sequences, double tokens) {
  switch (o.loss_type) {
    case GrpoLossType::Grpo: return 1.0 / (std::max<double>(1.0, static_cast<double>(length)) * std::max(1.0, sequences));
    case GrpoLossType::Dapo: return 1.0 / std::max(1.0, tokens);
    case GrpoLossType::DrGrpo:
      return 1.0 / (std::max(1.0, sequences) * static_cast<double>(std::max<int64_t>(1, o.max_completion_length)));
  }
  return 0.0;
}

}  // namespace primus::rl
