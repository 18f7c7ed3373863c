// primus plot --run <dir> --output loss.png: the loss and learning-rate curves of a run.
#include <fmt/core.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "metrics/plot.h"
#include "metrics/plot_png.h"

namespace primus::cli {

int cmd_plot(int argc, char** argv) {
  CLI::App app{"Draw the loss and learning-rate curves of a run to a PNG. --run takes a metrics.jsonl, an "
               "event file, or a directory holding either (directly or under tensorboard/).",
               "plot"};
  std::string run, output = "loss.png", title, loss_name = "lm loss";
  std::vector<std::string> compare;
  int width = 1200, height = 900;
  // Checked after parsing (not ->required()) so a misspelt option is reported as such first.
  app.add_option("--run", run, "run directory (tensorboard_dir), metrics.jsonl or events.out.tfevents.* file (required)");
  app.add_option("--output,-o", output, "PNG file to write")->capture_default_str();
  app.add_option("--compare", compare,
                 "another run to draw beside --run (repeatable): the losses overlaid, and each one's relative "
                 "difference from --run's");
  app.add_option("--title", title, "title above the panels (default: the run's directory name)");
  app.add_option("--loss", loss_name, "loss to plot, as logged")->capture_default_str();
  app.add_option("--width", width, "image width in pixels")->capture_default_str();
  app.add_option("--height", height, "image height in pixels")->capture_default_str();
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  if (run.empty()) {
    fmt::print(stderr, "primus plot: --run is required (the experiment directory, its tensorboard/ directory, a "
                       "metrics.jsonl or an event file)\nRun 'primus plot --help' for the options.\n");
    return 2;
  }

  // A run's name: its experiment directory (the title's default; each curve's label with --compare).
  auto name_of = [](const std::string& r) {
    std::filesystem::path p = std::filesystem::absolute(r).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    if (!std::filesystem::is_directory(p) || p.filename() == "tensorboard") p = p.parent_path();
    return p.filename().string();
  };
  const metrics::RunCurves curves = metrics::load_run_curves(run, loss_name);
  if (title.empty()) title = name_of(run);
  if (!compare.empty()) {
    std::vector<metrics::RunCurves> runs{curves};
    std::vector<std::string> paths{run}, names;
    for (const std::string& r : compare) {
      runs.push_back(metrics::load_run_curves(r, loss_name));
      paths.push_back(r);
    }
    for (const std::string& r : paths) names.push_back(name_of(r));
    // Runs in one directory (metrics_bf16.jsonl beside metrics_fp8.jsonl): named by their files.
    if (std::set<std::string>(names.begin(), names.end()).size() < names.size())
      for (size_t i = 0; i < paths.size(); ++i) names[i] = std::filesystem::path(paths[i]).filename().string();
    const metrics::Canvas canvas = metrics::plot_runs(runs, names, width, height, title);
    metrics::write_png(output, canvas);
    fmt::print("wrote {} ({}x{}): {} runs ({})\n", output, width, height, runs.size(), fmt::join(names, ", "));
    return 0;
  }
  const metrics::Canvas canvas = metrics::plot_run(curves, width, height, title);
  metrics::write_png(output, canvas);
  fmt::print("wrote {} ({}x{}): {} loss points, {} validation points, {} learning-rate points from {}\n", output,
             width, height, curves.train_loss.points.size(), curves.valid_loss.points.size(),
             curves.learning_rate.points.size(), curves.source);
  return 0;
}

}  // namespace primus::cli
