// GEMM on CPU: OpenBLAS cblas_sgemm in row-major layout (OpenBLAS threads internally).
#include <cblas.h>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

// out (M,N) = alpha * op(a) @ op(b) + beta * out; a is stored (M,K) or (K,M) when
// transposed, b (K,N) or (N,K). Leading dimensions are the stored row lengths.
void CpuBackend::matmul(Tensor& out, const Tensor& a, Transpose ta, const Tensor& b, Transpose tb,
                        float alpha, float beta) {
  require_f32(out, "matmul", "out");
  require_f32(a, "matmul", "a");
  require_f32(b, "matmul", "b");
  const int64_t M = out.size(0), N = out.size(1);
  const int64_t K = ta == Transpose::Yes ? a.size(0) : a.size(1);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty reduction: out = beta * out
    if (beta == 0.f) out.zero_();
    else scale(out, beta);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta == Transpose::Yes ? CblasTrans : CblasNoTrans,
              tb == Transpose::Yes ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, a.data<float>(),
              static_cast<blasint>(a.size(1)), b.data<float>(), static_cast<blasint>(b.size(1)), beta,
              out.data<float>(), static_cast<blasint>(N));
}

}  // namespace primus::ops::cpu
