#include "metrics/plot.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "core/error.h"
#include "metrics/metrics_format.h"
#include "metrics/metrics_jsonl.h"
#include "metrics/tensorboard_reader.h"

namespace primus::metrics {

namespace fs = std::filesystem;

namespace {

constexpr Rgb kBlack{0, 0, 0}, kGrid{225, 225, 225}, kText{40, 40, 40};
constexpr Rgb kBlue{31, 119, 180}, kOrange{255, 127, 14}, kGreen{44, 160, 44};

std::vector<std::pair<double, double>> sorted_points(const std::map<double, double>& by_x) {
  return {by_x.begin(), by_x.end()};
}

bool has_event_files(const fs::path& dir) { return fs::is_directory(dir) && !find_event_files(dir.string()).empty(); }

RunCurves from_jsonl(const std::string& path, const std::string& loss_name) {
  const std::string loss_key = json_key(loss_name);
  std::map<double, double> train, valid, lr;  // keyed by iteration: a resumed run's later line wins
  for (const auto& j : read_jsonl(path)) {
    if (!j.is_object() || !j.contains("iteration") || !j["iteration"].is_number()) continue;
    const double it = j["iteration"].get<double>();
    const std::string type = j.value("type", std::string("train"));
    auto num = [&](const char* key) {
      return j.contains(key) && j[key].is_number() ? j[key].get<double>() : std::numeric_limits<double>::quiet_NaN();
    };
    if (type == "train") {
      if (j.contains(loss_key)) train[it] = num(loss_key.c_str());
      if (j.contains("learning_rate")) lr[it] = num("learning_rate");
    } else if (type == "validation" && j.contains(loss_key)) {
      valid[it] = num(loss_key.c_str());
    }
  }
  RunCurves c;
  c.source = path;
  c.train_loss.points = sorted_points(train);
  c.valid_loss.points = sorted_points(valid);
  c.learning_rate.points = sorted_points(lr);
  return c;
}

RunCurves from_tensorboard(const std::string& path, const std::string& loss_name) {
  const auto scalars = read_tensorboard_scalars(path);
  auto series = [&](const std::string& tag) {
    std::vector<std::pair<double, double>> pts;
    if (auto it = scalars.find(tag); it != scalars.end())
      for (const auto& p : it->second) pts.emplace_back(static_cast<double>(p.step), p.value);
    return pts;
  };
  RunCurves c;
  c.source = path;
  c.train_loss.points = series(loss_name);
  c.valid_loss.points = series(loss_name + " validation");
  c.learning_rate.points = series("learning-rate");
  return c;
}

double finite_or(double v, double fallback) { return std::isfinite(v) ? v : fallback; }

}  // namespace

RunCurves load_run_curves(const std::string& run, const std::string& loss_name) {
  const fs::path p(run);
  RunCurves c;
  if (fs::is_regular_file(p)) {
    const std::string name = p.filename().string();
    c = name.find("tfevents") != std::string::npos ? from_tensorboard(run, loss_name) : from_jsonl(run, loss_name);
  } else if (fs::is_directory(p)) {
    if (fs::is_regular_file(p / "metrics.jsonl")) {
      c = from_jsonl((p / "metrics.jsonl").string(), loss_name);
    } else if (fs::is_regular_file(p / "tensorboard" / "metrics.jsonl")) {
      c = from_jsonl((p / "tensorboard" / "metrics.jsonl").string(), loss_name);
    } else if (has_event_files(p)) {
      c = from_tensorboard(run, loss_name);
    } else if (has_event_files(p / "tensorboard")) {
      c = from_tensorboard((p / "tensorboard").string(), loss_name);
    } else {
      fail("--run '{}': found no metrics.jsonl and no events.out.tfevents.* in it or in its tensorboard/ "
           "subdirectory; point --run at the run's tensorboard_dir", run);
    }
  } else {
    fail("--run '{}': no such file or directory", run);
  }
  const bool any_loss = std::any_of(c.train_loss.points.begin(), c.train_loss.points.end(),
                                    [](const auto& pt) { return std::isfinite(pt.second); });
  PRIMUS_CHECK(any_loss, "{}: no finite '{}' values to plot (is this the right run, and did it log an "
               "iteration yet?)", c.source, loss_name);
  c.train_loss.label = "train";
  c.train_loss.color = kBlue;
  c.valid_loss.label = "validation";
  c.valid_loss.color = kOrange;
  c.valid_loss.markers = true;
  c.learning_rate.label = "learning rate";
  c.learning_rate.color = kGreen;
  return c;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double p10 = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p10;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * p10;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return ticks;
}

std::string tick_label(double value, double step, double magnitude) {
  if (value == 0) return "0";
  if (magnitude != 0 && (magnitude < 1e-3 || magnitude >= 1e5)) {
    const int e = static_cast<int>(std::floor(std::log10(magnitude)));
    const double scale = std::pow(10.0, e);
    const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step / scale) + 1e-9)), 0, 6);
    return fmt::format("{:.{}f}e{}", value / scale, decimals, e);
  }
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 10);
  return fmt::format("{:.{}f}", value, decimals);
}

