#include "parallel/process_groups.h"

#include <algorithm>

namespace primus::parallel {

ProcessGroups::ProcessGroups(Communicator& world, const ParallelDims& dims)
    : world_(world), dims_(dims) {
  PRIMUS_CHECK(world.size() == dims.world_size(),
               "process groups: the layout {} is for {} ranks but {} has {}", dims.describe(),
               dims.world_size(), world.describe(), world.size());
  coords_ = dims.coords(world.rank());
  tp_ = make("tp", "tp");
  cp_ = make("cp", "cp");
  dp_ = make("dp", "dp");
  dp_cp_ = make("dp-cp", "dp_cp");
  pp_ = make("pp", "pp");
  mp_ = make("tp-pp", "mp");
  ep_ = make("ep", "ep");
  expert_dp_ = make("expert_dp", "expert_dp");
}

std::unique_ptr<Communicator> ProcessGroups::make(std::string_view dims, const char* name) {
  const int me = world_.rank();
  std::vector<std::vector<int>> groups = dims_.groups(dims);
  for (size_t g = 0; g < groups.size(); ++g) {
    auto it = std::find(groups[g].begin(), groups[g].end(), me);
    if (it == groups[g].end()) continue;
    const int key = static_cast<int>(it - groups[g].begin());
    std::unique_ptr<Communicator> c = world_.split(static_cast<int>(g), key, name);
    PRIMUS_CHECK(c && c->size() == static_cast<int>(groups[g].size()) && c->rank() == key,
                 "process groups: split of '{}' gave rank {} of {} on world rank {}, expected {} of {}",
                 name, c ? c->rank() : -1, c ? c->size() : 0, me, key, groups[g].size());
    return c;
  }
  fail("process groups: world rank {} is in no '{}' group of {}", me, name, dims_.describe());
}

}  // namespace primus::parallel
