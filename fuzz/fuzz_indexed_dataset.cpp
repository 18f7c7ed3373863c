// Megatron's .idx/.bin reader. The input is split at a position given by its first byte into
// the .idx and the .bin; every sequence the reader accepts is read.
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t cut = std::min(size - 1, static_cast<size_t>(data[0]) * 8);
  primus::fuzz::write_input("ds.idx", data + 1, cut);
  primus::fuzz::write_input("ds.bin", data + 1 + cut, size - 1 - cut);
  try {
    const primus::data::IndexedDataset ds((primus::fuzz::scratch_dir() / "ds").string());
    for (int64_t i = 0; i < ds.num_sequences(); ++i) (void)ds.sequence(i).size();
  } catch (const primus::Error&) {
  }
  return 0;
}
