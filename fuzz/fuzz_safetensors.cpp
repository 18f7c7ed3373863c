// The safetensors reader: header length, JSON header, dtypes, shapes and byte ranges; every
// tensor it accepts is read.
#include "core/error.h"
#include "core/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = primus::fuzz::write_input("model.safetensors", data, size);
  try {
    const primus::SafetensorsFile f(path);
    for (const auto& e : f.entries()) (void)f.load(e.name).numel();
  } catch (const primus::Error&) {
  }
  return 0;
}
