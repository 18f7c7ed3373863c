#include "train/metrics_reporter.h"

#include <chrono>

#include "metrics/metrics_format.h"
#include "metrics/metrics_jsonl.h"
#include "metrics/tensorboard_writer.h"

namespace primus::train {

namespace {
double unix_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}
}  // namespace

TrainingReporter::TrainingReporter(Logger& logger, const ReporterOptions& options) : logger_(logger) {
  if (!options.tensorboard_dir.empty()) {
    tensorboard_ = std::make_unique<metrics::TensorBoardWriter>(options.tensorboard_dir);
    logger_.info("TensorBoard events: {}", tensorboard_->path());
  }
  if (!options.metrics_jsonl_path.empty()) {
    jsonl_ = std::make_unique<metrics::JsonlWriter>(options.metrics_jsonl_path);
    logger_.info("metrics (JSONL): {}", jsonl_->path());
  }
}

TrainingReporter::~TrainingReporter() = default;

void TrainingReporter::report_train(const metrics::IntervalReport& report) {
  logger_.info("{}", metrics::format_iteration_line(report, metrics::log_timestamp()));
  if (jsonl_) jsonl_->write(metrics::report_to_json(report, unix_seconds()));
  if (tensorboard_) {
    tensorboard_->add_scalars(metrics::report_scalars(report), report.iteration);
    tensorboard_->flush();
  }
}

void TrainingReporter::report_evaluation(int64_t iteration, const std::string& kind, const std::string& where,
                                         const std::vector<std::pair<std::string, double>>& losses) {
  logger_.info("\n{}", metrics::format_evaluation_block(kind, where, losses));
  if (jsonl_) jsonl_->write(metrics::evaluation_to_json(iteration, kind, losses, unix_seconds()));
  if (tensorboard_) {
    tensorboard_->add_scalars(metrics::evaluation_scalars(kind, losses), iteration);
    tensorboard_->flush();
  }
}

}  // namespace primus::train
