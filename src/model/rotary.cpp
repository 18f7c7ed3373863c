#include "model/rotary.h"

#include <cmath>

#include "ops/ops.h"

namespace primus {

Rotary rotary_of(const ModelConfig& c) {
  ops::RopeScaling s;
  s.original_max_position_embeddings = c.original_max_position_embeddings;
  Rotary r;
  if (c.multi_latent_attention) {
    const double factor = c.rotary_scaling_factor;
    s.yarn = factor > 1.0;
    s.yarn_factor = static_cast<float>(factor);
    s.beta_fast = static_cast<float>(c.beta_fast);
    s.beta_slow = static_cast<float>(c.beta_slow);
    r.inv_freq = ops::rope_inv_freq(c.qk_pos_emb_head_dim, static_cast<float>(c.rotary_base), s);
    const double all_dim = ops::yarn_mscale(factor, c.mscale_all_dim);  // 1 when mscale_all_dim is 0
    r.table_scale = static_cast<float>(ops::yarn_mscale(factor, c.mscale) / all_dim);
    r.softmax_scale =
        static_cast<float>(all_dim * all_dim / std::sqrt(static_cast<double>(c.qk_head_dim + c.qk_pos_emb_head_dim)));
    return r;
  }
  s.enabled = c.use_rope_scaling;
  s.factor = static_cast<float>(c.rope_scaling_factor);
  s.low_freq_factor = static_cast<float>(c.rope_low_freq_factor);
  s.high_freq_factor = static_cast<float>(c.rope_high_freq_factor);
  const auto rotary_dim = static_cast<int64_t>(std::round(static_cast<double>(c.head_dim()) * c.rotary_percent));
  r.inv_freq = ops::rope_inv_freq(rotary_dim, static_cast<float>(c.rotary_base), s);
  r.softmax_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim()));
  return r;
}

}  // namespace primus
