// Expert parallelism (EP): the routed experts of every MoE layer spread over the ranks of the
// expert-parallel group, tokens sent to the rank that holds their expert and back, as
// Megatron-core's MoEAlltoAllTokenDispatcher does. The MoE block (model/mlp_moe.h) calls these
// and never a collective. With one expert-parallel rank (ExpertParallel{} or a group of one)
// nothing here is called: the block runs its local experts on its own rows.
//
// ---- Using it ---------------------------------------------------------------------
//
//   parallel::ProcessGroups groups(world, dims);              // dims.ep() ranks per ep group
//   DecoderOptions o;
//   o.expert_parallel = {&groups.ep()};     // ep rank r holds experts [r E/P, (r+1) E/P)
//   DecoderModel model(config, ctx, o);     // experts.linear_fc1/fc2 are (E/P, ...) shards
//   ...forward_backward on every ep rank with ITS OWN micro-batch (ep ranks are data-parallel
//   ranks of the dense grid)...
//   expert weights' grads: summed over groups.expert_dp(); every other grad over groups.dp_cp()
//   (train/data_parallel_optimizer.h keeps the two apart, NamedTensor::expert_parallel says which)
//
// ---- How tokens move (one MoE layer, one micro-batch; P ep ranks, E_l = E/P local experts) ----
//
//   rank q, after routing its own N tokens:
//     x_perm (M, C)   rows sorted by global expert: [experts of rank 0 | of rank 1 | ...]
//     counts (E)      rows per global expert                  (the router's dispatch plan)
//   1. all-gather counts over ep: every rank knows counts[s][e] for every source s
//   2. all-to-all-v: the chunk for rank r (its E_l experts' rows) goes to r;
//      received = [rows from rank 0 | from rank 1 | ...], each chunk ordered by local expert
//   3. regroup to expert-major order (expert 0's rows from every source, then expert 1's ...):
//      the layout the grouped GEMM reads, rows per local expert = sum_s counts[s][r E_l + e]
//   experts: y_local (M_recv, C) = SwiGLU(x_local W1_e^T) W2_e^T per local expert
//   3', 2': the inverse regroup and the same all-to-all-v with the counts swapped bring each
//   row back to its source rank, into x_perm's row order; the block then unpermutes as on
//   one rank.
//
//       rank 0 tokens ──route──▶ [e0 e1 | e2 e3] ──a2a──▶ rank 0: e0 e1 rows of ranks 0,1
//       rank 1 tokens ──route──▶ [e0 e1 | e2 e3] ──a2a──▶ rank 1: e2 e3 rows of ranks 0,1
//
// moe_token_dispatcher_type: allgather (Megatron's default) moves the same rows with the other
// collectives: every rank's x_perm rows, padded to the longest, are all-gathered over ep and each
// rank picks its experts' rows (in the same expert-major order); back, each rank writes its
// experts' outputs into a zero buffer laid out like the gathered rows and a reduce-scatter over
// ep hands every rank its own rows (only their expert's rank wrote them, so the sum is exact).
// Its traffic grows with P x the longest x_perm instead of with the rows actually routed; it
// suits small ep groups. Both give bit-identical results.
//
// Backward is the conjugate: d y_perm travels like x_perm (dispatch), d x_local like y_local
// (combine). Capacity and token dropping are applied by the router on each rank's own tokens
// before dispatch, so they are the same as on one rank with that rank's micro-batch; a rank may
// receive no rows at all for an expert (its grouped GEMM rows are 0, its weight grad 0).
#pragma once

#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "ops/ops.h"
#include "parallel/communicator.h"

namespace primus::parallel {

enum class TokenDispatcher : uint8_t { AllToAll, AllGather };

// The expert-parallel setting of a model: which group (nullptr = one rank) and which exchange.
struct ExpertParallel {
  Communicator* group = nullptr;
  TokenDispatcher dispatcher = TokenDispatcher::AllToAll;

  int size() const { return group != nullptr ? group->size() : 1; }
  int rank() const { return group != nullptr ? group->rank() : 0; }
  bool active() const { return size() > 1; }
};

// One micro-batch's exchange through one MoE layer, from the router's rows per expert.
struct TokenExchange {
  std::vector<int64_t> send_rows;   // (P) rows of x_perm going to each ep rank
  std::vector<int64_t> recv_rows;   // (P) rows arriving from each ep rank
  std::vector<int64_t> local_rows;  // (E_l) rows of each local expert after the exchange
  // alltoall: (M_recv) int32 on the device: row r of the expert-major buffer is received row
  // expert_order[r]; source_order is the inverse permutation.
  // allgather: expert_order[r] is the row of the all-gathered (P x max_rows) buffer, and
  // source_order (P x max_rows) the expert-major row of each gathered slot, or -1.
  Tensor expert_order, source_order;
  int64_t max_rows = 0;  // allgather: the longest x_perm over the ep ranks
  TokenDispatcher dispatcher = TokenDispatcher::AllToAll;

  int64_t sent() const;
  int64_t received() const;
};

// Collective over ep (one all-gather of E counts). rows_per_expert (E, global expert order) are
// this rank's routed rows; the index tensors are allocated in `arena` (they live as long as the
// layer's activations). E must be divisible by ep.size().
TokenExchange plan_token_exchange(const ExpertParallel& ep, const std::vector<int64_t>& rows_per_expert,
                                  Arena& arena);

// x (M_sent, C) in x_perm's order -> out (M_recv, C) grouped by local expert (written). The
// forward dispatch, and the backward of combine_tokens. Scratch from `arena` is released.
void dispatch_tokens(ops::Context& ctx, const ExpertParallel& ep, Arena& arena, const TokenExchange& plan,
                     const Tensor& x, Tensor& out);
// y (M_recv, C) grouped by local expert -> out (M_sent, C) in x_perm's order (written). The
// forward combine, and the backward of dispatch_tokens.
void combine_tokens(ops::Context& ctx, const ExpertParallel& ep, Arena& arena, const TokenExchange& plan,
                    const Tensor& y, Tensor& out);

}  // namespace primus::parallel
