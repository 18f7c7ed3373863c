#include "infer/kv_cache.h"

#include "core/error.h"

namespace primus::infer {

KvCache KvCache::allocate(int64_t num_layers, int64_t batch, int64_t max_len, int64_t kv_heads, int64_t head_dim,
                          DType dtype, Device device) {
  PRIMUS_CHECK(num_layers > 0 && batch > 0 && max_len > 0 && kv_heads > 0 && head_dim > 0,
               "KvCache: layers {}, batch {}, max_len {}, kv heads {}, head dim {} must all be > 0", num_layers, batch,
               max_len, kv_heads, head_dim);
  KvCache c;
  c.batch = batch;
  c.max_len = max_len;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.lengths.assign(static_cast<size_t>(batch), 0);
  for (int64_t l = 0; l < num_layers; ++l) {
    c.k.push_back(Tensor::zeros({batch, max_len, kv_heads, head_dim}, dtype, device));
    c.v.push_back(Tensor::zeros({batch, max_len, kv_heads, head_dim}, dtype, device));
  }
  return c;
}

size_t KvCache::bytes() const {
  size_t n = 0;
  for (const Tensor& t : k) n += t.nbytes();
  for (const Tensor& t : v) n += t.nbytes();
  return n;
}

}  // namespace primus::infer
