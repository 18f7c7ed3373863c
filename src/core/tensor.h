// Tensor: a typed, shaped, contiguous (row-major) view of memory on one device.
//
// A Tensor either owns its storage (shared, reference-counted: copies are cheap views of
// the same bytes) or borrows it (from_blob, arena allocations). There are no strides:
// ops that need a sub-range take a `rows(begin, end)` view along dim 0 or a reshape.
// Ops live in ops/ops.h; this header only knows memory, shape and type.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace primus {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);

// Raw device memory: malloc/free on CPU (256-byte aligned), cudaMalloc/cudaFree on CUDA.
void* device_alloc(size_t bytes, Device device);
void device_free(void* ptr, Device device);
void device_memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void device_memset_zero(void* ptr, Device device, size_t bytes);
bool cuda_available();  // a CUDA build with at least one visible GPU

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(Shape shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::CPU);
  // A view of memory that someone else owns (must outlive the tensor).
  static Tensor from_blob(void* data, Shape shape, DType dtype, Device device = Device::CPU);

  bool defined() const { return data_ != nullptr || (!shape_.empty() && numel() == 0); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cuda() const { return device_ == Device::CUDA; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const;  // negative dims count from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() const { return data_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }

  // Same bytes, another shape with the same number of elements (one dim may be -1).
  Tensor view(Shape shape) const;
  // Rows [begin, end) along dim 0: a contiguous sub-range, same storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // Interpret the same bytes as another dtype of equal size (e.g. bf16 bits as uint16).
  Tensor reinterpret(DType dtype) const;

  // Copies (allocating): to another device, or into an existing tensor of equal shape.
  Tensor to(Device device) const;
  Tensor clone() const { return to(device_); }
  void copy_from(const Tensor& src);  // same dtype and numel; any devices
  void zero_();

  // CPU fp32 convenience for tests and the reference path.
  std::vector<float> to_float_vector() const;  // converts bf16/fp16/fp32 (any device)
  static Tensor from_floats(const std::vector<float>& v, Shape shape, DType dtype = DType::F32,
                            Device device = Device::CPU);

  std::string describe() const;  // "bf16[4, 8] on cuda"

 private:
  std::shared_ptr<void> storage_;  // keeps owned memory alive; null for borrowed views
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Checks with readable messages, used at op boundaries.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

}  // namespace primus
