// Backend's default grouped GEMM of the experts: one matmul per expert over its rows (the CPU
// reference; a device backend may override it with one grouped launch).
#include "ops/backend.h"

namespace primus::ops {

namespace {

// Expert e's weight (out, in) as a view of the stacked w (E, out, in).
Tensor expert_weight(const Tensor& w, int64_t e) { return w.view({w.size(0), w.size(1) * w.size(2)}).rows(e, e + 1).view({w.size(1), w.size(2)}); }

}  // namespace

void Backend::grouped_linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const std::vector<int64_t>& rows) {
  int64_t r0 = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    const int64_t r1 = r0 + rows[e];
    if (r1 > r0) {
      Tensor ye = y.rows(r0, r1);
      matmul(ye, x.rows(r0, r1), Transpose::No, expert_weight(w, static_cast<int64_t>(e)), Transpose::Yes, 1.f, 0.f);
    }
    r0 = r1;
  }
}

void Backend::grouped_linear_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                      const std::vector<int64_t>& rows, bool accumulate) {
  int64_t r0 = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    const auto ei = static_cast<int64_t>(e);
    const int64_t r1 = r0 + rows[e];
    Tensor dwe = expert_weight(dw, ei);
    if (r1 > r0) {
      const Tensor dye = dy.rows(r0, r1);
      if (dx.defined()) {
        Tensor dxe = dx.rows(r0, r1);
        matmul(dxe, dye, Transpose::No, expert_weight(w, ei), Transpose::No, 1.f, 0.f);
      }
      matmul(dwe, dye, Transpose::Yes, x.rows(r0, r1), Transpose::No, 1.f, accumulate ? 1.f : 0.f);
    } else if (!accumulate) {
      fill(dwe, 0.f);
    }
    r0 = r1;
  }
}

}  // namespace primus::ops