namespace {

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  void settle(double pad_fraction) {
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo <= 0) {
      const double d = lo == 0 ? 1 : std::abs(lo) * 0.05;
      lo -= d;
      hi += d;
    }
    const double pad = (hi - lo) * pad_fraction;
    lo -= pad;
    hi += pad;
  }
};

constexpr int kScale = 2;  // text scale: 10x14 pixel glyphs

// The y axis of one panel: range, ticks and their labels.
struct YAxis {
  Range range;
  std::vector<double> ticks;
  std::vector<std::string> labels;
  int label_width = 0;
};

YAxis y_axis(const Panel& panel) {
  YAxis a;
  for (const Curve& c : panel.curves)
    for (const auto& [x, y] : c.points) a.range.add(y);
  a.range.settle(0.05);
  a.ticks = nice_ticks(a.range.lo, a.range.hi, 6);
  const double step = a.ticks.size() > 1 ? a.ticks[1] - a.ticks[0] : 1;
  const double mag = std::max(std::abs(a.range.lo), std::abs(a.range.hi));
  for (double v : a.ticks) {
    a.labels.push_back(tick_label(v, step, mag));
    a.label_width = std::max(a.label_width, Canvas::text_width(a.labels.back(), kScale));
  }
  return a;
}

// `left`: x of the plot area, shared by all panels so their iteration axes line up.
void draw_panel(Canvas& cv, const Panel& panel, const YAxis& ya, const Range& xr, int left, int top, int height) {
  const int char_h = Canvas::text_height(kScale);
  const Range& yr = ya.range;
  const std::vector<double>& yt = ya.ticks;
  const std::vector<std::string>& ylabels = ya.labels;
  const std::vector<double> xt = nice_ticks(xr.lo, xr.hi, 8);
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
  const double xmag = std::max(std::abs(xr.lo), std::abs(xr.hi));
  // Plot area inside the panel.
  const int right = cv.width() - 30;
  const int ptop = top + char_h + 16;
  const int pbottom = top + height - (char_h * 2 + 30);
  auto px = [&](double x) { return left + (x - xr.lo) / (xr.hi - xr.lo) * (right - left); };
  auto py = [&](double y) { return pbottom - (y - yr.lo) / (yr.hi - yr.lo) * (pbottom - ptop); };

  // Title, grid, axes, ticks, labels.
  cv.text(left, top + 6, panel.title, kText, kScale);
  for (size_t i = 0; i < yt.size(); ++i) {
    const int y = static_cast<int>(std::lround(py(yt[i])));
    if (y < ptop || y > pbottom) continue;
    cv.fill_rect(left, y, right, y, kGrid);
    cv.fill_rect(left - 6, y, left, y, kBlack);
    cv.text(left - 10 - Canvas::text_width(ylabels[i], kScale), y - char_h / 2, ylabels[i], kText, kScale);
  }
  for (double v : xt) {
    const int x = static_cast<int>(std::lround(px(v)));
    if (x < left || x > right) continue;
    cv.fill_rect(x, ptop, x, pbottom, kGrid);
    cv.fill_rect(x, pbottom, x, pbottom + 6, kBlack);
    const std::string label = tick_label(v, xstep, xmag);
    cv.text(x - Canvas::text_width(label, kScale) / 2, pbottom + 10, label, kText, kScale);
  }
  cv.fill_rect(left, ptop, right, ptop, kBlack);
  cv.fill_rect(left, pbottom, right, pbottom, kBlack);
  cv.fill_rect(left, ptop, left, pbottom, kBlack);
  cv.fill_rect(right, ptop, right, pbottom, kBlack);
  cv.text((left + right) / 2 - Canvas::text_width(panel.x_label, kScale) / 2, pbottom + 14 + char_h, panel.x_label,
          kText, kScale);
  if (!panel.y_label.empty()) {
    const int w = Canvas::text_width(panel.y_label, kScale);
    cv.text_vertical(14, (ptop + pbottom) / 2 - w / 2, panel.y_label, kText, kScale);
  }

  // Curves, then the legend (top right, inside the plot area).
  int legend_y = ptop + 10;
  for (const Curve& c : panel.curves) {
    if (c.points.empty()) continue;
    if (c.markers) {
      for (const auto& [x, y] : c.points) {
        if (!std::isfinite(y)) continue;
        const int cx = static_cast<int>(std::lround(px(x))), cy = static_cast<int>(std::lround(py(y)));
        cv.fill_rect(cx - 3, cy - 3, cx + 3, cy + 3, c.color);
      }
    } else if (c.points.size() == 1) {
      const auto [x, y] = c.points[0];
      const int cx = static_cast<int>(std::lround(px(x))), cy = static_cast<int>(std::lround(py(finite_or(y, yr.lo))));
      cv.fill_rect(cx - 2, cy - 2, cx + 2, cy + 2, c.color);
    } else {
      for (size_t i = 1; i < c.points.size(); ++i) {
        const auto [x0, y0] = c.points[i - 1];
        const auto [x1, y1] = c.points[i];
        if (!std::isfinite(y0) || !std::isfinite(y1)) continue;  // a gap where the loss was NaN
        cv.line(px(x0), py(y0), px(x1), py(y1), c.color, 2);
      }
    }
    const int w = Canvas::text_width(c.label, kScale);
    cv.fill_rect(right - 20 - w - 30, legend_y + char_h / 2 - 2, right - 20 - w - 8, legend_y + char_h / 2 + 1, c.color);
    cv.text(right - 12 - w, legend_y, c.label, kText, kScale);
    legend_y += char_h + 8;
  }
}

}  // namespace

