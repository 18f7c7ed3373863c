// Builds a GPT dataset over sequences [FIRST, LAST) of PREFIX with its index cache in
// CACHE_DIR, for megatron_index_reference.py to compare with numpy.
//   gpt_index_dump PREFIX CACHE_DIR SEQ_LENGTH NUM_SAMPLES SEED FIRST LAST
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "data/gpt_dataset.h"

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: gpt_index_dump PREFIX CACHE_DIR SEQ_LENGTH NUM_SAMPLES SEED FIRST LAST\n");
    return 2;
  }
  try {
    auto src = std::make_shared<primus::data::IndexedTokenSource>(argv[1]);
    primus::data::GptDatasetOptions o;
    o.cache_dir = argv[2];
    o.seq_length = std::atoll(argv[3]);
    o.num_samples = std::atoll(argv[4]);
    o.seed = std::strtoull(argv[5], nullptr, 10);
    primus::data::GptDataset ds(src, std::atoll(argv[6]), std::atoll(argv[7]), o);
    std::printf("%lld samples\n", static_cast<long long>(ds.size()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt_index_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
