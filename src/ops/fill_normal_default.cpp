// Backend's default fill_normal: the values on the host (CounterRng, the reference), then
// copied into the tensor on whatever device it lives. The CUDA backend overrides it with a
// kernel that generates the same values in place (ops/cuda/init_normal.cu).
#include "core/rng.h"
#include "ops/backend.h"

namespace primus::ops {

void Backend::fill_normal(Tensor& t, uint64_t seed, uint64_t stream, float mean, float std,
                          const std::vector<NormalRun>& runs) {
  const CounterRng rng(seed, stream);
  Tensor host = Tensor::empty({t.numel()}, DType::F32);
  for (const NormalRun& r : runs) {
    Tensor part = host.rows(r.local_offset, r.local_offset + r.numel);
    rng.fill_normal(part, mean, std, static_cast<uint64_t>(r.full_offset));
  }
  if (t.dtype() == DType::F32) {
    t.copy_from(host.view(t.shape()));
  } else {
    Tensor dev = host.view(t.shape()).to(t.device());
    copy_cast(t, dev);
  }
}

}  // namespace primus::ops
