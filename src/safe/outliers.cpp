#include "safe/outliers.h"

#include <algorithm>

#include "core/error.h"

namespace primus::safe {

double median_of(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<Outlier> find_outliers(const std::vector<Sample>& samples, double threshold) {
  PRIMUS_CHECK(threshold > 0 && threshold < 1,
               "outlier threshold {} must be a fraction in (0, 1), e.g. 0.1 for 10% below the median", threshold);
  std::vector<double> values;
  for (const Sample& s : samples)
    if (s.value > 0) values.push_back(s.value);
  std::vector<Outlier> out;
  if (values.empty()) return out;
  const double median = median_of(values);
  for (const Sample& s : samples) {
    if (s.value > 0 && s.value < median * (1 - threshold)) out.push_back({s.who, s.value, median, 1 - s.value / median});
  }
  return out;
}

}  // namespace primus::safe
