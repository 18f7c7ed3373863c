// On-device weight init: N(mean, std^2) values of the Philox-4x32-10 counter-based stream of
// core/rng.h, identical to CounterRng::fill_normal element for element (same counter, key and
// Box-Muller in double precision, then rounded to the tensor's dtype), so a model initialised
// on the GPU equals one initialised on the host and copied over. Runs map local elements to
// their index in the full (unsharded) tensor, as parallel::shard_runs() describes a shard.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace primus::cuda {

struct NormalRun {
  int64_t local_offset = 0, full_offset = 0, numel = 0;
};

// t (local elements) fp32/bf16/fp16: element runs[i].local_offset + j gets the stream's value
// number runs[i].full_offset + j. Uploads the runs (cut into <= 64K-element pieces) first.
void launch_fill_normal_runs(void* t, DType dt, const std::vector<NormalRun>& runs, uint64_t seed,
                             uint64_t stream_id, float mean, float std, cudaStream_t stream);

}  // namespace primus::cuda
