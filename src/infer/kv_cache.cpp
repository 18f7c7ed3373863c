#include "infer/kv_cache.h"

#include "core/error.h"

namespace primus::infer {

KvCache KvCache::allocate(const std::vector<std::vector<Shape>>& entry_shapes, int64_t batch, int64_t max_len,
                          DType dtype, Device device) {
  PRIMUS_CHECK(!entry_shapes.empty() && batch > 0 && max_len > 0,
               "KvCache: layers {}, batch {}, max_len {} must all be > 0", entry_shapes.size(), batch, max_len);
  KvCache c;
  c.batch = batch;
  c.max_len = max_len;
  c.lengths.assign(static_cast<size_t>(batch), 0);
  c.positions = Tensor::zeros({batch}, DType::I32, device);
  for (const std::vector<Shape>& layer : entry_shapes) {
    std::vector<Tensor> tensors;
    for (const Shape& entry : layer) {
      Shape shape{batch, max_len};
      shape.insert(shape.end(), entry.begin(), entry.end());
      PRIMUS_CHECK(shape_numel(entry) > 0, "KvCache: an entry of shape {} is empty", shape_str(entry));
      tensors.push_back(Tensor::zeros(shape, dtype, device));
    }
    c.layers.push_back(std::move(tensors));
  }
  return c;
}

size_t KvCache::bytes() const {
  size_t n = 0;
  for (const auto& layer : layers)
    for (const Tensor& t : layer) n += t.nbytes();
  return n;
}

}  // namespace primus::infer
