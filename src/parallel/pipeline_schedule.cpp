#include "parallel/pipeline_schedule.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"

namespace primus::parallel {

std::string to_string(const PipelineAction& a) {
  return fmt::format("{}{}c{}", a.op == PipelineOp::Forward ? 'F' : 'B', a.micro_batch, a.chunk);
}

namespace {

void check_layout(int P, int r, int M, int v) {
  PRIMUS_CHECK(P >= 1, "pipeline schedule: pipeline_model_parallel_size = {} must be >= 1", P);
  PRIMUS_CHECK(r >= 0 && r < P, "pipeline schedule: pipeline rank {} is not in [0, {})", r, P);
  PRIMUS_CHECK(M >= 1, "pipeline schedule: the number of micro-batches per step is {}, expected >= 1 "
               "(global_batch_size / (micro_batch_size x data-parallel size))", M);
  PRIMUS_CHECK(v >= 1, "pipeline schedule: virtual pipeline chunks = {} must be >= 1", v);
  PRIMUS_CHECK(v == 1 || P > 1,
               "pipeline schedule: the interleaved schedule ({} virtual stages per rank) needs "
               "pipeline_model_parallel_size > 1; unset num_layers_per_virtual_pipeline_stage", v);
  PRIMUS_CHECK(v == 1 || M % P == 0,
               "pipeline schedule: the interleaved schedule needs the number of micro-batches per step ({}) to be "
               "divisible by pipeline_model_parallel_size ({}); choose global_batch_size so that global_batch_size "
               "/ (micro_batch_size x data-parallel size) is a multiple of {}, or disable interleaving", M, P, P);
}

// The k-th forward (backward: reversed chunks) of the interleaved order.
PipelineAction interleaved(int k, int P, int v, PipelineOp op) {
  const int group = P * v, in_group = k % group;
  int chunk = in_group / P;
  if (op == PipelineOp::Backward) chunk = v - 1 - chunk;
  return {op, (k / group) * P + k % P, chunk};
}

}  // namespace

std::vector<PipelineAction> pipeline_schedule(int P, int r, int M, int v) {
  check_layout(P, r, M, v);
  std::vector<PipelineAction> out;
  out.reserve(static_cast<size_t>(2 * M * v));
  if (v == 1) {
    const int warmup = std::min(P - r - 1, M);
    for (int m = 0; m < warmup; ++m) out.push_back({PipelineOp::Forward, m, 0});
    for (int m = warmup; m < M; ++m) {
      out.push_back({PipelineOp::Forward, m, 0});
      out.push_back({PipelineOp::Backward, m - warmup, 0});
    }
    for (int m = M - warmup; m < M; ++m) out.push_back({PipelineOp::Backward, m, 0});
    return out;
  }
  const int total = M * v;
  // Megatron: with exactly P micro-batches every rank runs all forwards first.
  const int warmup = M == P ? total : std::min((P - r - 1) * 2 + (v - 1) * P, total);
  for (int k = 0; k < warmup; ++k) out.push_back(interleaved(k, P, v, PipelineOp::Forward));
  for (int k = 0; k < total - warmup; ++k) {
    out.push_back(interleaved(k + warmup, P, v, PipelineOp::Forward));
    out.push_back(interleaved(k, P, v, PipelineOp::Backward));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(interleaved(k, P, v, PipelineOp::Backward));
  return out;
}

std::vector<PipelineAction> forward_only_schedule(int P, int r, int M, int v) {
  PRIMUS_CHECK(P >= 1 && r >= 0 && r < P && M >= 1 && v >= 1,
               "forward-only pipeline schedule: bad layout (pp size {}, rank {}, {} micro-batches, {} chunks)", P, r,
               M, v);
  std::vector<PipelineAction> out;
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < v; ++c) out.push_back({PipelineOp::Forward, m, c});
  return out;
}

LayerRange pipeline_layer_range(int64_t num_layers, int num_stages, int stage) {
  PRIMUS_CHECK(num_stages >= 1 && stage >= 0 && stage < num_stages,
               "pipeline layers: virtual stage {} is not in [0, {})", stage, num_stages);
  PRIMUS_CHECK(num_layers % num_stages == 0,
               "pipeline layers: num_layers = {} does not split evenly over {} pipeline stages (pipeline_model_"
               "parallel_size x virtual stages per rank); use a num_layers divisible by {}", num_layers, num_stages,
               num_stages);
  const int64_t per = num_layers / num_stages;
  return {stage * per, per};
}

std::vector<int64_t> pipeline_stage_layers(int64_t num_layers, int pp, const UnevenSplit& split) {
  PRIMUS_CHECK(pp >= 1, "pipeline layers: pipeline_model_parallel_size = {} must be >= 1", pp);
  PRIMUS_CHECK(split.first_stage_layers >= 0 && split.last_stage_layers >= 0,
               "pipeline layers: decoder_first_pipeline_num_layers = {} and decoder_last_pipeline_num_layers = {} "
               "must not be negative", split.first_stage_layers, split.last_stage_layers);
  PRIMUS_CHECK(!split.uneven() || pp > 1,
               "pipeline layers: decoder_first_pipeline_num_layers / decoder_last_pipeline_num_layers need "
               "pipeline_model_parallel_size > 1");
  std::vector<int64_t> counts(static_cast<size_t>(pp), 0);
  int64_t rest = num_layers, shared_by = pp;
  const bool fixed_first = split.first_stage_layers > 0, fixed_last = split.last_stage_layers > 0;
  if (fixed_first) {
    counts.front() = split.first_stage_layers;
    rest -= split.first_stage_layers;
    --shared_by;
  }
  if (fixed_last) {
    counts.back() = split.last_stage_layers;
    rest -= split.last_stage_layers;
    --shared_by;
  }
  PRIMUS_CHECK(rest >= 0 && (shared_by > 0 ? rest % shared_by == 0 : rest == 0),
               "pipeline layers: {} layers do not split over {} pipeline stages with "
               "decoder_first_pipeline_num_layers = {} and decoder_last_pipeline_num_layers = {} ({} layers left "
               "for the {} other stages, which share them evenly); change the counts or num_layers",
               num_layers, pp, split.first_stage_layers, split.last_stage_layers, rest, shared_by);
  for (int s = 0; s < pp; ++s) {
    const bool fixed = (s == 0 && fixed_first) || (s == pp - 1 && fixed_last);
    if (!fixed) counts[static_cast<size_t>(s)] = rest / shared_by;
  }
  return counts;
}

LayerRange pipeline_layer_range(int64_t num_layers, int pp, int stage, const UnevenSplit& split) {
  if (!split.uneven()) return pipeline_layer_range(num_layers, pp, stage);
  PRIMUS_CHECK(stage >= 0 && stage < pp, "pipeline layers: stage {} is not in [0, {})", stage, pp);
  const std::vector<int64_t> counts = pipeline_stage_layers(num_layers, pp, split);
  int64_t first = 0;
  for (int s = 0; s < stage; ++s) first += counts[static_cast<size_t>(s)];
  return {first, counts[static_cast<size_t>(stage)]};
}

}  // namespace primus::parallel
