// `primus projection`: which parallel layouts of an experiment fit on N nodes x G GPUs, and how
// long would a step take? A first-order model, stated here so that its errors can be found:
//
// Layouts: tp a power of two dividing G, the attention heads and query groups (tensor
// parallelism stays inside a node, with sequence parallelism); pp dividing the layers; cp
// dividing N G / (tp pp) with seq_length a multiple of 2 cp (the load-balanced split); dp =
// N G / (tp pp cp) with global_batch_size a multiple of micro_batch_size x dp; for MoE models ep
// dividing the experts and dp x cp (expert tensor parallel = tp). Recompute, precision, the
// distributed optimizer and the overlaps are the experiment's.
// Memory per GPU: estimate_memory (model/model_stats.h) on the fullest pipeline stage, plus the
// runtime's own memory (CUDA context, library workspaces) that a step table measured; a layout
// fits when it is at most --fit-fraction (0.95) of --gpu-memory-gib.
// Step time (seconds), with B the global batch, b the micro-batch, s seq_length, h hidden,
// m = B / (b dp) micro-batches per pipeline, v virtual stages, L layers, A = b (s / cp) h x 2 bytes
// (one 16-bit activation tensor of a micro-batch's share on a cp rank):
//   compute   = with --bench-table, the measured kernels of the layout's tp (safe/step_table.h:
//               table_compute_seconds); else FLOPs per token (training_flops_per_token) x B s /
//               (N G) / (--tflops x 1e12), x (1 + 1/3) for full recompute (one more forward)
//   bubble    = compute x (pp - 1) / (m v)                           (1F1B, interleaved)
//   tp        = m x (L / pp) x 4 x A x 2(tp-1)/tp / busbw(all_reduce)  (2 forward + 2 backward
//               per layer; sequence parallel's all-gather + reduce-scatter move the same bytes)
//   cp        = m x (L / pp) x (3 cp - 2) x KV / busbw(send_recv)    (ring attention: cp-1 K/V
//               shifts forward, cp-1 K/V and cp dK/dV backward; KV = b (s / cp) x (2 groups x
//               head_dim, MLA: heads x (qk + rope + v dims)) / tp x 2 bytes; counted whole,
//               though the forward's shifts run beside its attention)
//   dp        = grads x (n-1)/n x 2 / busbw(all_reduce), or with the distributed optimizer
//               grads x (n-1)/n / busbw(reduce_scatter) + weights x (n-1)/n / busbw(all_gather),
//               n = dp x cp (dense gradients are reduced over data x context parallel);
//               grads = 4 B per parameter of the GPU, weights 2 B; with overlap_grad_reduce only
//               the part longer than 2/3 of compute (the backward) is exposed
//   pp        = 2 m x A / busbw(send_recv)                            (activations + gradients)
//   ep        = m x (MoE layers / pp) x 4 x b s k h 2 B x (ep-1)/ep / busbw(all_to_all)
//   step      = compute + bubble + tp + cp + dp + pp + ep              (no other overlap)
// A group uses the intra-node busbw when its ranks fit on one node (Megatron's rank order
// tp, cp, ep, dp, pp: tp spans tp ranks, cp tp x cp, dp tp x cp x dp, ep tp x ep, pp the whole
// job), else the inter-node one. Bandwidths come from a preflight JSON report (median over its groups at
// the largest size) or from --intra-busbw / --inter-busbw for every op.
// Not modelled: launch gaps and host work between kernels, data loading, MoE routing; with
// --tflops alone also attention vs GEMM efficiency, tp's smaller GEMMs and the optimizer step.
// docs/SAFE.md has the measured error of the step time on one GPU.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/model_stats.h"
#include "safe/bus_bandwidth.h"
#include "safe/step_table.h"

namespace primus::safe {

struct Bandwidths {  // busbw GB/s per op
  std::map<CollectiveOp, double> intra, inter;
  std::string source;  // "preflight report X" or "flags"
};

// The median busbw per op at the largest size of a preflight JSON report's intra-node groups
// and of its inter-node (else world) groups; ops it lacks fall back to `fallback`.
Bandwidths bandwidths_from_preflight(const nlohmann::json& report, const Bandwidths& fallback);

struct ProjectionInput {
  ModelConfig model;
  TrainingSetup setup;
  int64_t nodes = 1, gpus_per_node = 8;
  double tflops = 0;               // sustained training TFLOP/s per GPU (0: only the table's layouts)
  // Measured compute per tp (`primus bench step`, safe/step_table.h); when set, a layout whose tp
  // it has takes its compute from it, others from `tflops`.
  std::optional<StepTable> table;
  std::string table_source;
  double gpu_memory_gib = 80;
  double fit_fraction = 0.95;
  bool overlap_grad_reduce = false;
  int64_t virtual_stages = 1;
  Bandwidths bw;
};

struct StepTime {
  bool measured = false;  // compute from the step table (else from --tflops)
  double compute = 0, bubble = 0, tp = 0, cp = 0, dp = 0, pp = 0, ep = 0;
  double total() const { return compute + bubble + tp + cp + dp + pp + ep; }
};

struct LayoutProjection {
  ParallelLayout layout;
  MemoryEstimate memory;
  double runtime_bytes = 0;  // the step table's CUDA context and library workspaces (0 without a table)
  double memory_bytes() const { return memory.total_bytes() + runtime_bytes; }
  StepTime time;
  bool fits = false;
  double tokens_per_s_per_gpu = 0;
};

// Every valid layout, fitting ones first, each group sorted by step time.
std::vector<LayoutProjection> project_layouts(const ProjectionInput& in);
// The step time of one layout (exposed for tests).
StepTime project_step_time(const ProjectionInput& in, const ParallelLayout& l, const MemoryEstimate& mem);

// The table of the first `top` layouts and a header saying what was assumed.
std::string render_projection(const ProjectionInput& in, const std::vector<LayoutProjection>& all, int top);

}  // namespace primus::safe
