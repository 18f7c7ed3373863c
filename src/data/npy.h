// Minimal .npy (NumPy format 1.0) for the GPT index cache: little-endian int32/int64
// arrays, 1-d or 2-d, so the cached indices can be inspected with numpy.load.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace primus::data {

// Writes under a temporary name and renames (safe with concurrent writers of the same file).
void npy_write_i32(const std::string& path, const std::vector<int32_t>& v);
void npy_write_i64(const std::string& path, const std::vector<int64_t>& v, int64_t cols = 1);
// nullopt if the file is missing or not an array of that type and size (cache miss).
std::optional<std::vector<int32_t>> npy_read_i32(const std::string& path);
std::optional<std::vector<int64_t>> npy_read_i64(const std::string& path);

}  // namespace primus::data
