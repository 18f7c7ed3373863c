// `primus plot`: the loss and learning-rate curves of a run, drawn to a PNG.
//
// Reads a run's metrics.jsonl (preferred: it has every logged iteration) or its TensorBoard
// event files, and draws two stacked panels sharing the iteration axis: the training loss
// (with validation loss as points when present) and the learning rate.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "metrics/plot_canvas.h"

namespace primus::metrics {

struct Curve {
  std::string label;
  Rgb color;
  std::vector<std::pair<double, double>> points;  // (x, y) sorted by x; NaN y breaks the line
  bool markers = false;                           // draw points (validation) instead of a line
};

struct Panel {
  std::string title;
  std::string x_label = "iteration";
  std::string y_label;
  std::vector<Curve> curves;
};

struct RunCurves {
  std::string source;  // the file or directory the curves came from
  Curve train_loss, valid_loss, learning_rate;
};

// `run`: a metrics.jsonl file, an event file, or a directory holding either directly or in
// a `tensorboard/` subdirectory. `loss_name` is the loss as logged ("lm loss").
// Throws naming what was looked for when nothing is found or the run has no loss values.
RunCurves load_run_curves(const std::string& run, const std::string& loss_name = "lm loss");

// "Nice" tick positions (1, 2 or 5 times a power of ten) covering [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);
// A tick label with as many decimals as the tick spacing needs; scientific notation
// ("3.0e-4") for magnitudes below 1e-3 or from 1e5 up.
std::string tick_label(double value, double step, double magnitude);

Canvas render_panels(const std::vector<Panel>& panels, int width, int height, const std::string& title);
Canvas plot_run(const RunCurves& curves, int width, int height, const std::string& title);
// Several runs side by side (e.g. fp8 against bf16 on the same data): their training losses
// overlaid, each named by `names`, and a second panel with each later run's relative difference
// (loss - loss_0) / loss_0 from the first at the iterations both logged. One run: plot_run.
Canvas plot_runs(const std::vector<RunCurves>& runs, const std::vector<std::string>& names, int width, int height,
                 const std::string& title);

}  // namespace primus::metrics
