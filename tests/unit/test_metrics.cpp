// The iteration line (expected strings produced by Python's str.format with Megatron's
// format specs), running averages (log_avg_skip_iterations / log_avg_reset_interval),
// interval accounting, JSONL, and the per-rank log files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "train/logging.h"
#include "metrics/metrics.h"
#include "metrics/metrics_format.h"
#include "metrics/metrics_jsonl.h"
#include "train/metrics_reporter.h"
#include "metrics/tensorboard_reader.h"

namespace fs = std::filesystem;
using namespace primus::train;
using namespace primus::metrics;

namespace {

using primus::test::read_file;
using primus::test::temp_dir;

IntervalReport sample_report() {
  IntervalReport r;
  r.iteration = 10;
  r.train_iters = 10000;
  r.consumed_samples = 5120;
  r.elapsed_ms = 1234.54;
  r.elapsed_ms_avg = 1230.06;
  r.learning_rate = 3e-4;
  r.global_batch_size = 512;
  r.losses = {{"lm loss", 10.345671}};
  r.loss_scale = 1.0;
  r.grad_norm = 1.23456;
  r.num_zeros = 0.0;
  r.params_norm = 123.4567;
  r.tokens_per_s = 41234.56;
  r.tokens_per_s_avg = 41000.2;
  r.tokens_consumed = 5242880;
  r.tflops_per_gpu = 400.12;
  r.tflops_per_gpu_avg = 398.24;
  r.mfu_percent = 40.51;
  r.mfu_percent_avg = 40.33;
  return r;
}

}  // namespace

TEST(LogLine, MatchesMegatronFormatting) {
  // Expected: Python's ' iteration {:8d}/{:8d} |'.format(...) etc., field by field.
  const std::string want =
      " [2025-01-31 13:05:09] iteration       10/   10000 | consumed samples:         5120 | elapsed time per "
      "iteration (ms): 1234.5/1230.1 | learning rate: 3.000000E-04 | global batch size:   512 | lm loss: "
      "1.034567E+01 | loss scale: 1.0 | grad norm: 1.235 | num zeros: 0.0 | params norm: 123.457 | throughput "
      "(tokens/s): 41234.6/41000.2 | tokens consumed:      5242880 | TFLOP/s/GPU: 400.1/398.2 | MFU: "
      "40.5%/40.3% | number of skipped iterations:   0 | number of nan iterations:   0 | progress: 0.1% | ETA: 3:24:48 |";
  // The last two fields are ours: 9990 iterations left x 1230.06 ms = 12288.3 s.
  EXPECT_EQ(format_iteration_line(sample_report(), "2025-01-31 13:05:09"), want);
}

