// OpenBLAS picks its GEMM kernels from the CPU model when the library loads (before main), or
// from OPENBLAS_CORETYPE when that is set. OpenBLAS 0.3.21 (Debian 12) does not know recent
// models: it falls back to its Prescott (SSE3) kernels on new Intel CPUs that have AVX2 and
// AVX-512 (measured on a 2-core VM: fp32 sgemm 1536^3 at 47 GFLOP/s with Prescott, 140 with
// Haswell (AVX2), 208 with SkylakeX (AVX-512) kernels) and to Haswell on AVX-512 AMD cores
// (docs/ENGINE.md: SkylakeX 1.7-2x faster there). Since the choice is made at load time, the
// only fix from inside is to start again with the variable set.
//
// Usage, first thing in main():
//   primus::ops::cpu::restart_with_faster_openblas_kernels(argv);
// A user's own OPENBLAS_CORETYPE is always kept.
#pragma once

namespace primus::ops::cpu {

// The kernel set OpenBLAS runs now ("Prescott", "SkylakeX", ...), or "" when the BLAS linked is
// not OpenBLAS.
const char* openblas_kernels();

// The OpenBLAS core type to use instead of the fallback OpenBLAS chose: "SkylakeX" with
// AVX-512F/BW/VL/DQ over Prescott or Haswell/Zen, "Haswell" with AVX2 + FMA over Prescott; nullptr
// when OpenBLAS chose something else, OPENBLAS_CORETYPE is set, or the CPU has neither.
const char* better_openblas_coretype();

// When better_openblas_coretype() names one: sets OPENBLAS_CORETYPE to it and re-executes
// /proc/self/exe with the same argv (same pid, so launchers and signals are unaffected). Returns
// only when nothing needs to change or the exec failed (then the run goes on as it is).
void restart_with_faster_openblas_kernels(char** argv);

}  // namespace primus::ops::cpu
