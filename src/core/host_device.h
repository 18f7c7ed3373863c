// PRIMUS_HOST_DEVICE: a function that host code and CUDA kernels share (one definition of
// a formula both sides must agree on bit for bit, e.g. core/master_bits.h, core/cp_split.h).
#pragma once

#if defined(__CUDACC__)
#define PRIMUS_HOST_DEVICE __host__ __device__
#else
#define PRIMUS_HOST_DEVICE
#endif
