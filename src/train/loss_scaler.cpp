#include "train/loss_scaler.h"

#include <algorithm>

#include "core/error.h"

namespace primus::train {

LossScaler::LossScaler(const LossScaleOptions& o) {
  if (o.static_scale) {
    scale_ = *o.static_scale;
    return;
  }
  dynamic_ = true;
  scale_ = o.initial_scale;
  min_scale_ = o.min_scale;
  window_ = std::max<int64_t>(1, o.window);
  hysteresis_ = std::max<int64_t>(1, o.hysteresis);
  hysteresis_left_ = hysteresis_;
}

void LossScaler::update(bool overflow) {
  if (!dynamic_) return;
  if (overflow) {
    clean_steps_ = 0;
    if (--hysteresis_left_ <= 0) {
      scale_ = std::max(min_scale_, scale_ / 2);
      hysteresis_left_ = hysteresis_;
    }
    return;
  }
  if (++clean_steps_ == window_) {
    scale_ *= 2;
    clean_steps_ = 0;
    hysteresis_left_ = hysteresis_;
  }
}

nlohmann::json LossScaler::state() const {
  return {{"dynamic", dynamic_}, {"scale", scale_}, {"clean_steps", clean_steps_}, {"hysteresis_left", hysteresis_left_}};
}

void LossScaler::load_state(const nlohmann::json& j) {
  for (const char* k : {"scale", "clean_steps", "hysteresis_left"})
    PRIMUS_CHECK(j.contains(k), "checkpoint loss-scaler state lacks '{}' (got {})", k, j.dump());
  if (!dynamic_) return;  // a static/unit scale is what this run's config says
  scale_ = j.at("scale").get<double>();
  clean_steps_ = j.at("clean_steps").get<int64_t>();
  hysteresis_left_ = j.at("hysteresis_left").get<int64_t>();
}

}  // namespace primus::train
