// Minimal PNG encoder: 8-bit RGB, no interlace, filter type 0 on every row, one IDAT chunk
// compressed with zlib (the PNG spec's "deflate" compression method 0). Chunk CRCs are
// zlib's crc32 (the same CRC-32 the PNG spec defines).
#pragma once

#include <string>

#include "metrics/plot_canvas.h"

namespace primus::metrics {

std::string encode_png(const Canvas& canvas);
void write_png(const std::string& path, const Canvas& canvas);  // throws naming the path

}  // namespace primus::metrics
