// Helpers every test binary shares (unit, GPU, MPI, the generation fixtures): scratch
// directories and whole-file reads, the message of an expected primus::Error, the relative
// error of a result against its reference, and the tiny Llama the model tests start from.
//
//   #include "../test_util.h"          (from tests/<kind>/)
//   using primus::test::temp_dir;  ...
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/model_config.h"
#include "parallel/named_tensor.h"

namespace primus::test {

// A fresh, empty directory <tmp>/primus_test_<name>_<pid> (whatever an earlier run left there
// is removed first).
inline std::filesystem::path temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path d = fs::temp_directory_path() / ("primus_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The whole file, byte for byte ("" when it cannot be read).
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The message of the primus::Error that `f` throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// max |a - b| / max |b| over n values: one number for "how far is a from the reference b".
inline double max_rel_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return num / std::max(den, 1e-30);
}
inline double max_rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return max_rel_error(a.data(), b.data(), std::min(a.size(), b.size()));
}
inline double max_rel_error(const Tensor& a, const Tensor& b) {
  return max_rel_error(a.to_float_vector(), b.to_float_vector());
}

// Every parameter's gradient by name (fp32 values), e.g. of a DecoderModel.
template <typename Model>
std::map<std::string, std::vector<float>> grads_of(Model& m) {
  std::map<std::string, std::vector<float>> g;
  for (NamedTensor* p : m.parameters()) g[p->name] = p->grad.to_float_vector();
  return g;
}

// The shape of a tiny Llama: 4 query heads in 2 groups (GQA), `layers` x `hidden`, SwiGLU
// width `ffn`, a vocabulary of `vocab` ids in `padded_vocab` rows (0: vocab rows), positions
// up to `max_positions`. Everything else keeps ModelConfig's defaults for the caller to set:
//   ModelConfig c = test::tiny_llama({.name = "lora_tiny"});
//   ModelConfig pp = test::tiny_llama({.name = "pp", .layers = 4, .hidden = 32, .ffn = 64, .vocab = 100, .padded_vocab = 128});
struct TinyLlama {
  std::string name;
  int64_t layers = 2, hidden = 16, ffn = 24;
  int64_t vocab = 32, padded_vocab = 0;
  int64_t max_positions = 64;
};

inline ModelConfig tiny_llama(const TinyLlama& t) {
  ModelConfig c;
  c.name = t.name;
  c.num_layers = t.layers;
  c.hidden_size = t.hidden;
  c.ffn_hidden_size = t.ffn;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.vocab_size = t.vocab;
  c.padded_vocab_size = t.padded_vocab > 0 ? t.padded_vocab : t.vocab;
  c.max_position_embeddings = t.max_positions;
  return c;
}

}  // namespace primus::test
