// generate_test_checkpoint: saves one of the tiny Llama checkpoints of checkpoint_fixture.h
// (random init with a seed) the way training saves it, for tests/generate/check_generate.py.
//
//   generate_test_checkpoint list
//   generate_test_checkpoint <case> <save_dir> [seed]
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "checkpoint_fixture.h"
#include "core/error.h"

using namespace primus;

int main(int argc, char** argv) {
  const std::map<std::string, ModelConfig> cases = {
      {"tiny_gqa", test_generate::tiny_gqa()},
      {"tiny_rope_scaling_tied", test_generate::tiny_rope_scaling_tied()},
      {"tiny_mqa_partial_rotary", test_generate::tiny_mqa_partial_rotary()},
  };
  if (argc == 2 && std::string(argv[1]) == "list") {
    for (const auto& [name, c] : cases) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (argc < 3 || !cases.count(argv[1])) {
    std::fprintf(stderr, "usage: generate_test_checkpoint list | <case> <save_dir> [seed]\n");
    return 2;
  }
  try {
    const uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1234;
    test_generate::save_test_checkpoint(argv[2], cases.at(argv[1]), seed);
  } catch (const Error& e) {
    std::fprintf(stderr, "generate_test_checkpoint: %s\n", e.what());
    return 1;
  }
  return 0;
}
