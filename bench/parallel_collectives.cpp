// Collective timings over the world communicator, one JSON object per line.
//   mpirun -np 2 --oversubscribe build/bin/bench_parallel_collectives [max_mib=64]
// Bus bandwidth follows the usual convention: all_reduce 2*S*(n-1)/n/t, reduce_scatter
// and all_gather S*(n-1)/n/t, with S the full buffer size in bytes.
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "parallel/launch_info.h"
#include "parallel/world.h"

using namespace primus;
using namespace primus::parallel;

int main(int argc, char** argv) {
  const int64_t max_bytes = (argc > 1 ? std::atoll(argv[1]) : 64) << 20;
  WorldOptions wo;
  wo.device = Device::CPU;
  auto world = create_world_communicator(detect_launch(), wo);
  const int n = world->size();
  for (int64_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    const int64_t numel = bytes / 4 / n * n;
    Tensor buf = Tensor::zeros({numel}, DType::F32);
    Tensor shard = Tensor::zeros({numel / n}, DType::F32);
    const int iters = bytes >= (16 << 20) ? 5 : 20;
    struct Op { const char* name; double factor; };
    for (Op op : {Op{"all_reduce", 2.0}, Op{"reduce_scatter", 1.0}, Op{"all_gather", 1.0}}) {
      auto run = [&] {
        std::string_view name = op.name;
        if (name == "all_reduce") world->all_reduce(buf, ReduceOp::Sum);
        else if (name == "reduce_scatter") world->reduce_scatter(shard, buf, ReduceOp::Sum);
        else world->all_gather(buf, shard);
      };
      run();  // warm-up
      world->barrier();
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) run();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      double t = world->all_reduce_value(s, ReduceOp::Max);
      if (world->rank() == 0)
        std::printf("{\"op\": \"%s\", \"backend\": \"%s\", \"ranks\": %d, \"bytes\": %lld, \"time_us\": %.1f, "
                    "\"bus_gbps\": %.3f}\n",
                    op.name, std::string(world->backend()).c_str(), n, static_cast<long long>(numel * 4),
                    t * 1e6, op.factor * numel * 4.0 * (n - 1) / n / t / 1e9);
    }
  }
  return 0;
}
