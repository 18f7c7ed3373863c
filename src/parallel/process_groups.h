// ProcessGroups: one communicator per parallel dimension, split from the world.
//
// Built once at start-up and passed explicitly to whatever communicates (data-parallel
// gradient buckets, tensor/pipeline-parallel layers later): there is no global registry.
// The groups and their member order are exactly ParallelDims::groups(...), so a rank's
// index in, say, dp() is its dp coordinate.
//
//   tp         tensor parallel (column/row-parallel linears, sequence parallel)
//   cp         context parallel
//   dp         data parallel (without cp)
//   dp_cp      data x context parallel: where dense gradients are reduced
//   pp         pipeline stages, ordered by stage
//   mp         model parallel = tp x pp (global grad norm, found-inf flags)
//   ep         expert parallel (token dispatch)
//   expert_dp  data parallel of expert weights (their gradients are reduced here)
#pragma once

#include <memory>

#include "parallel/communicator.h"
#include "parallel/parallel_dims.h"

namespace primus::parallel {

class ProcessGroups {
 public:
  // Collective over `world`: every rank calls it with the same dims, in the same order
  // relative to other collectives. `world` must outlive this object.
  ProcessGroups(Communicator& world, const ParallelDims& dims);

  const ParallelDims& dims() const { return dims_; }
  const RankCoords& coords() const { return coords_; }

  Communicator& world() const { return world_; }
  Communicator& tp() const { return *tp_; }
  Communicator& cp() const { return *cp_; }
  Communicator& dp() const { return *dp_; }
  Communicator& dp_cp() const { return *dp_cp_; }
  Communicator& pp() const { return *pp_; }
  Communicator& mp() const { return *mp_; }
  Communicator& ep() const { return *ep_; }
  Communicator& expert_dp() const { return *expert_dp_; }

  bool is_first_pp_stage() const { return coords_.pp == 0; }
  bool is_last_pp_stage() const { return coords_.pp == dims_.pp() - 1; }
  // Ranks in pp() of the previous / next stage (wrapping around, as the interleaved
  // schedule sends from the last stage to the first).
  int pp_prev() const { return (coords_.pp + dims_.pp() - 1) % dims_.pp(); }
  int pp_next() const { return (coords_.pp + 1) % dims_.pp(); }

 private:
  std::unique_ptr<Communicator> make(std::string_view dims, const char* name);

  Communicator& world_;
  ParallelDims dims_;
  RankCoords coords_;
  std::unique_ptr<Communicator> tp_, cp_, dp_, dp_cp_, pp_, mp_, ep_, expert_dp_;
};

}  // namespace primus::parallel
