// The main() of the MPI test binaries (tests/parallel/tests.cmake runs each under
// `mpirun -np 2/4`): every rank runs every test; rank 0 prints gtest's report, the other ranks
// only their failures, prefixed by their rank; the exit code is 0 only when every rank passed.
//
//   int main(int argc, char** argv) { return primus::mpi_test::run_all(argc, argv); }
//   ... in a test: primus::mpi_test::world() is the MPI world communicator, rel_err() the
//   measure against a single-rank reference (rel() for one number).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "parallel/mpi_communicator.h"

namespace primus::mpi_test {

inline parallel::Communicator*& world_slot() {
  static parallel::Communicator* w = nullptr;
  return w;
}
// The world communicator; valid while run_all runs the tests.
inline parallel::Communicator& world() { return *world_slot(); }

// max |a - ref| / max |ref|: the error relative to the tensor's scale (the multi-rank tests'
// measure against the single-rank model).
inline double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < ref.size() && i < a.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - ref[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return scale > 0 ? err / scale : err;
}
// |a - ref| / |ref| of one number (a loss, a norm).
inline double rel(double a, double ref) { return std::fabs(a - ref) / std::max(1e-30, std::fabs(ref)); }

// `check` runs on every rank before the tests (e.g. a PRIMUS_CHECK on the world size).
inline int run_all(int argc, char** argv, const std::function<void(parallel::Communicator&)>& check = {}) {
  ::testing::InitGoogleTest(&argc, argv);
  parallel::CommOptions options;
  options.timeout = std::chrono::seconds(60);  // a rank that stops answering fails the test within a minute
  auto comm = parallel::make_mpi_world_communicator(options);
  world_slot() = comm.get();
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    struct FailurePrinter : ::testing::EmptyTestEventListener {
      int rank;
      explicit FailurePrinter(int r) : rank(r) {}
      void OnTestPartResult(const ::testing::TestPartResult& r) override {
        if (r.failed())
          std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, r.file_name() ? r.file_name() : "?", r.line_number(),
                       r.message());
      }
    };
    listeners.Append(new FailurePrinter(comm->rank()));
  }
  if (check) check(*comm);
  const int rc = RUN_ALL_TESTS();
  const double worst = comm->all_reduce_value(rc, parallel::ReduceOp::Max);
  if (comm->rank() == 0)
    std::printf("[mpi] %d ranks: %s\n", comm->size(), worst == 0 ? "all ranks passed" : "a rank failed");
  world_slot() = nullptr;
  comm.reset();
  return worst == 0 ? 0 : 1;
}

}  // namespace primus::mpi_test
