#include "ops/cpu/openblas_kernels.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace primus::ops::cpu {

const char* openblas_kernels() {
  // Looked up at run time: the binary may be linked against another BLAS.
  using CoreName = char* (*)();
  auto fn = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const char* name = fn != nullptr ? fn() : nullptr;
  return name != nullptr ? name : "";
}

const char* better_openblas_coretype() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  // Prescott is OpenBLAS's generic x86-64 fallback for models it does not recognise; Haswell
  // (and Zen, the same kernels) is what 0.3.21 gives AVX-512 cores it does not know (Zen 4).
  const char* now = openblas_kernels();
  const bool generic = std::strcmp(now, "Prescott") == 0;
  const bool avx2_only = std::strcmp(now, "Haswell") == 0 || std::strcmp(now, "Zen") == 0;
  if (!generic && !avx2_only) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (generic && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

void restart_with_faster_openblas_kernels(char** argv) {
  const char* core = better_openblas_coretype();
  if (core == nullptr || argv == nullptr || argv[0] == nullptr) return;
  if (setenv("OPENBLAS_CORETYPE", core, 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // the exec failed: carry on with the kernels we have
}

}  // namespace primus::ops::cpu
