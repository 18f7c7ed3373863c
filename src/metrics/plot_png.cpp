#include "metrics/plot_png.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.h"

namespace primus::metrics {

namespace {

void put_u32_be(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_u32_be(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out += body;
  put_u32_be(out, static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(body.data()),
                                             static_cast<uInt>(body.size()))));
}

}  // namespace

std::string encode_png(const Canvas& canvas) {
  const int w = canvas.width(), h = canvas.height();
  // Scanlines: one filter-type byte (0 = None) then the row's RGB bytes.
  std::string raw;
  raw.reserve(static_cast<size_t>(h) * (1 + 3 * static_cast<size_t>(w)));
  const auto& px = canvas.rgb();
  for (int y = 0; y < h; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(px.data()) + static_cast<size_t>(y) * w * 3, static_cast<size_t>(w) * 3);
  }
  uLongf zsize = compressBound(static_cast<uLong>(raw.size()));
  std::string z(zsize, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(z.data()), &zsize, reinterpret_cast<const Bytef*>(raw.data()),
                           static_cast<uLong>(raw.size()), 6);
  PRIMUS_CHECK(rc == Z_OK, "zlib compress2 failed with code {} while encoding a {}x{} PNG", rc, w, h);
  z.resize(zsize);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_u32_be(ihdr, static_cast<uint32_t>(w));
  put_u32_be(ihdr, static_cast<uint32_t>(h));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // bit depth 8, colour type 2 (RGB), deflate, filter 0, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", "");
  return png;
}

void write_png(const std::string& path, const Canvas& canvas) {
  const std::string bytes = encode_png(canvas);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  PRIMUS_CHECK(out.good(), "cannot create the PNG file '{}': {}", path, std::strerror(errno));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  PRIMUS_CHECK(out.good(), "writing the PNG file '{}' failed", path);
}

}  // namespace primus::metrics
