// packed_ops_dump: runs the CPU ops of packed sequences on seeded random inputs and writes
// inputs and outputs for an independent reference (tests/ops/check_packed.py):
//
//   packed_ops_dump <out.safetensors>
//     per case c (metadata "cases": JSON list of {name, B, T, Hq, Hkv, D, Dv, causal, scale}):
//       "c.q" (B,T,Hq,D), "c.k", "c.v", "c.dout", "c.segments" (B,T) int32
//       -> "c.out", "c.lse" (B,Hq,T), "c.dq", "c.dk", "c.dv"   (document-masked attention)
//     rope (metadata "rope": JSON {B, T, H, D, R, base}):
//       "rope.x" (B,T,H,D), "rope.dy", "rope.positions" (B,T) int32 (restarting at 0 per document)
//       -> "rope.y" = rope_forward with tables gathered by the positions, "rope.dx" = rope_backward(dy)
#include <cmath>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/safetensors.h"
#include "ops/ops.h"

using namespace primus;

namespace {

Tensor randn(Shape shape, uint64_t stream) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  CounterRng(2024, stream).fill_normal(t, 0.f, 1.f);
  return t;
}

// Documents of row b: lengths cycle through a fixed pattern (length-1 documents included),
// offset per row; ids non-decreasing with gaps. Also the positions within each document.
void documents(int64_t B, int64_t T, Tensor& segments, Tensor& positions) {
  const int64_t lengths[] = {5, 1, 17, 1, 1, 9, 30, 3, 2, 12};
  segments = Tensor::empty({B, T}, DType::I32);
  positions = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0, d = b * 3;
    int32_t id = static_cast<int32_t>(b);
    while (t < T) {
      const int64_t len = lengths[d++ % 10];
      for (int64_t j = 0; j < len && t < T; ++j, ++t) {
        segments.data<int32_t>()[b * T + t] = id;
        positions.data<int32_t>()[b * T + t] = static_cast<int32_t>(j);
      }
      id += 2;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <out.safetensors>\n", argv[0]);
    return 2;
  }
  auto ctx = ops::Context::cpu();
  NamedTensorList tensors;
  nlohmann::json cases = nlohmann::json::array();
  struct Case {
    const char* name;
    int64_t B, T, Hq, Hkv, D, Dv;
    bool causal;
  };
  const Case list[] = {{"gqa_causal", 2, 70, 4, 2, 16, 16, true},
                       {"mha_full", 2, 45, 2, 2, 8, 8, false},
                       {"mla_causal", 1, 150, 2, 1, 24, 16, true}};
  uint64_t stream = 1;
  for (const Case& c : list) {
    const std::string p = std::string(c.name) + ".";
    Tensor seg, pos;
    documents(c.B, c.T, seg, pos);
    Tensor q = randn({c.B, c.T, c.Hq, c.D}, stream++), k = randn({c.B, c.T, c.Hkv, c.D}, stream++),
           v = randn({c.B, c.T, c.Hkv, c.Dv}, stream++), dout = randn({c.B, c.T, c.Hq, c.Dv}, stream++);
    const float scale = 1.f / std::sqrt(static_cast<float>(c.D));
    Tensor out = Tensor::empty({c.B, c.T, c.Hq, c.Dv}, DType::F32), lse = Tensor::empty({c.B, c.Hq, c.T}, DType::F32);
    ops::attention_forward(ctx, out, lse, q, k, v, scale, c.causal, &seg);
    Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
           dv = Tensor::empty(v.shape(), DType::F32);
    ops::attention_backward(ctx, dq, dk, dv, dout, q, k, v, out, lse, scale, c.causal, &seg);
    for (auto& [n, t] : NamedTensorList{{"q", q}, {"k", k}, {"v", v}, {"dout", dout}, {"segments", seg},
                                        {"out", out}, {"lse", lse}, {"dq", dq}, {"dk", dk}, {"dv", dv}})
      tensors.emplace_back(p + n, t);
    cases.push_back(nlohmann::json{{"name", c.name}, {"B", c.B},   {"T", c.T},           {"Hq", c.Hq},
                                   {"Hkv", c.Hkv},   {"D", c.D},   {"Dv", c.Dv},         {"causal", c.causal},
                                   {"scale", scale}});
  }

  // RoPE with per-token tables: positions restart at every document.
  const int64_t B = 2, T = 60, H = 3, D = 16, R = 12;
  const float base = 10000.f;
  Tensor seg, pos;
  documents(B, T, seg, pos);
  Tensor table_cos, table_sin;
  ops::rope_tables(table_cos, table_sin, T, ops::rope_inv_freq(R, base, {}));
  Tensor cos = Tensor::empty({B * T, R / 2}, DType::F32), sin = Tensor::empty({B * T, R / 2}, DType::F32);
  ops::rope_gather_tables(ctx, cos, sin, table_cos, table_sin, pos);
  Tensor x = randn({B, T, H, D}, 100), dy = randn({B, T, H, D}, 101);
  Tensor y = Tensor::empty(x.shape(), DType::F32), dx = Tensor::empty(x.shape(), DType::F32);
  ops::rope_forward(ctx, y, x, cos, sin);
  ops::rope_backward(ctx, dx, dy, cos, sin);
  for (auto& [n, t] : NamedTensorList{{"x", x}, {"dy", dy}, {"positions", pos}, {"y", y}, {"dx", dx}})
    tensors.emplace_back("rope." + n, t);
  const nlohmann::json rope = {{"B", B}, {"T", T}, {"H", H}, {"D", D}, {"R", R}, {"base", base}};
  save_safetensors(argv[1], tensors, {{"cases", cases.dump()}, {"rope", rope.dump()}});
  std::printf("wrote %zu tensors to %s\n", tensors.size(), argv[1]);
  return 0;
}
