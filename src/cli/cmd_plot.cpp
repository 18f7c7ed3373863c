// primus plot --run <dir> --output loss.png: the loss and learning-rate curves of a run.
#include <fmt/core.h>

#include <filesystem>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "train/plot.h"
#include "train/plot_png.h"

namespace primus::cli {

int cmd_plot(int argc, char** argv) {
  CLI::App app{"Draw the loss and learning-rate curves of a run to a PNG. --run takes a metrics.jsonl, an "
               "event file, or a directory holding either (directly or under tensorboard/).",
               "plot"};
  std::string run, output = "loss.png", title, loss_name = "lm loss";
  int width = 1200, height = 900;
  // Checked after parsing (not ->required()) so a misspelt option is reported as such first.
  app.add_option("--run", run, "run directory (tensorboard_dir), metrics.jsonl or events.out.tfevents.* file (required)");
  app.add_option("--output,-o", output, "PNG file to write")->capture_default_str();
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

  const train::RunCurves curves = train::load_run_curves(run, loss_name);
  if (title.empty()) {
    std::filesystem::path p = std::filesystem::absolute(run).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    if (!std::filesystem::is_directory(p) || p.filename() == "tensorboard") p = p.parent_path();
    title = p.filename().string();
  }
  const train::Canvas canvas = train::plot_run(curves, width, height, title);
  train::write_png(output, canvas);
  fmt::print("wrote {} ({}x{}): {} loss points, {} validation points, {} learning-rate points from {}\n", output,
             width, height, curves.train_loss.points.size(), curves.valid_loss.points.size(),
             curves.learning_rate.points.size(), curves.source);
  return 0;
}

}  // namespace primus::cli
