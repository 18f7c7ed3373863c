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
  if (M == 1) {
    // One row (a decode step's activations): a matrix-vector product. OpenBLAS's sgemm does not
    // route M = 1 to its gemv kernels and runs a packed GEMM that reads the weights twice as slowly.
    // out^T (N) = alpha op(b)^T (N,K) x + beta out^T, x = op(a)'s single row (contiguous: a is
    // (1,K), or (K,1) transposed).
    const bool b_nk = tb == Transpose::Yes;  // b stored (N,K): op(b)^T is b itself
    if (beta == 0.f) out.zero_();  // beta = 0 must not read out (it may hold NaN); not every BLAS skips it
    cblas_sgemv(CblasRowMajor, b_nk ? CblasNoTrans : CblasTrans, static_cast<blasint>(b.size(0)),
                static_cast<blasint>(b.size(1)), alpha, b.data<float>(), static_cast<blasint>(b.size(1)),
                a.data<float>(), 1, beta, out.data<float>(), 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta == Transpose::Yes ? CblasTrans : CblasNoTrans,
              tb == Transpose::Yes ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, a.data<float>(),
              static_cast<blasint>(a.size(1)), b.data<float>(), static_cast<blasint>(b.size(1)), beta,
              out.data<float>(), static_cast<blasint>(N));
}

}  // namespace primus::ops::cpu
