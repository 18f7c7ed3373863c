#include "train/dpo_loss.h"

#include <cmath>

#include "core/error.h"

namespace primus::train {

namespace {
// log σ(z) and σ(z), stable for large |z|.
double log_sigmoid(double z) { return z >= 0 ? -std::log1p(std::exp(-z)) : z - std::log1p(std::exp(z)); }
double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }
}  // namespace

DpoLossType parse_dpo_loss_type(std::string_view name) {
  if (name == "sigmoid") return DpoLossType::Sigmoid;
  if (name == "hinge") return DpoLossType::Hinge;
  if (name == "ipo") return DpoLossType::Ipo;
  if (name == "robust") return DpoLossType::Robust;
  fail("dpo_loss_type: '{}' is not a DPO loss; choose sigmoid (DPO), hinge, ipo or robust", name);
}

const char* dpo_loss_type_name(DpoLossType t) {
  switch (t) {
    case DpoLossType::Sigmoid: return "sigmoid";
    case DpoLossType::Hinge: return "hinge";
    case DpoLossType::Ipo: return "ipo";
    case DpoLossType::Robust: return "robust";
  }
  return "?";
}

DpoStats& DpoStats::operator+=(const DpoStats& o) {
  loss_sum += o.loss_sum;
  chosen_reward_sum += o.chosen_reward_sum;
  rejected_reward_sum += o.rejected_reward_sum;
  accuracy_sum += o.accuracy_sum;
  pairs += o.pairs;
  return *this;
}

DpoStats dpo_loss(const DpoPairs& pr, const DpoOptions& o, std::vector<double>* d_chosen,
                  std::vector<double>* d_rejected) {
  const size_t P = pr.size();
  PRIMUS_CHECK(pr.policy_rejected.size() == P && pr.ref_chosen.size() == P && pr.ref_rejected.size() == P &&
                   pr.len_chosen.size() == P && pr.len_rejected.size() == P,
               "dpo_loss: the pair arrays differ in length");
  PRIMUS_CHECK(o.beta > 0, "dpo_beta = {} must be > 0", o.beta);
  PRIMUS_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 0.5, "dpo_label_smoothing = {} must be in [0, 0.5)",
               o.label_smoothing);
  if (d_chosen != nullptr) d_chosen->assign(P, 0.0);
  if (d_rejected != nullptr) d_rejected->assign(P, 0.0);
  const double b = o.beta, eps = o.label_smoothing;
  DpoStats s;
  for (size_t i = 0; i < P; ++i) {
    const double rc = pr.policy_chosen[i] - pr.ref_chosen[i], rr = pr.policy_rejected[i] - pr.ref_rejected[i];
    s.chosen_reward_sum += b * rc;
    s.rejected_reward_sum += b * rr;
    s.accuracy_sum += rc > rr ? 1.0 : 0.0;
    s.pairs += 1;
    // d Δ / d logp(y_w) = +scale_w, d Δ / d logp(y_l) = -scale_l (1, or 1/len under ipo)
    double scale_w = 1, scale_l = 1;
    if (o.loss == DpoLossType::Ipo) {
      PRIMUS_CHECK(pr.len_chosen[i] > 0 && pr.len_rejected[i] > 0, "dpo_loss: ipo needs non-empty completions");
      scale_w = 1.0 / pr.len_chosen[i];
      scale_l = 1.0 / pr.len_rejected[i];
    }
    const double delta = scale_w * rc - scale_l * rr;
    double loss = 0, g = 0;  // g = d loss / d Δ
    switch (o.loss) {
      case DpoLossType::Sigmoid:
        loss = -(1 - eps) * log_sigmoid(b * delta) - eps * log_sigmoid(-b * delta);
        g = -(1 - eps) * b * sigmoid(-b * delta) + eps * b * sigmoid(b * delta);
        break;
      case DpoLossType::Robust:
        loss = (-(1 - eps) * log_sigmoid(b * delta) + eps * log_sigmoid(-b * delta)) / (1 - 2 * eps);
        g = (-(1 - eps) * b * sigmoid(-b * delta) - eps * b * sigmoid(b * delta)) / (1 - 2 * eps);
        break;
      case DpoLossType::Hinge:
        loss = std::max(0.0, 1 - b * delta);
        g = 1 - b * delta > 0 ? -b : 0.0;
        break;
      case DpoLossType::Ipo: {
        const double r = delta - 1 / (2 * b);
        loss = r * r;
        g = 2 * r;
        break;
      }
    }
    s.loss_sum += loss;
    if (d_chosen != nullptr) (*d_chosen)[i] = g * scale_w;
    if (d_rejected != nullptr) (*d_rejected)[i] = -g * scale_l;
  }
  return s;
}

}  // namespace primus::train
