// `primus plot`: tick choice, the PNG encoder (decoded back with zlib, every chunk CRC
// checked), and a plot drawn from a run's metrics.jsonl and from its event files.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "../test_util.h"
#include "core/error.h"
#include "metrics/metrics_format.h"
#include "metrics/metrics_jsonl.h"
#include "metrics/plot.h"
#include "metrics/plot_png.h"
#include "metrics/tensorboard_writer.h"

namespace fs = std::filesystem;
using namespace primus::metrics;

namespace {

using primus::test::temp_dir;

uint32_t be32(const std::string& s, size_t at) {
  return (uint32_t{static_cast<uint8_t>(s[at])} << 24) | (uint32_t{static_cast<uint8_t>(s[at + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(s[at + 2])} << 8) | uint32_t{static_cast<uint8_t>(s[at + 3])};
}

// A PNG decoder for what encode_png may produce (8-bit RGB, filter 0), written from the
// spec: chunks with CRC-32 over type+data, IHDR first, IDATs concatenated, IEND last.
struct DecodedPng {
  uint32_t width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  std::vector<uint8_t> rgb;
};
DecodedPng decode_png(const std::string& png) {
  DecodedPng out;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  size_t pos = 8;
  std::string idat;
  std::vector<std::string> types;
  while (pos + 12 <= png.size()) {
    const uint32_t len = be32(png, pos);
    const std::string type = png.substr(pos + 4, 4);
    const std::string data = png.substr(pos + 8, len);
    const uint32_t crc = be32(png, pos + 8 + len);
    const std::string covered = png.substr(pos + 4, 4 + len);
    EXPECT_EQ(crc, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(covered.data()), covered.size())))
        << "chunk " << type;
    types.push_back(type);
    if (type == "IHDR") {
      out.width = be32(data, 0);
      out.height = be32(data, 4);
      out.bit_depth = static_cast<uint8_t>(data[8]);
      out.color_type = static_cast<uint8_t>(data[9]);
    } else if (type == "IDAT") {
      idat += data;
    }
    pos += 12 + len;
  }
  EXPECT_EQ(pos, png.size());
  EXPECT_EQ(types.front(), "IHDR");
  EXPECT_EQ(types.back(), "IEND");
  const size_t row = 1 + 3 * size_t{out.width};
  std::vector<uint8_t> raw(row * out.height);
  uLongf n = raw.size();
  EXPECT_EQ(uncompress(raw.data(), &n, reinterpret_cast<const Bytef*>(idat.data()), idat.size()), Z_OK);
  EXPECT_EQ(n, raw.size());
  for (uint32_t y = 0; y < out.height; ++y) {
    EXPECT_EQ(raw[y * row], 0) << "filter byte of row " << y;
    out.rgb.insert(out.rgb.end(), raw.begin() + y * row + 1, raw.begin() + (y + 1) * row);
  }
  return out;
}

size_t count_color(const Canvas& c, Rgb color) {
  size_t n = 0;
  for (int y = 0; y < c.height(); ++y)
    for (int x = 0; x < c.width(); ++x) n += c.pixel(x, y) == color;
  return n;
}

void write_run_jsonl(const std::string& path, bool with_nan) {
  JsonlWriter w(path);
  for (int it = 1; it <= 200; ++it) {
    IntervalReport r;
    r.iteration = it;
    r.train_iters = 200;
    r.learning_rate = it < 20 ? 3e-4 * it / 20 : 3e-4 * (0.5 + 0.5 * std::cos(M_PI * (it - 20) / 180.0));
    r.losses = {{"lm loss", (with_nan && it == 50) ? NAN : 2.0 + 9.0 * std::exp(-it / 40.0)}};
    w.write(report_to_json(r, 0));
    if (it % 50 == 0) w.write(evaluation_to_json(it, "validation", {{"lm loss", 2.2 + 9.0 * std::exp(-it / 40.0)}}, 0));
  }
}

}  // namespace

TEST(Plot, NiceTicks) {
  EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(nice_ticks(1, 200, 8), (std::vector<double>{50, 100, 150, 200}));
  const auto t = nice_ticks(1.2e-5, 3.1e-4, 6);
  ASSERT_GE(t.size(), 3u);
  EXPECT_NEAR(t[1] - t[0], 5e-5, 1e-12);
  EXPECT_EQ(tick_label(0.00025, 5e-5, 3.1e-4), "2.5e-4");
  EXPECT_EQ(tick_label(2.5, 0.5, 11), "2.5");
  EXPECT_EQ(tick_label(150, 50, 200), "150");
  EXPECT_EQ(tick_label(300000, 100000, 500000), "3e5");
}

TEST(Plot, PngEncoderDecodesBack) {
  Canvas c(37, 23, {10, 20, 30});
  c.set(0, 0, {255, 0, 0});
  c.set(36, 22, {0, 255, 0});
  c.fill_rect(5, 5, 7, 6, {1, 2, 3});
  const DecodedPng d = decode_png(encode_png(c));
  EXPECT_EQ(d.width, 37u);
  EXPECT_EQ(d.height, 23u);
  EXPECT_EQ(d.bit_depth, 8);
  EXPECT_EQ(d.color_type, 2);
  EXPECT_EQ(d.rgb, c.rgb());
  EXPECT_EQ(d.rgb[0], 255);
  EXPECT_EQ(d.rgb[(22 * 37 + 36) * 3 + 1], 255);
}

