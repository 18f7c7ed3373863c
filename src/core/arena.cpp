#include "core/arena.h"

#include <algorithm>

namespace primus {

namespace {
constexpr size_t kAlign = 256;  // cuBLASLt and vectorised kernels like 256-byte alignment
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

Arena::Arena(Device device, size_t chunk_bytes) : device_(device), chunk_bytes_(chunk_bytes) {}

Tensor Arena::alloc(Shape shape, DType dtype) {
  const size_t bytes = align_up(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
  while (current_ < chunks_.size() && offset_ + bytes > chunks_[current_].size) {
    ++current_;
    offset_ = 0;
  }
  if (current_ == chunks_.size()) {
    const size_t size = std::max(chunk_bytes_, bytes);
    chunks_.push_back({Tensor::empty({static_cast<int64_t>(size)}, DType::U8, device_), size});
    offset_ = 0;
  }
  char* base = static_cast<char*>(chunks_[current_].block.raw()) + offset_;
  offset_ += bytes;
  high_water_ = std::max(high_water_, used_bytes());
  return Tensor::from_blob(base, std::move(shape), dtype, device_);
}

Tensor Arena::zeros(Shape shape, DType dtype) {
  Tensor t = alloc(std::move(shape), dtype);
  t.zero_();
  return t;
}

void Arena::reset() {
  current_ = 0;
  offset_ = 0;
}

size_t Arena::used_bytes() const {
  size_t used = offset_;
  for (size_t i = 0; i < current_ && i < chunks_.size(); ++i) used += chunks_[i].size;
  return used;
}

size_t Arena::reserved_bytes() const {
  size_t total = 0;
  for (const auto& c : chunks_) total += c.size;
  return total;
}

}  // namespace primus
