// Loss scaling for fp16 training, as Megatron's DynamicGradScaler does it.
//
// The loss is multiplied by scale() before backward so small fp16 gradients do not flush
// to zero; the optimizer divides the gradients by it again (AdamW's grad_scale). After a
// step whose gradients overflowed (non-finite norm: the optimizer skipped it), the scale
// is halved once `hysteresis` overflows have been seen (never below min_scale); after
// `window` clean steps in a row it doubles and the hysteresis budget is restored.
// bf16 and fp32 training use a constant scale of 1.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "train/train_options.h"

namespace primus::train {

class LossScaler {
 public:
  // Scale 1, never changes (bf16 / fp32).
  LossScaler() = default;
  // fp16: static when options.static_scale is set, else dynamic.
  explicit LossScaler(const LossScaleOptions& options);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  // After each optimizer step: `overflow` = the gradients were not finite.
  void update(bool overflow);

  nlohmann::json state() const;            // for checkpoints
  void load_state(const nlohmann::json&);  // throws naming the missing field

 private:
  bool dynamic_ = false;
  double scale_ = 1, min_scale_ = 1;
  int64_t window_ = 1000, hysteresis_ = 2;
  int64_t clean_steps_ = 0, hysteresis_left_ = 2;
};

}  // namespace primus::train
