#include "infer/npy_f32.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "core/error.h"

namespace primus::infer {

// Layout: magic "\x93NUMPY", version 1.0, uint16 header length, then a Python dict
// literal padded with spaces and ended by '\n' so that the data starts at a multiple of
// 64 bytes, then the raw values (little-endian: the x86/ARM hosts we run on).
void write_npy_f32(const std::string& path, const Tensor& t) {
  const std::vector<float> v = t.to_float_vector();
  std::string shape;
  if (t.ndim() == 1) {
    shape = "(" + std::to_string(t.size(0)) + ",)";
  } else {
    for (int64_t d : t.shape()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    shape = "(" + shape + ")";
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t prefix = 10;  // magic (6) + version (2) + length (2)
  header.append(64 - (prefix + header.size() + 1) % 64, ' ');
  header += '\n';
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  PRIMUS_CHECK(f != nullptr, "cannot write '{}': {}", path, std::strerror(errno));
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const uint16_t len = static_cast<uint16_t>(header.size());
  const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff), static_cast<unsigned char>(len >> 8)};
  bool ok = std::fwrite(magic, 1, 8, f.get()) == 8 && std::fwrite(len_le, 1, 2, f.get()) == 2 &&
            std::fwrite(header.data(), 1, header.size(), f.get()) == header.size() &&
            std::fwrite(v.data(), sizeof(float), v.size(), f.get()) == v.size();
  ok = std::fflush(f.get()) == 0 && ok;
  PRIMUS_CHECK(ok, "writing '{}' failed: {}", path, std::strerror(errno));
}

}  // namespace primus::infer
