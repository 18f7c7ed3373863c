// Backend's default matmul_add: the GEMM, then the add, as two passes (the CPU reference). The
// CUDA backend overrides it with one cuBLASLt call that adds c in the epilogue.
#include "ops/backend.h"

namespace primus::ops {

void Backend::matmul_add(Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb, const Tensor& c) {
  matmul(out, a, ta, b, tb, 1.f, 0.f);
  add(out, out, c);
}

}  // namespace primus::ops
