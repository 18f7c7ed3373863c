// Pipeline-parallel schedules: which forward and backward passes a pipeline rank runs, in
// which order. Pure functions of the layout; no model, no communication (the engine that
// runs them is train/pipelined_model.h).
//
// Terms. P pipeline ranks, M micro-batches per optimizer step, v model chunks per rank
// (virtual pipeline stages; v = 1 is the plain pipeline). Model chunk c on pipeline rank r
// is virtual stage s = c * P + r: the model's layers are cut into P * v consecutive
// slices, and slice s runs on rank s % P. Activations flow s -> s + 1 (rank r -> r + 1, and
// from the last rank back to rank 0 for the next chunk); gradients flow back.
//
// 1F1B (v = 1, PipeDream-flush as Megatron runs it): rank r first runs
// min(P - r - 1, M) warm-up forwards, then alternates one forward and one backward, then
// runs the remaining backwards. At most P - r micro-batches have activations alive on rank
// r at any time, whatever M is.
//
// Interleaved 1F1B (v > 1, Megatron's schedule): forwards are taken in groups of P
// micro-batches per chunk: the k-th forward on every rank is chunk (k / P) % v of
// micro-batch (k / (P v)) * P + k % P; backwards walk the same order with the chunks
// reversed (chunk v - 1 - (k / P) % v). Rank r warms up with (P - r - 1) * 2 + (v - 1) * P
// forwards (at most M v), then alternates, then drains. Requires M % P == 0 (as Megatron).
//
// Every rank runs each (micro-batch, chunk) forward and backward exactly once. Messages
// travel on four channels (communicators: they carry no tags, so each must see its
// messages between two ranks in one order on both sides), see p2p_channel(). With them,
// tests/unit/test_pipeline_schedule.cpp simulates all ranks and finds neither a deadlock
// nor a message taken out of order, both when sends never block (MPI's isend) and when
// every send and receive blocks its channel's stream until the peer's matching operation
// is at the head of its own (NCCL's semantics, one stream per communicator). With the
// wrap-around messages on the same channels as the others, the interleaved schedule
// deadlocks under the second.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace primus::parallel {

enum class PipelineOp : uint8_t { Forward, Backward };

struct PipelineAction {
  PipelineOp op = PipelineOp::Forward;
  int micro_batch = 0;
  int chunk = 0;  // model chunk on this rank (0 .. v-1)
  bool operator==(const PipelineAction&) const = default;
};

// "F3c1" / "B0c0", for messages and test output.
std::string to_string(const PipelineAction& a);

// The training schedule of pipeline rank `pp_rank`: 1F1B when virtual_chunks == 1, else
// the interleaved schedule. Throws primus::Error naming the bad value (sizes < 1, rank out
// of range, interleaving with pp_size 1, M not divisible by P when interleaved).
std::vector<PipelineAction> pipeline_schedule(int pp_size, int pp_rank, int num_micro_batches, int virtual_chunks);

// Evaluation (forwards only): micro-batch by micro-batch, each through the chunks in order.
std::vector<PipelineAction> forward_only_schedule(int pp_size, int pp_rank, int num_micro_batches,
                                                  int virtual_chunks);

// Which communicator a message takes: activations (sent by forwards to the next virtual
// stage) and gradients (sent by backwards to the previous one), each split in the
// messages between neighbouring ranks r -> r +- 1 and the wrap-around ones of the
// interleaved schedule (activations from rank P-1 to rank 0, gradients from 0 to P-1).
enum class P2pChannel : uint8_t { Activations, ActivationsWrap, Gradients, GradientsWrap };
inline P2pChannel p2p_channel(PipelineOp sent_by, int pp_size, int from_rank) {
  if (sent_by == PipelineOp::Forward)
    return from_rank == pp_size - 1 ? P2pChannel::ActivationsWrap : P2pChannel::Activations;
  return from_rank == 0 ? P2pChannel::GradientsWrap : P2pChannel::Gradients;
}

// Virtual stage of chunk `chunk` on rank `pp_rank`, and its inverse.
inline int virtual_stage(int pp_size, int pp_rank, int chunk) { return chunk * pp_size + pp_rank; }
inline int rank_of_virtual_stage(int pp_size, int stage) { return stage % pp_size; }

// Layers of virtual stage `stage` out of `num_stages` (= P v): [first, first + count),
// first = stage * L / num_stages (Megatron's even split). Throws naming num_layers when L
// does not divide by num_stages.
struct LayerRange {
  int64_t first = 0, count = 0;
};
LayerRange pipeline_layer_range(int64_t num_layers, int num_stages, int stage);

// Megatron's uneven split (decoder_first_pipeline_num_layers / decoder_last_pipeline_num_layers):
// the first and/or last of `pp` stages hold the given number of layers (0: no fixed count) and
// the stages between share the rest evenly. Used where the embedding or the output layer and
// loss make an end stage slower than the others. Both 0 is the even split. Throws naming the
// counts when they do not add up to num_layers.
struct UnevenSplit {
  int64_t first_stage_layers = 0, last_stage_layers = 0;
  bool uneven() const { return first_stage_layers > 0 || last_stage_layers > 0; }
};
std::vector<int64_t> pipeline_stage_layers(int64_t num_layers, int pp, const UnevenSplit& split);
// Stage `stage`'s layers under an uneven split (no virtual stages).
LayerRange pipeline_layer_range(int64_t num_layers, int pp, int stage, const UnevenSplit& split);

}  // namespace primus::parallel
