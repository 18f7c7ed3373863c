// Element types and devices of tensors, and the bf16/fp16 conversions the CPU path needs.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace primus {

enum class DType : uint8_t { F32, F16, BF16, F8E4M3, F8E5M2, F64, I64, I32, I16, I8, U16, U8, Bool };
enum class Device : uint8_t { CPU, CUDA };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    default: return 1;
  }
}

std::string_view dtype_name(DType t);    // "fp32", "bf16", ...
std::string_view safetensors_name(DType t);  // "F32", "BF16", ...
DType dtype_from_safetensors(std::string_view name);  // throws on unknown
std::string_view device_name(Device d);
// A floating-point element type (fp32, bf16, fp16).
inline bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// bf16 <-> fp32 with round-to-nearest-even (NaN kept quiet).
inline uint16_t fp32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_fp32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float fp16_bits_to_fp32(uint16_t h);
uint16_t fp32_to_fp16_bits(float f);

}  // namespace primus
