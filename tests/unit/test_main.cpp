// The unit tests' main: the same OpenBLAS kernel choice as the primus binary
// (ops/cpu/openblas_kernels.h), then GoogleTest.
#include <gtest/gtest.h>

#include "ops/cpu/openblas_kernels.h"

int main(int argc, char** argv) {
  primus::ops::cpu::restart_with_faster_openblas_kernels(argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
