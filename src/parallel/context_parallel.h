// Context parallelism (CP), Megatron style: the sequence is split over the cp ranks and
// attention runs as a ring.
//
// ---- Using it ---------------------------------------------------------------------
//
//   parallel::ProcessGroups groups(world, dims);             // dims.cp() ranks per cp group
//   DecoderOptions o;
//   o.context_parallel = {&groups.cp()};                      // the ONE thing to pass
//   DecoderModel model(config, ctx, o);                       // params are replicated over cp
//   ...each cp rank: forward_backward(context_parallel_columns(tokens, cp), ... labels, mask
//      the same way): its 2 chunks of every row of the micro-batch...
//   (gradients: summed over groups.dp_cp(), where data parallel reduces them; loss sums and
//    token counts likewise: each cp rank's are its own tokens' share)
//
// context_parallel.group == nullptr (or a group of one rank) is the single-rank model.
//
// ---- What is split ------------------------------------------------------------------
//
//   tokens, labels,   the sequence of T tokens of every row is cut into 2 CP chunks of
//   loss_mask         c = T / (2 CP); cp rank i holds chunks i and 2 CP - 1 - i, in that order
//                     (local columns [0, c) and [c, 2c)). With causal attention every rank
//                     then does the same work (the load-balanced split of Megatron's
//                     get_batch_on_this_cp_rank).
//   RoPE              each local token rotates at its real position (context_parallel_positions).
//   attention         ring_attention_forward / _backward below: K and V travel the ring.
//   everything else   per token (norms, linears, MLP, classifier): the local tokens only.
//   parameters        replicated; their gradients are partial sums over this rank's tokens,
//                     summed over cp together with data parallel (groups.dp_cp()).
//
// ---- The ring (forward) --------------------------------------------------------------------
//
// Step s = 0 .. CP-1: rank r holds the K/V of rank src = (r - s) mod CP (its own at s = 0) and,
// while it computes, sends them on to r + 1 and receives the next from r - 1 (send_recv, one
// operation, so the ring cannot deadlock). With local chunks q = [q_a | q_b] at positions
// a = r, b = 2CP-1-r and visiting kv = [kv_a' | kv_b'] at a' = src, b' = 2CP-1-src:
//   s = 0        causal attention of the 2c local queries over the 2c local keys (the two
//                chunks are in position order, so this is exactly the causal mask)
//   src < r      a' < a < b < b': every query sees kv_a' in full, nothing of kv_b':
//                blocks (q_a, kv_a') and (q_b, kv_a'), unmasked
//   src > r      a < a' and b' < b: q_a sees nothing, q_b sees both in full:
//                blocks (q_b, kv_a') and (q_b, kv_b'), unmasked
// Each block's (out, lse) is merged into the running result with ops::attention_merge
// (softmax over the union of the key sets from the two log-sum-exps). Every block is c x c or
// 2c x 2c, so the backend's attention ops run unchanged.
//
// ---- The ring (backward) ----------------------------------------------------------------
//
// The same schedule with the backend's attention_backward on each block, given the FINAL
// out and lse of the forward (P = exp(S - lse) of a block is then its share of the global
// softmax, Delta = rowsum(dO * O) the global one): dQ blocks are added locally; dK / dV of the
// visiting chunks are added to a gradient buffer that travels with K/V. After CP - 1 steps the
// buffer holds every rank's contribution for the K/V of rank r + 1; one more shift delivers
// each rank its own dK / dV.
//
// The attention blocks (GQA, MLA) reach the ring through model/attention_core.h. MoE layers
// route per token; their auxiliary losses sum their statistics over cp (model/mlp_moe.h).
// Multi-token prediction shifts tokens and labels along the whole sequence: it rebuilds the
// full rows (context_parallel_full_rows), shifts them and takes its columns again.
// Not supported (refused where the model takes them): packed rows (segments).
#pragma once

#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "core/tensor.h"
#include "ops/ops.h"
#include "parallel/communicator.h"

namespace primus::parallel {

// The context-parallel setting of a model.
struct ContextParallel {
  Communicator* group = nullptr;  // the cp group (ProcessGroups::cp()); nullptr = one rank

  int size() const { return group != nullptr ? group->size() : 1; }
  int rank() const { return group != nullptr ? group->rank() : 0; }
  bool active() const { return size() > 1; }
};

// ---- which tokens a cp rank holds ------------------------------------------------------

// The two chunks of cp rank `rank` of `size`: {rank, 2 size - 1 - rank}.
std::pair<int64_t, int64_t> context_parallel_chunks(int rank, int size);
// The sequence positions (0-based, in [0, full_T)) of the local columns 0 .. 2c-1 of cp rank
// `rank` of `size` for rows of full_T tokens (c = full_T / (2 size)); full_T must be a
// multiple of 2 size (throws naming seq_length and context_parallel_size otherwise).
std::vector<int64_t> context_parallel_positions(int64_t full_T, int rank, int size);
// A (B, T) host tensor (any dtype) -> the (B, T / size) columns cp rank `rank` holds, in the
// order of context_parallel_positions. A host tensor, whatever the input's device.
Tensor context_parallel_columns(const Tensor& full, int rank, int size);
// The inverse, as a collective of cp.group: every rank's (B, 2c) host tensor of its columns
// (4-byte dtype: token ids, labels, masks) -> the whole (B, 2c size) rows on the host, the
// same on every rank (what a shift along the sequence, e.g. multi-token prediction's, reads).
Tensor context_parallel_full_rows(const Tensor& local, const ContextParallel& cp);
// Statistics of whole sequences from each rank's share of them (e.g. MoE's aux-loss sums):
// t = the sum of t over the cp ranks, in place, on the group's device. A no-op on one rank.
void context_parallel_sum(const ContextParallel& cp, Tensor& t);

// ---- ring attention --------------------------------------------------------------------

// Causal attention of this rank's queries over the keys of every rank of cp.group (the
// sequence split above). q (B,2c,Hq,D), k (B,2c,Hkv,D), v (B,2c,Hkv,Dv) of this rank's chunks;
// out (B,2c,Hq,Dv), lse (B,Hq,2c) fp32 as ops::attention_forward's (the lse over ALL keys).
// Temporaries in `arena` (released before returning). A collective of the cp group.
void ring_attention_forward(ops::Context& ctx, const ContextParallel& cp, Arena& arena, Tensor& out, Tensor& lse,
                            const Tensor& q, const Tensor& k, const Tensor& v, float scale);
// The backward: dq, dk, dv written (this rank's chunks; dk/dv include every rank's queries'
// contributions), from dout and the forward's q, k, v, out, lse. A collective of the cp group.
void ring_attention_backward(ops::Context& ctx, const ContextParallel& cp, Arena& arena, Tensor& dq, Tensor& dk,
                             Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, float scale);

}  // namespace primus::parallel