Canvas render_panels(const std::vector<Panel>& panels, int width, int height, const std::string& title) {
  PRIMUS_CHECK(!panels.empty(), "render_panels: nothing to draw");
  PRIMUS_CHECK(width >= 320 && height >= 160 * static_cast<int>(panels.size()),
               "plot size {}x{} is too small for {} panels (at least 320 wide and 160 high per panel)", width,
               height, panels.size());
  Canvas cv(width, height);
  const int title_h = title.empty() ? 0 : Canvas::text_height(2) + 20;
  if (!title.empty()) cv.text(width / 2 - Canvas::text_width(title, 2) / 2, 10, title, kBlack, 2);
  Range xr;  // shared iteration axis
  for (const Panel& p : panels)
    for (const Curve& c : p.curves)
      for (const auto& [x, y] : c.points) xr.add(x);
  xr.settle(0.0);
  std::vector<YAxis> axes;
  int label_width = 0;
  for (const Panel& p : panels) {
    axes.push_back(y_axis(p));
    label_width = std::max(label_width, axes.back().label_width);
  }
  const int left = 14 + Canvas::text_height(kScale) + 12 + label_width + 10;
  const int panel_h = (height - title_h) / static_cast<int>(panels.size());
  for (size_t i = 0; i < panels.size(); ++i)
    draw_panel(cv, panels[i], axes[i], xr, left, title_h + static_cast<int>(i) * panel_h, panel_h);
  return cv;
}

Canvas plot_runs(const std::vector<RunCurves>& runs, const std::vector<std::string>& names, int width, int height,
                 const std::string& title) {
  PRIMUS_CHECK(!runs.empty() && runs.size() == names.size(), "plot_runs: {} runs and {} names", runs.size(),
               names.size());
  if (runs.size() == 1) return plot_run(runs[0], width, height, title);
  static constexpr Rgb kPalette[] = {kBlue, kOrange, kGreen, {214, 39, 40}, {148, 103, 189}, {140, 86, 75}};
  Panel loss{"loss", "iteration", "loss", {}};
  Panel rel{"relative to " + names[0], "iteration", "(loss - first) / first", {}};
  std::map<double, double> first;
  for (const auto& [x, y] : runs[0].train_loss.points)
    if (std::isfinite(y) && y != 0.0) first[x] = y;
  for (size_t i = 0; i < runs.size(); ++i) {
    const Rgb color = kPalette[i % std::size(kPalette)];
    Curve c = runs[i].train_loss;
    c.label = names[i];
    c.color = color;
    loss.curves.push_back(c);
    if (i == 0) continue;
    Curve d{names[i], color, {}, false};
    for (const auto& [x, y] : runs[i].train_loss.points) {
      const auto it = first.find(x);
      d.points.emplace_back(x, it == first.end() ? NAN : (y - it->second) / it->second);
    }
    rel.curves.push_back(d);
  }
  return render_panels({loss, rel}, width, height, title);
}

Canvas plot_run(const RunCurves& c, int width, int height, const std::string& title) {
  Panel loss{"loss", "iteration", "loss", {c.train_loss}};
  if (!c.valid_loss.points.empty()) loss.curves.push_back(c.valid_loss);
  std::vector<Panel> panels{loss};
  if (!c.learning_rate.points.empty()) panels.push_back(Panel{"learning rate", "iteration", "lr", {c.learning_rate}});
  return render_panels(panels, width, height, title);
}

}  // namespace primus::metrics
