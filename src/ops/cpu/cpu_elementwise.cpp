// fill, copy_cast, copy_columns, add, scale on CPU. fill and copy_cast understand fp32/bf16/fp16 so the
// optimizer and checkpoint code can move between precisions; add and scale are fp32.
#include <cstring>

#include "ops/cpu/cpu_backend.h"

namespace primus::ops::cpu {

void require_f32(const Tensor& t, const char* op, const char* what) {
  PRIMUS_CHECK(t.dtype() == DType::F32,
               "{}: {} must be fp32 on the CPU backend, got {} (bf16/fp16 compute runs on CUDA; "
               "use param dtype fp32 on CPU)",
               op, what, t.describe());
}

void CpuBackend::fill(Tensor& t, float value) {
  PRIMUS_CHECK(is_float_type(t.dtype()) || (t.dtype() == DType::I32 && value == static_cast<int32_t>(value)),
               "fill: unsupported tensor {} (fp32/bf16/fp16, or int32 with an integral value)", t.describe());
  if (t.dtype() == DType::I32) {
    int32_t* p = t.data<int32_t>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(value);
    return;
  }
  pool_.parallel_for(t.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store_from_f32(t, i, value);
  }, 1 << 16);
}

void CpuBackend::copy_cast(Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype()) {
    std::memcpy(dst.raw(), src.raw(), dst.nbytes());
    return;
  }
  PRIMUS_CHECK(is_float_type(dst.dtype()) && is_float_type(src.dtype()),
               "copy_cast: casts between fp32/bf16/fp16 only, got {} -> {}", src.describe(), dst.describe());
  pool_.parallel_for(dst.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store_from_f32(dst, i, load_as_f32(src, i));
  }, 1 << 16);
}

void CpuBackend::copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  const int64_t rows = dst.size(0), es = static_cast<int64_t>(dtype_size(dst.dtype()));
  const int64_t wd = dst.size(1) * es, ws = src.size(1) * es;
  char* d = static_cast<char*>(dst.raw()) + dst_col * es;
  const char* s = static_cast<const char*>(src.raw()) + src_col * es;
  for (int64_t r = 0; r < rows; ++r) std::memcpy(d + r * wd, s + r * ws, static_cast<size_t>(width * es));
}

void CpuBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  require_f32(out, "add", "out");
  require_f32(a, "add", "a");
  require_f32(b, "add", "b");
  float* o = out.data<float>();
  const float *pa = a.data<float>(), *pb = b.data<float>();
  pool_.parallel_for(out.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) o[i] = pa[i] + pb[i];
  }, 1 << 16);
}

void CpuBackend::scale(Tensor& t, float alpha) {
  require_f32(t, "scale", "t");
  float* p = t.data<float>();
  pool_.parallel_for(t.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) p[i] *= alpha;
  }, 1 << 16);
}

}  // namespace primus::ops::cpu