TEST(LogLine, OptionalFieldsAreLeftOut) {
  IntervalReport r = sample_report();
  r.elapsed_ms_avg.reset();
  r.grad_norm.reset();
  r.num_zeros.reset();
  r.params_norm.reset();
  r.tflops_per_gpu.reset();
  r.mfu_percent.reset();
  r.losses.clear();  // every iteration skipped
  r.skipped_iterations = 3;
  const std::string line = format_iteration_line(r, "t");
  EXPECT_NE(line.find("elapsed time per iteration (ms): 1234.5 |"), std::string::npos) << line;
  for (const char* absent : {"grad norm", "num zeros", "params norm", "TFLOP/s/GPU", "MFU", "lm loss"})
    EXPECT_EQ(line.find(absent), std::string::npos) << absent << " in " << line;
  EXPECT_NE(line.find("number of skipped iterations:   3 |"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA: 3:25:33 |"), std::string::npos) << line;  // no average yet: the last step's time
  r.iteration = r.train_iters;
  EXPECT_NE(format_iteration_line(r, "t").find("progress: 100.0% | ETA: 0:00:00 |"), std::string::npos);
}

TEST(LogLine, EvaluationBlock) {
  const std::string line = " validation loss at iteration 100 | lm loss value: 5.000000E+00 | lm loss PPL: 1.484132E+02 | ";
  const std::string dashes(line.size() + 1, '-');
  EXPECT_EQ(format_evaluation_block("validation", "iteration 100", {{"lm loss", 5.0}}), dashes + "\n" + line + "\n" + dashes);
}

TEST(RunningAverage, SkipsWarmupAndResets) {
  RunningAverage avg(/*skip_first=*/2, /*reset_interval=*/3);
  avg.add(1, 100);  // skipped (warm-up)
  avg.add(2, 100);  // skipped
  EXPECT_FALSE(avg.mean().has_value());
  avg.add(3, 1);
  EXPECT_DOUBLE_EQ(*avg.mean(), 1);
  avg.add(4, 2);
  avg.add(5, 3);
  EXPECT_DOUBLE_EQ(*avg.mean(), 2);  // (1+2+3)/3
  avg.add(6, 10);                   // window full: cleared, then 10 goes in
  EXPECT_EQ(avg.size(), 1u);
  EXPECT_DOUBLE_EQ(*avg.mean(), 10);
  avg.add(7, 20);
  EXPECT_DOUBLE_EQ(*avg.mean(), 15);
}

TEST(MetricsAccumulator, IntervalSemantics) {
  MetricsOptions o;
  o.train_iters = 100;
  o.log_avg_skip_iterations = 1;
  o.log_avg_reset_interval = 100;
  o.world_size = 2;
  o.peak_tflops_per_gpu = 1.0;  // 1 TFLOP/s peak keeps the numbers readable
  o.tokens_consumed_at_start = 1000;
  MetricsAccumulator acc(o);
  auto rec = [](int64_t it, double secs, double loss, bool skipped) {
    IterationRecord r;
    r.iteration = it;
    r.elapsed_s = secs;
    r.losses = {{"lm loss", loss}, {"aux loss", loss / 10}};
    r.skipped = skipped;
    r.nan = skipped;
    r.learning_rate = 1e-3 * it;
    r.loss_scale = 65536;
    r.grad_norm = 0.5 * it;
    r.consumed_samples = 8 * it;
    r.global_batch_size = 8;
    r.tokens = 8 * 128;
    r.flops = 2e12 * secs;  // exactly 1 TFLOP/s per GPU on 2 GPUs
    return r;
  };
  acc.add(rec(1, 4.0, 10.0, false));  // warm-up: slow, not in the averages
  acc.add(rec(2, 1.0, 8.0, false));
  acc.add(rec(3, 1.0, 999.0, true));  // skipped: its loss is ignored, its time counts
  acc.add(rec(4, 2.0, 6.0, false));
  IntervalReport r = acc.report();
  EXPECT_EQ(r.iteration, 4);
  EXPECT_EQ(r.iterations_in_interval, 4);
  EXPECT_DOUBLE_EQ(r.elapsed_ms, 8000.0 / 4);
  EXPECT_DOUBLE_EQ(*r.elapsed_ms_avg, (1000.0 + 1000.0 + 2000.0) / 3);
  ASSERT_EQ(r.losses.size(), 2u);
  EXPECT_EQ(r.losses[0].first, "lm loss");  // first-seen order
  EXPECT_DOUBLE_EQ(r.losses[0].second, (10.0 + 8.0 + 6.0) / 3);
  EXPECT_DOUBLE_EQ(r.losses[1].second, (1.0 + 0.8 + 0.6) / 3);
  EXPECT_DOUBLE_EQ(r.learning_rate, 4e-3);
  EXPECT_DOUBLE_EQ(*r.grad_norm, 2.0);
  EXPECT_EQ(r.skipped_iterations, 1);
  EXPECT_EQ(r.nan_iterations, 1);
  EXPECT_EQ(r.consumed_samples, 32);
  EXPECT_EQ(r.tokens_consumed, 1000 + 4 * 1024);
  EXPECT_DOUBLE_EQ(r.tokens_per_s, 4 * 1024 / 8.0);
  EXPECT_DOUBLE_EQ(*r.tokens_per_s_avg, (1024.0 + 1024.0 + 512.0) / 3);
  EXPECT_NEAR(*r.tflops_per_gpu, 1.0, 1e-12);
  EXPECT_NEAR(*r.mfu_percent, 100.0, 1e-9);
  // The next interval starts empty.
  EXPECT_EQ(acc.iterations_in_interval(), 0);
  EXPECT_THROW(acc.report(), primus::Error);
  acc.add(rec(5, 3.0, 5.0, false));
  r = acc.report();
  EXPECT_EQ(r.skipped_iterations, 0);
  EXPECT_DOUBLE_EQ(r.losses[0].second, 5.0);
  EXPECT_DOUBLE_EQ(*r.elapsed_ms_avg, (1000.0 + 1000.0 + 2000.0 + 3000.0) / 4);
}

TEST(MetricsAccumulator, AllSkippedIntervalHasNoLoss) {
  MetricsAccumulator acc(MetricsOptions{});
  IterationRecord r;
  r.iteration = 1;
  r.elapsed_s = 1;
  r.skipped = true;
  r.losses = {{"lm loss", NAN}};
  acc.add(r);
  EXPECT_TRUE(acc.report().losses.empty());
}

TEST(MetricsJson, KeysAndNonFiniteValues) {
  IntervalReport r = sample_report();
  r.losses = {{"lm loss", NAN}};
  r.memory = {{"mem-allocated-bytes", 1024}};
  const auto j = report_to_json(r, 1.5);
  EXPECT_EQ(j["type"], "train");
  EXPECT_EQ(j["iteration"], 10);
  EXPECT_TRUE(j["lm_loss"].is_null());
  EXPECT_DOUBLE_EQ(j["learning_rate"].get<double>(), 3e-4);
  EXPECT_DOUBLE_EQ(j["mem_allocated_bytes"].get<double>(), 1024);
  const auto e = evaluation_to_json(100, "validation", {{"lm loss", 2.0}}, 1.0);
  EXPECT_DOUBLE_EQ(e["lm_loss_ppl"].get<double>(), std::exp(2.0));
  const auto scalars = report_scalars(sample_report());
  auto has = [&](const std::string& tag) {
    for (const auto& [t, v] : scalars)
      if (t == tag) return true;
    return false;
  };
  for (const char* tag : {"lm loss", "learning-rate", "grad-norm", "loss-scale", "throughput", "batch-size",
                          "iteration-time", "params-norm", "num-zeros", "throughput-tokens-per-sec", "mfu"})
    EXPECT_TRUE(has(tag)) << tag;
  EXPECT_EQ(evaluation_scalars("validation", {{"lm loss", 1.0}})[0].first, "lm loss validation");
}

TEST(MetricsJsonl, AppendsAndToleratesATornLastLine) {
  const fs::path dir = temp_dir("jsonl");
  const std::string path = (dir / "sub" / "metrics.jsonl").string();
  {
    JsonlWriter w(path);
    w.write({{"iteration", 1}});
  }
  {
    JsonlWriter w(path);  // reopening appends (a resumed run)
    w.write({{"iteration", 2}});
  }
  {
    std::ofstream torn(path, std::ios::app);
    torn << "{\"iteration\": 3, \"lm_lo";  // killed mid-line
  }
  const auto rows = read_jsonl(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1]["iteration"], 2);
  {
    std::ofstream more(path, std::ios::app);
    more << "\n{\"iteration\": 4}\n";  // now the torn line is in the middle: an error naming the line
  }
  try {
    read_jsonl(path);
    FAIL();
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl:3"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Logging, PerRankFilesInThePrimusLayout) {
  const fs::path ws = temp_dir("logs");
  const std::string log_dir = experiment_log_dir(ws.string(), "team", "alice", "exp1");
  EXPECT_EQ(log_dir, (ws / "team" / "alice" / "exp1" / "logs").string());
  for (int rank = 0; rank < 2; ++rank) {
    LoggerOptions o;
    o.rank = rank;
    o.world_size = 2;
    o.log_dir = log_dir;
    o.console = false;
    Logger log(o);
    log.debug("debug from {}", rank);
    log.info("info from {}", rank);
    log.flush();
    EXPECT_EQ(log.file_path(), rank_log_path(log_dir, rank));
  }
  const std::string r0 = read_file(fs::path(log_dir) / "rank_0.log"), r1 = read_file(fs::path(log_dir) / "rank_1.log");
  EXPECT_NE(r0.find("[rank-0/2][info] info from 0"), std::string::npos) << r0;
  EXPECT_NE(r0.find("debug from 0"), std::string::npos) << r0;  // files keep everything
  EXPECT_NE(r1.find("info from 1"), std::string::npos) << r1;
  EXPECT_EQ(r1.find("from 0"), std::string::npos) << r1;
  fs::remove_all(ws);
}

TEST(Logging, LevelNames) {
  EXPECT_EQ(parse_log_level("DEBUG"), spdlog::level::debug);
  EXPECT_EQ(parse_log_level("info"), spdlog::level::info);
  EXPECT_EQ(parse_log_level("WARNING"), spdlog::level::warn);
  EXPECT_EQ(parse_log_level("ERROR"), spdlog::level::err);
  try {
    parse_log_level("VERBOSE");
    FAIL();
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("stderr_sink_level"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("VERBOSE"), std::string::npos);
  }
}

TEST(Logging, ConsoleHonoursStderrSinkLevel) {
  LoggerOptions o;
  o.stderr_sink_level = "WARNING";
  testing::internal::CaptureStderr();
  {
    Logger log(o);
    log.info("quiet info");
    log.warn("loud warning");
    log.flush();
  }
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("quiet info"), std::string::npos) << err;
  EXPECT_NE(err.find("loud warning"), std::string::npos) << err;
  // Other ranks print only errors on the console.
  o.rank = 3;
  o.stderr_sink_level = "DEBUG";
  testing::internal::CaptureStderr();
  {
    Logger log(o);
    log.warn("rank3 warning");
    log.error("rank3 error");
  }
  const std::string err3 = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err3.find("rank3 warning"), std::string::npos) << err3;
  EXPECT_NE(err3.find("rank3 error"), std::string::npos) << err3;
}

TEST(TrainingReporter, WritesLineJsonlAndTensorBoard) {
  const fs::path dir = temp_dir("reporter");
  LoggerOptions lo;
  lo.console = false;
  lo.log_dir = (dir / "logs").string();
  Logger log(lo);
  {
    TrainingReporter rep(log, {(dir / "tb").string(), (dir / "tb" / "metrics.jsonl").string()});
    rep.report_train(sample_report());
    rep.report_evaluation(10, "validation", "iteration 10", {{"lm loss", 3.0}});
  }
  log.flush();
  const std::string text = read_file(dir / "logs" / "rank_0.log");
  EXPECT_NE(text.find("iteration       10/   10000 |"), std::string::npos) << text;
  EXPECT_NE(text.find("validation loss at iteration 10"), std::string::npos) << text;
  const auto rows = read_jsonl((dir / "tb" / "metrics.jsonl").string());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["type"], "train");
  EXPECT_EQ(rows[1]["type"], "validation");
  const auto scalars = read_tensorboard_scalars((dir / "tb").string());
  EXPECT_EQ(scalars.at("lm loss")[0].value, static_cast<float>(10.345671));
  EXPECT_EQ(scalars.at("lm loss validation")[0].value, 3.0f);
  fs::remove_all(dir);
}
