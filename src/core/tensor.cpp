#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace primus {

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

#ifdef PRIMUS_WITH_CUDA
#define PRIMUS_CUDART_CHECK(expr)                                                         \
  do {                                                                                    \
    cudaError_t e_ = (expr);                                                              \
    PRIMUS_CHECK(e_ == cudaSuccess, "CUDA error {}: {}", cudaGetErrorName(e_),            \
                 cudaGetErrorString(e_));                                                 \
  } while (0)
#endif

bool cuda_available() {
#ifdef PRIMUS_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
#else
  return false;
#endif
}

void* device_alloc(size_t bytes, Device device) {
  if (bytes == 0) bytes = 64;
  if (device == Device::CPU) {
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    PRIMUS_CHECK(p != nullptr, "out of host memory allocating {} bytes", bytes);
    return p;
  }
#ifdef PRIMUS_WITH_CUDA
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("CUDA out of memory allocating {:.2f} GiB ({:.2f} GiB free of {:.2f} GiB). "
         "Lower micro_batch_size or seq_length, set recompute_granularity: full, or raise "
         "tensor/pipeline parallel sizes; `primus train --dry-run` prints the memory estimate.",
         bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
  }
  return p;
#else
  fail("a CUDA tensor was requested but this primus was built without CUDA (rebuild with -DPRIMUS_CUDA=ON)");
#endif
}

void device_free(void* ptr, Device device) {
  if (!ptr) return;
  if (device == Device::CPU) {
    std::free(ptr);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  cudaFree(ptr);
#endif
}

void device_memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev == Device::CPU && src_dev == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  PRIMUS_CUDART_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
#else
  fail("device copy involving CUDA in a build without CUDA");
#endif
}

void device_memset_zero(void* ptr, Device device, size_t bytes) {
  if (bytes == 0) return;
  if (device == Device::CPU) {
    std::memset(ptr, 0, bytes);
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  PRIMUS_CUDART_CHECK(cudaMemset(ptr, 0, bytes));
#endif
}

int64_t Tensor::size(int dim) const {
  int d = dim < 0 ? dim + ndim() : dim;
  PRIMUS_CHECK(d >= 0 && d < ndim(), "dim {} out of range for tensor {}", dim, describe());
  return shape_[d];
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape) PRIMUS_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  void* p = device_alloc(t.nbytes(), device);
  t.data_ = p;
  t.storage_ = std::shared_ptr<void>(p, [device](void* q) { device_free(q, device); });
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::from_blob(void* data, Shape shape, DType dtype, Device device) {
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::view(Shape shape) const {
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      PRIMUS_CHECK(infer < 0, "view {} of {}: only one dim may be -1", shape_str(shape), describe());
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    PRIMUS_CHECK(known > 0 && numel() % known == 0, "view {} does not fit {}", shape_str(shape), describe());
    shape[infer] = numel() / known;
  }
  PRIMUS_CHECK(shape_numel(shape) == numel(), "view {} has {} elements but tensor {} has {}",
               shape_str(shape), shape_numel(shape), describe(), numel());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  PRIMUS_CHECK(ndim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0],
               "rows [{}, {}) out of range for {}", begin, end, describe());
  const int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::reinterpret(DType dtype) const {
  PRIMUS_CHECK(dtype_size(dtype) == dtype_size(dtype_), "cannot reinterpret {} as {}", describe(),
               dtype_name(dtype));
  Tensor t = *this;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  PRIMUS_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "copy {} into {}: dtype or size differ",
               src.describe(), describe());
  device_memcpy(data_, device_, src.data_, src.device_, nbytes());
}

void Tensor::zero_() { device_memset_zero(data_, device_, nbytes()); }

std::vector<float> Tensor::to_float_vector() const {
  Tensor host = device_ == Device::CPU ? *this : to(Device::CPU);
  std::vector<float> out(static_cast<size_t>(numel()));
  const size_t n = out.size();
  switch (dtype_) {
    case DType::F32: std::memcpy(out.data(), host.data_, n * 4); break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_fp32(host.data<uint16_t>()[i]);
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) out[i] = fp16_bits_to_fp32(host.data<uint16_t>()[i]);
      break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(host.data<double>()[i]);
      break;
    case DType::I32:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(host.data<int32_t>()[i]);
      break;
    default: fail("to_float_vector: unsupported dtype {}", dtype_name(dtype_));
  }
  return out;
}

Tensor Tensor::from_floats(const std::vector<float>& v, Shape shape, DType dtype, Device device) {
  PRIMUS_CHECK(shape_numel(shape) == static_cast<int64_t>(v.size()), "from_floats: {} values for shape {}",
               v.size(), shape_str(shape));
  Tensor host = empty(shape, dtype, Device::CPU);
  switch (dtype) {
    case DType::F32: std::memcpy(host.data_, v.data(), v.size() * 4); break;
    case DType::BF16:
      for (size_t i = 0; i < v.size(); ++i) host.data<uint16_t>()[i] = fp32_to_bf16_bits(v[i]);
      break;
    case DType::F16:
      for (size_t i = 0; i < v.size(); ++i) host.data<uint16_t>()[i] = fp32_to_fp16_bits(v[i]);
      break;
    default: fail("from_floats: unsupported dtype {}", dtype_name(dtype));
  }
  return device == Device::CPU ? host : host.to(device);
}

std::string Tensor::describe() const {
  return fmt::format("{}{} on {}", dtype_name(dtype_), shape_str(shape_), device_name(device_));
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  PRIMUS_CHECK(t.shape() == expected, "{}: expected shape {}, got {}", what, shape_str(expected),
               t.describe());
}
void check_dtype(const Tensor& t, DType expected, const char* what) {
  PRIMUS_CHECK(t.dtype() == expected, "{}: expected dtype {}, got {}", what, dtype_name(expected),
               t.describe());
}
void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  PRIMUS_CHECK(a.device() == b.device(), "{}: tensors on different devices ({} vs {})", what,
               a.describe(), b.describe());
}

}  // namespace primus
