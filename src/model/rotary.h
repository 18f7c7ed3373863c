// Rotary position embedding of a model: which dims rotate, at what frequencies, and the
// attention softmax scale that goes with them.
//
//   GQA (Llama, Mixtral): R = head_dim * rotary_percent dims of every q/k head,
//       theta_i = rotary_base^(-2i/R), Llama 3.1 scaling when use_rope_scaling;
//       softmax scale 1/sqrt(head_dim).
//   MLA (DeepSeek):       R = qk_pos_emb_head_dim (the rotary part of each head),
//       YaRN when rotary_scaling_factor s > 1 (ops::rope_inv_freq), cos/sin tables scaled by
//       m(s, mscale) / m(s, mscale_all_dim), softmax scale m(s, mscale_all_dim)^2 /
//       sqrt(qk_head_dim + qk_pos_emb_head_dim), with m = ops::yarn_mscale
//       (DeepSeek's reference code; m(s, 0) = 1).
//
// Training (DecoderModel) and generation (infer::CachedDecoder) build their cos/sin tables
// from this; the attention blocks take the softmax scale from it.
#pragma once

#include <vector>

#include "model/model_config.h"

namespace primus {

struct Rotary {
  std::vector<float> inv_freq;  // R/2 frequencies
  float table_scale = 1.f;      // multiplies cos and sin
  float softmax_scale = 1.f;
  int64_t dims() const { return 2 * static_cast<int64_t>(inv_freq.size()); }
};

Rotary rotary_of(const ModelConfig& c);

}  // namespace primus
