// Sends each log interval's numbers everywhere they go: the iteration line (Logger, rank
// 0's console and file), metrics.jsonl, and TensorBoard. Construct it on the rank that
// reports (rank 0; Megatron uses the last pipeline stage, which holds the loss).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/logging.h"
#include "metrics/metrics.h"

namespace primus::metrics {
class TensorBoardWriter;
class JsonlWriter;
}  // namespace primus::metrics

namespace primus::train {

struct ReporterOptions {
  std::string tensorboard_dir;     // empty: no TensorBoard (disable_tensorboard)
  std::string metrics_jsonl_path;  // empty: no JSONL; by convention <tensorboard_dir>/metrics.jsonl
};

class TrainingReporter {
 public:
  TrainingReporter(Logger& logger, const ReporterOptions& options);
  ~TrainingReporter();

  // Logs the iteration line at INFO, appends a JSONL object, writes TensorBoard scalars
  // at step = report.iteration, and flushes both files.
  void report_train(const metrics::IntervalReport& report);
  // kind: "validation" or "test"; where: "iteration 100" or similar.
  void report_evaluation(int64_t iteration, const std::string& kind, const std::string& where,
                         const std::vector<std::pair<std::string, double>>& losses);

  const metrics::TensorBoardWriter* tensorboard() const { return tensorboard_.get(); }

 private:
  Logger& logger_;
  std::unique_ptr<metrics::TensorBoardWriter> tensorboard_;
  std::unique_ptr<metrics::JsonlWriter> jsonl_;
};

}  // namespace primus::train
