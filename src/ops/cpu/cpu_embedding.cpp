// Embedding lookup and its scatter-add backward on CPU.
#include <cstring>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

namespace {
void check_ids(const int32_t* ids, int64_t n, int64_t vocab, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    PRIMUS_CHECK(ids[i] >= 0 && ids[i] < vocab,
                 "{}: token id {} at position {} is outside the embedding table's {} rows (is "
                 "padded_vocab_size smaller than the tokenizer's vocabulary?)",
                 op, ids[i], i, vocab);
}
}  // namespace

// out (N,C) = table[ids]
void CpuBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  require_f32(out, "embedding_forward", "out");
  require_f32(table, "embedding_forward", "table");
  const int64_t N = ids.numel(), C = table.size(1);
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, table.size(0), "embedding_forward");
  const float* tab = table.data<float>();
  float* o = out.data<float>();
  pool_.parallel_for(N, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(o + i * C, tab + static_cast<int64_t>(id[i]) * C, C * sizeof(float));
  }, 64);
}

// dtable (V,C) += sum over i with ids[i] == v of dout[i]. Threads own column ranges, so
// no two threads touch the same element and the summation order is the row order.
void CpuBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  require_f32(dtable, "embedding_backward", "dtable");
  require_f32(dout, "embedding_backward", "dout");
  const int64_t N = ids.numel(), C = dtable.size(1);
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, dtable.size(0), "embedding_backward");
  const float* g = dout.data<float>();
  float* d = dtable.data<float>();
  pool_.parallel_for(C, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < N; ++i) {
      float* row = d + static_cast<int64_t>(id[i]) * C;
      const float* src = g + i * C;
      for (int64_t c = c0; c < c1; ++c) row[c] += src[c];
    }
  }, 16);
}

}  // namespace primus::ops::cpu
