// A tiny RGB raster for `primus plot`: filled rectangles, 1-3 px lines, and text in a
// built-in 5x7 bitmap font (digits, a-z with descenders, A-Z and common punctuation),
// scaled by an integer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace primus::metrics {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb&) const = default;
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background = {255, 255, 255});

  int width() const { return width_; }
  int height() const { return height_; }
  Rgb pixel(int x, int y) const;
  const std::vector<uint8_t>& rgb() const { return rgb_; }  // row-major, 3 bytes a pixel

  void set(int x, int y, Rgb c);  // ignores points outside the canvas
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c);  // inclusive corners, any order
  // A line from (x0,y0) to (x1,y1) (Bresenham), `thickness` pixels wide.
  void line(double x0, double y0, double x1, double y1, Rgb c, int thickness = 1);
  // Text with its top-left corner at (x, y); unknown characters draw as '?'.
  void text(int x, int y, std::string_view s, Rgb c, int scale = 1);
  // Text rotated 90 degrees counter-clockwise (reads bottom to top), top-left at (x, y).
  void text_vertical(int x, int y, std::string_view s, Rgb c, int scale = 1);

  static int text_width(std::string_view s, int scale = 1) { return static_cast<int>(s.size()) * 6 * scale - scale; }
  static int text_height(int scale = 1) { return 7 * scale; }  // cap height; descenders go 2 rows lower

 private:
  int width_, height_;
  std::vector<uint8_t> rgb_;
};

}  // namespace primus::metrics
