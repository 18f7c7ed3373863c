#include "infer/kv_cache.h"

#include <cctype>
#include <cmath>

#include <fmt/core.h>

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

namespace primus::infer {

KvCachePlan plan_kv_cache(int64_t values_per_token, DType dtype, int64_t max_len, int64_t sequences,
                          const KvCacheBudget& budget) {
  PRIMUS_CHECK(values_per_token > 0 && max_len > 0 && sequences > 0,
               "plan_kv_cache: values per token {}, max_len {}, sequences {} must all be > 0", values_per_token,
               max_len, sequences);
  PRIMUS_CHECK(budget.max_batch >= 0, "{} {} must be >= 1 (or 0: no cap)", budget.max_batch_key, budget.max_batch);
  PRIMUS_CHECK(budget.memory_bytes >= 0, "{} {} must be a positive size such as 2GiB", budget.memory_key,
               budget.memory_bytes);
  KvCachePlan p;
  p.max_len = max_len;
  p.bytes_per_slot = max_len * values_per_token * static_cast<int64_t>(dtype_size(dtype));
  p.slots = sequences;
  p.limited_by = "sequences";
  if (budget.max_batch > 0 && budget.max_batch < p.slots) {
    p.slots = budget.max_batch;
    p.limited_by = "max_batch";
  }
  if (budget.memory_bytes > 0) {
    const int64_t fit = budget.memory_bytes / p.bytes_per_slot;
    PRIMUS_CHECK(fit >= 1,
                 "{} {} ({}) holds no KV-cache slot: one sequence of {} positions (the longest prompt + max new "
                 "tokens - 1) needs {} bytes ({}) in {}; raise {} to at least {} bytes, or shorten the prompts or "
                 "the new tokens",
                 budget.memory_key, budget.memory_bytes, format_bytes(budget.memory_bytes), max_len, p.bytes_per_slot,
                 format_bytes(p.bytes_per_slot), dtype_name(dtype), budget.memory_key, p.bytes_per_slot);
    if (fit < p.slots) {
      p.slots = fit;
      p.limited_by = "memory";
    }
  }
  p.bytes = p.slots * p.bytes_per_slot;
  return p;
}

int64_t parse_memory_size(const std::string& text, const std::string& key) {
  std::string t;
  for (char c : text)
    if (!std::isspace(static_cast<unsigned char>(c))) t += c;
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
  const std::string number = t.substr(0, i);
  std::string unit = t.substr(i);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  // Binary: K, KI, KIB (and M, G, T alike); decimal: KB, MB, GB, TB; bytes: "" or B.
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  static const char kLetters[] = "KMGT";
  for (int k = 0; k < 4; ++k) {
    const std::string l(1, kLetters[k]);
    if (unit == l || unit == l + "I" || unit == l + "IB") scale = std::pow(1024.0, k + 1);
    if (unit == l + "B") scale = std::pow(1000.0, k + 1);
  }
  double value = -1;
  if (!number.empty() && scale > 0) {
    try {
      size_t used = 0;
      value = std::stod(number, &used);
      if (used != number.size()) value = -1;
    } catch (const std::exception&) {
      value = -1;
    }
  }
  PRIMUS_CHECK(value > 0 && value * scale >= 1 && value * scale < 9.0e18,
               "{} '{}' is not a memory size: write e.g. 2GiB, 512MiB, 1.5GB (10^9 bytes) or a byte count", key,
               text);
  return static_cast<int64_t>(value * scale);
}

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1073741824.0) return fmt::format("{:.2f} GiB", b / 1073741824.0);
  if (b >= 1048576.0) return fmt::format("{:.2f} MiB", b / 1048576.0);
  if (b >= 1024.0) return fmt::format("{:.2f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

}  // namespace primus::infer
