// Outliers of a measurement taken on many ranks, nodes or links: the ones more than a
// threshold below the median of all of them.
//
//   median  of the n values (the mean of the two middle ones when n is even)
//   outlier value < median * (1 - threshold)      (higher is better: TFLOP/s, GB/s)
//   below   = 1 - value / median                  (0.25: 25% below the median)
// One value is its own median: never an outlier. Two values: the slower one is flagged when
// it lies more than the threshold below their mean. Values <= 0 (not measured) are left out
// of the median and never flagged.
#pragma once

#include <string>
#include <vector>

namespace primus::safe {

struct Sample {
  std::string who;     // what to name when it is an outlier: "rank 3 on host-b", "node host-b"
  double value = 0;
};

struct Outlier {
  std::string who;
  double value = 0;
  double median = 0;
  double below = 0;    // fraction below the median
};

double median_of(std::vector<double> values);

// `threshold` in (0, 1): 0.1 flags anything more than 10% below the median.
// Outliers come back in the order of `samples`.
std::vector<Outlier> find_outliers(const std::vector<Sample>& samples, double threshold);

}  // namespace primus::safe
