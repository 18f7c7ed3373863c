// Shared by the libFuzzer targets (fuzz/README.md): the input as a file in this process's own
// scratch directory (the loaders read files), and the rule every target follows:
// a primus::Error is the expected answer to bad input; anything else that escapes (another
// exception type, a crash, a sanitizer report, a hang) is a finding.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/tokenizer/tokenizer.h"

namespace primus::fuzz {

inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("primus-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = (scratch_dir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

// What every tokenizer target does with a tokenizer its loader accepted: encode a fixed text (encode is not const: it caches words)
// (ASCII, punctuation, accents, a special-token look-alike) and decode it, with and without
// the special tokens.
inline void encode_decode(data::Tokenizer& tok) {
  const auto ids = tok.encode("The jury said, \"it's 42\" -- naïve café <|end|>\n");
  (void)tok.decode(ids);
  (void)tok.decode(ids, /*skip_special=*/true);
}

}  // namespace primus::fuzz