TEST(Plot, TextUsesTheBitmapFont) {
  Canvas c(40, 10);
  c.text(1, 1, "1", {0, 0, 0});
  // '1' = ..#.. / .##.. / ..#.. x4 / .###. : 10 set pixels.
  EXPECT_EQ(count_color(c, {0, 0, 0}), 10u);
  EXPECT_EQ(c.pixel(1 + 2, 1), (Rgb{0, 0, 0}));
  EXPECT_EQ(c.pixel(1, 1), (Rgb{255, 255, 255}));
}

TEST(Plot, DrawsARunFromJsonlAndFromEventFiles) {
  const fs::path dir = temp_dir("plot");
  write_run_jsonl((dir / "metrics.jsonl").string(), /*with_nan=*/true);
  const RunCurves curves = load_run_curves(dir.string());
  EXPECT_EQ(curves.train_loss.points.size(), 200u);
  EXPECT_EQ(curves.valid_loss.points.size(), 4u);
  EXPECT_EQ(curves.learning_rate.points.size(), 200u);
  EXPECT_TRUE(std::isnan(curves.train_loss.points[49].second));  // null in JSON -> a gap, not a crash
  const Canvas canvas = plot_run(curves, 900, 700, "demo run");
  EXPECT_GT(count_color(canvas, {31, 119, 180}), 500u);  // the loss line
  EXPECT_GT(count_color(canvas, {44, 160, 44}), 500u);   // the lr line
  EXPECT_GT(count_color(canvas, {255, 127, 14}), 4u * 30);  // validation markers
  const std::string png_path = (dir / "loss.png").string();
  write_png(png_path, canvas);
  std::ifstream in(png_path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const DecodedPng d = decode_png(bytes);
  EXPECT_EQ(d.width, 900u);
  EXPECT_EQ(d.height, 700u);

  // The same run from TensorBoard files in a tensorboard/ subdirectory.
  const fs::path tb_run = dir / "tbrun";
  {
    TensorBoardWriter w((tb_run / "tensorboard").string());
    for (int it = 1; it <= 50; ++it) w.add_scalars({{"lm loss", 10.0 / it}, {"learning-rate", 1e-4}}, it);
  }
  const RunCurves tb = load_run_curves(tb_run.string());
  EXPECT_EQ(tb.train_loss.points.size(), 50u);
  EXPECT_FLOAT_EQ(static_cast<float>(tb.train_loss.points[1].second), 5.0f);
  EXPECT_EQ(tb.learning_rate.points.size(), 50u);

  // Nothing to plot: a clear error.
  fs::create_directories(dir / "empty");
  try {
    load_run_curves((dir / "empty").string());
    FAIL();
  } catch (const primus::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no metrics.jsonl and no events.out.tfevents"), std::string::npos);
  }
  if (!std::getenv("PRIMUS_KEEP_PLOT")) fs::remove_all(dir);
}

// Two runs side by side: both losses overlaid in their own colours, and the second's relative
// difference from the first (here +2% everywhere) in a panel of its own.
TEST(Plot, ComparesRuns) {
  const fs::path dir = temp_dir("plot_compare");
  auto write = [&](const std::string& name, double factor) {
    std::ofstream out(dir / name);
    for (int it = 1; it <= 100; ++it)
      out << fmt::format(R"({{"type":"train","iteration":{},"lm_loss":{},"learning_rate":0.001}})", it,
                         factor * (3.0 + 5.0 / it))
          << "\n";
  };
  write("metrics_bf16.jsonl", 1.0);
  write("metrics_fp8.jsonl", 1.02);
  const RunCurves a = load_run_curves((dir / "metrics_bf16.jsonl").string());
  const RunCurves b = load_run_curves((dir / "metrics_fp8.jsonl").string());
  const Canvas canvas = plot_runs({a, b}, {"bf16", "fp8"}, 900, 700, "fp8 vs bf16");
  EXPECT_GT(count_color(canvas, {31, 119, 180}), 300u);   // the first run's loss
  EXPECT_GT(count_color(canvas, {255, 127, 14}), 600u);   // the second's loss and its difference line
  if (!fs::exists(PRIMUS_BINARY)) GTEST_SKIP() << "primus binary not built: " << PRIMUS_BINARY;
  const std::string out = (dir / "cmp.png").string(), log = (dir / "log.txt").string();
  const std::string cmd = fmt::format("'{}' plot --run '{}' --compare '{}' --output '{}' > '{}' 2>&1", PRIMUS_BINARY,
                                      (dir / "metrics_bf16.jsonl").string(), (dir / "metrics_fp8.jsonl").string(),
                                      out, log);
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("2 runs (metrics_bf16.jsonl, metrics_fp8.jsonl)"), std::string::npos) << text;
  fs::remove_all(dir);
}

TEST(Plot, CommandLine) {
  if (!fs::exists(PRIMUS_BINARY)) GTEST_SKIP() << "primus binary not built: " << PRIMUS_BINARY;
  const fs::path dir = temp_dir("plot_cli");
  write_run_jsonl((dir / "metrics.jsonl").string(), false);
  const std::string out = (dir / "out.png").string();
  const std::string cmd = fmt::format("'{}' plot --run '{}' --output '{}' --width 640 --height 480 > '{}' 2>&1",
                                      PRIMUS_BINARY, dir.string(), out, (dir / "log.txt").string());
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(out, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const DecodedPng d = decode_png(bytes);
  EXPECT_EQ(d.width, 640u);
  EXPECT_EQ(d.height, 480u);
  fs::remove_all(dir);
}
