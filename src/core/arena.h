// Arena: bump allocation for activations that live for one training step.
//
// The model asks the arena for every saved activation and scratch buffer during
// forward/backward; `reset()` at the end of the step frees all of them at once. On CPU
// the arena grows by chunks; on CUDA it reserves one block up front (sized from the
// first step's high-water mark) so that steady-state steps never call cudaMalloc.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace primus {

class Arena {
 public:
  explicit Arena(Device device, size_t chunk_bytes = size_t{64} << 20);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  Tensor alloc(Shape shape, DType dtype);
  Tensor zeros(Shape shape, DType dtype);
  // Frees everything allocated since construction (or the last reset). Chunks are kept.
  void reset();
  // Marks and releases allocations in LIFO order (scratch buffers inside one op).
  struct Mark { size_t chunk, offset; };
  Mark mark() const { return {current_, offset_}; }
  void release(Mark m) { current_ = m.chunk; offset_ = m.offset; }

  size_t used_bytes() const;
  size_t high_water_bytes() const { return high_water_; }
  size_t reserved_bytes() const;
  Device device() const { return device_; }

 private:
  struct Chunk { Tensor block; size_t size; };
  Device device_;
  size_t chunk_bytes_;
  std::vector<Chunk> chunks_;
  size_t current_ = 0, offset_ = 0, high_water_ = 0;
};

}  // namespace primus
