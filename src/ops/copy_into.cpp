#include "ops/copy_into.h"

namespace primus::ops {

void copy_into(Context& ctx, Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype()) return dst.copy_from(src);
  copy_cast(ctx, dst, src.device() == dst.device() ? src : src.to(dst.device()));
}

}  // namespace primus::ops
