// Helpers for the op tests: random tensors, naive reference loops, and a central
// finite-difference gradient check (max_rel_error comes from tests/test_util.h).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "../test_util.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/ops.h"

namespace primus::test {

inline Tensor randn(Shape shape, uint64_t stream, float std = 1.f) {
  Tensor t = Tensor::empty(std::move(shape), DType::F32);
  CounterRng(7, stream).fill_normal(t, 0.f, std);
  return t;
}

inline Tensor ints(const std::vector<int32_t>& v, Shape shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

// sum_i w[i] * y[i] in double: the scalar whose gradient w.r.t. y is w.
inline double weighted_sum(const Tensor& y, const Tensor& w) {
  const auto yv = y.to_float_vector(), wv = w.to_float_vector();
  double s = 0;
  for (size_t i = 0; i < yv.size(); ++i) s += static_cast<double>(yv[i]) * wv[i];
  return s;
}

// Compares `analytic` (the backward's gradient of loss() w.r.t. x) with central
// differences (loss(x + h e_i) - loss(x - h e_i)) / 2h, for every element of the fp32
// tensor x (restored afterwards). The forward runs in fp32, so the difference quotient
// carries ~1e-6/h of rounding noise and O(h^2) truncation: with h = 1e-2 and O(1)
// values, 2e-3 relative is an honest bound that a wrong term (O(1) off) cannot meet.
inline void expect_grad_close(const std::string& what, Tensor& x, const Tensor& analytic,
                              const std::function<double()>& loss, float h = 1e-2f, double tol = 2e-3) {
  ASSERT_EQ(x.numel(), analytic.numel()) << what;
  std::vector<float> numeric(static_cast<size_t>(x.numel()));
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float saved = p[i];
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    numeric[static_cast<size_t>(i)] = static_cast<float>((up - down) / (2.0 * h));
  }
  const double err = max_rel_error(analytic.to_float_vector(), numeric);
  EXPECT_LT(err, tol) << what << ": analytic gradient differs from central differences";
}

}  // namespace primus::test
