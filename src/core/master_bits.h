// An fp32 master weight held as its bf16 model weight plus a 16-bit remainder
// (store_param_remainders; the layout Transformer Engine's FusedAdam uses), so that the
// optimizer keeps 2 bytes per parameter for the master instead of 4, and the master stays
// exact: nothing of the fp32 value is lost.
//
//   split: bits = fp32 bits of the master
//          remainder = low 16 bits of bits, read as int16
//          model     = high 16 bits of bits, + 1 when remainder < 0 (low half >= 0x8000)
//   join:  bits = (model << 16) + remainder   (32-bit wrap-around arithmetic)
//
// The model weight is the master rounded to bf16 half away from zero on the magnitude
// (round-to-nearest, ties away): it differs from round-to-nearest-even only when the low
// half is exactly 0x8000. join(split(x)) == x for every bit pattern.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace primus {

PRIMUS_HOST_DEVICE inline uint32_t join_master_bits(uint16_t model_bits, int16_t remainder) {
  return (static_cast<uint32_t>(model_bits) << 16) + static_cast<uint32_t>(static_cast<int32_t>(remainder));
}

PRIMUS_HOST_DEVICE inline void split_master_bits(uint32_t bits, uint16_t& model_bits, int16_t& remainder) {
  remainder = static_cast<int16_t>(static_cast<uint16_t>(bits & 0xFFFFu));
  model_bits = static_cast<uint16_t>((bits >> 16) + (remainder < 0 ? 1u : 0u));
}

}  // namespace primus

