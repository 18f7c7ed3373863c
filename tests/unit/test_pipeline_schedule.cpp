// Pipeline schedules (src/parallel/pipeline_schedule.h), checked by simulating every rank
// of the pipeline together: each rank runs its action list in order; a forward of virtual
// stage s > 0 first receives its input from stage s - 1, a backward of s < last first
// receives its gradient from stage s + 1 (receives block); results are sent on (sends do
// not block: the engine posts them asynchronously). Messages travel on the four channels
// of p2p_channel() (the engine's communicators), matched in issue order per ordered rank
// pair: a receive that finds another message at the head of its channel is an error, as
// it would silently read the wrong tensor.
//
// A second simulation models NCCL: per rank one compute stream and one stream per channel
// (communicator), filled in schedule order as the engine's host code enqueues them; a
// compute waits for its receive, every send or receive for the compute enqueued before it
// (as NcclCommunicator orders them), and a send/receive pair completes only when both are
// at the head of their streams.
#include <gtest/gtest.h>

#include <array>
#include <deque>
#include <map>
#include <set>
#include <tuple>

#include "core/error.h"
#include "parallel/pipeline_schedule.h"

using namespace primus;
using namespace primus::parallel;

namespace {

struct SimResult {
  std::string error;                // empty: every rank finished
  std::vector<int> max_in_flight;   // per rank: most micro-batch chunks with live activations
};

SimResult simulate(const std::vector<std::vector<PipelineAction>>& schedules, int v, int M) {
  const int P = static_cast<int>(schedules.size()), S = P * v;
  struct Msg {
    int micro_batch, stage;  // destination virtual stage
    bool operator==(const Msg&) const = default;
  };
  std::map<std::tuple<P2pChannel, int, int>, std::deque<Msg>> channels;  // (channel, src, dst)
  std::vector<size_t> pc(static_cast<size_t>(P), 0);
  std::vector<int> in_flight(static_cast<size_t>(P), 0);
  std::vector<std::set<std::pair<int, int>>> forwarded(static_cast<size_t>(P)), backwarded(static_cast<size_t>(P));
  SimResult res;
  res.max_in_flight.assign(static_cast<size_t>(P), 0);
  for (;;) {
    bool progress = false, done = true;
    for (int r = 0; r < P; ++r) {
      const auto& sched = schedules[static_cast<size_t>(r)];
      size_t& i = pc[static_cast<size_t>(r)];
      while (i < sched.size()) {
        const PipelineAction a = sched[i];
        const int s = virtual_stage(P, r, a.chunk);
        const std::string where = "rank " + std::to_string(r) + " action " + std::to_string(i) + " " + to_string(a);
        if (a.chunk < 0 || a.chunk >= v || a.micro_batch < 0 || a.micro_batch >= M) return {where + ": out of range", {}};
        const bool fwd = a.op == PipelineOp::Forward;
        const bool needs_recv = fwd ? s > 0 : s < S - 1;
        if (needs_recv) {
          const int src = rank_of_virtual_stage(P, fwd ? s - 1 : s + 1);
          auto& ch = channels[{p2p_channel(a.op, P, src), src, r}];
          if (ch.empty()) break;  // blocked
          if (!(ch.front() == Msg{a.micro_batch, s}))
            return {where + ": received the message for micro-batch " + std::to_string(ch.front().micro_batch) +
                        " stage " + std::to_string(ch.front().stage) + " (out of order)", {}};
          ch.pop_front();
        }
        const std::pair<int, int> key{a.micro_batch, a.chunk};
        if (fwd) {
          if (!forwarded[static_cast<size_t>(r)].insert(key).second) return {where + ": forward twice", {}};
          int& f = in_flight[static_cast<size_t>(r)];
          res.max_in_flight[static_cast<size_t>(r)] = std::max(res.max_in_flight[static_cast<size_t>(r)], ++f);
          if (s < S - 1)
            channels[{p2p_channel(a.op, P, r), r, rank_of_virtual_stage(P, s + 1)}].push_back({a.micro_batch, s + 1});
        } else {
          if (!forwarded[static_cast<size_t>(r)].count(key)) return {where + ": backward before its forward", {}};
          if (!backwarded[static_cast<size_t>(r)].insert(key).second) return {where + ": backward twice", {}};
          --in_flight[static_cast<size_t>(r)];
          if (s > 0)
            channels[{p2p_channel(a.op, P, r), r, rank_of_virtual_stage(P, s - 1)}].push_back({a.micro_batch, s - 1});
        }
        ++i;
        progress = true;
      }
      if (i < sched.size()) done = false;
    }
    if (done) break;
    if (!progress) {
      std::string msg = "deadlock:";
      for (int r = 0; r < P; ++r)
        if (pc[static_cast<size_t>(r)] < schedules[static_cast<size_t>(r)].size())
          msg += " rank " + std::to_string(r) + " waits in " +
                 to_string(schedules[static_cast<size_t>(r)][pc[static_cast<size_t>(r)]]) + ";";
      return {msg, {}};
    }
  }
  for (const auto& [k, ch] : channels)
    if (!ch.empty()) return {"a message was never received", {}};
  return res;
}

// NCCL semantics (see the top). split_wrap = false puts the wrap-around messages on the
// neighbour channels. Returns "" or "deadlock".
std::string simulate_streams(const std::vector<std::vector<PipelineAction>>& schedules, int v, bool split_wrap) {
  const int P = static_cast<int>(schedules.size()), S = P * v;
  struct Op {
    bool compute = true, send = false;
    int peer = -1;
    int dep_stream = -1, dep_index = -1;  // must be done first
    bool done = false;
  };
  constexpr int kStreams = 5;  // 0 compute, 1 + channel
  std::vector<std::array<std::vector<Op>, kStreams>> st(static_cast<size_t>(P));
  auto stream_of = [&](PipelineOp sent_by, int from) {
    P2pChannel c = p2p_channel(sent_by, P, from);
    if (!split_wrap && c == P2pChannel::ActivationsWrap) c = P2pChannel::Activations;
    if (!split_wrap && c == P2pChannel::GradientsWrap) c = P2pChannel::Gradients;
    return 1 + static_cast<int>(c);
  };
  for (int r = 0; r < P; ++r) {
    auto& R = st[static_cast<size_t>(r)];
    for (const PipelineAction& a : schedules[static_cast<size_t>(r)]) {
      const int s = virtual_stage(P, r, a.chunk);
      const bool fwd = a.op == PipelineOp::Forward;
      const int from = rank_of_virtual_stage(P, fwd ? s - 1 : s + 1), to = rank_of_virtual_stage(P, fwd ? s + 1 : s - 1);
      Op compute;
      if (fwd ? s > 0 : s < S - 1) {  // receive, then compute after it
        const int k = stream_of(a.op, from);
        // NcclCommunicator makes every operation wait for the compute work enqueued before it.
        R[k].push_back(Op{false, false, from, R[0].empty() ? -1 : 0, static_cast<int>(R[0].size()) - 1});
        compute.dep_stream = k;
        compute.dep_index = static_cast<int>(R[k].size()) - 1;
      }
      R[0].push_back(compute);
      if (fwd ? s < S - 1 : s > 0) {
        const int k = stream_of(a.op, r);
        R[k].push_back(Op{false, true, to, 0, static_cast<int>(R[0].size()) - 1});
      }
    }
  }
  std::vector<std::array<size_t, kStreams>> head(static_cast<size_t>(P));
  for (auto& h : head) h.fill(0);
  auto ready = [&](int r, int k) -> Op* {
    auto& q = st[static_cast<size_t>(r)][static_cast<size_t>(k)];
    const size_t h = head[static_cast<size_t>(r)][static_cast<size_t>(k)];
    if (h >= q.size()) return nullptr;
    Op& o = q[h];
    if (o.dep_stream >= 0 &&
        !st[static_cast<size_t>(r)][static_cast<size_t>(o.dep_stream)][static_cast<size_t>(o.dep_index)].done)
      return nullptr;
    return &o;
  };
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      if (Op* o = ready(r, 0)) {
        o->done = true;
        ++head[static_cast<size_t>(r)][0];
        progress = true;
      }
      for (int k = 1; k < kStreams; ++k) {
        Op* o = ready(r, k);
        if (o == nullptr) continue;
        Op* p = ready(o->peer, k);
        if (p == nullptr || p->peer != r || p->send == o->send) continue;
        o->done = p->done = true;
        ++head[static_cast<size_t>(r)][static_cast<size_t>(k)];
        ++head[static_cast<size_t>(o->peer)][static_cast<size_t>(k)];
        progress = true;
      }
    }
  }
  for (int r = 0; r < P; ++r)
    for (int k = 0; k < kStreams; ++k)
      if (head[static_cast<size_t>(r)][static_cast<size_t>(k)] < st[static_cast<size_t>(r)][static_cast<size_t>(k)].size())
        return "deadlock";
  return "";
}

std::vector<std::vector<PipelineAction>> all_ranks(int P, int M, int v) {
  std::vector<std::vector<PipelineAction>> s;
  for (int r = 0; r < P; ++r) s.push_back(pipeline_schedule(P, r, M, v));
  return s;
}

}  // namespace

TEST(PipelineSchedule, OneF1BMatchesTheTextbookOrder) {
  // P = 4, M = 6, rank 1: warm-up 2 forwards, then 1F1B, then 2 backwards.
  std::string got;
  for (const auto& a : pipeline_schedule(4, 1, 6, 1)) got += to_string(a) + " ";
  EXPECT_EQ(got, "F0c0 F1c0 F2c0 B0c0 F3c0 B1c0 F4c0 B2c0 F5c0 B3c0 B4c0 B5c0 ");
  got.clear();
  for (const auto& a : pipeline_schedule(4, 3, 2, 1)) got += to_string(a) + " ";  // last stage: no warm-up
  EXPECT_EQ(got, "F0c0 B0c0 F1c0 B1c0 ");
  got.clear();
  for (const auto& a : pipeline_schedule(4, 0, 2, 1)) got += to_string(a) + " ";  // fewer micro-batches than stages
  EXPECT_EQ(got, "F0c0 F1c0 B0c0 B1c0 ");
}

TEST(PipelineSchedule, InterleavedFollowsMegatronsOrder) {
  // P = 2, v = 2, M = 4, rank 0: warm-up (2-0-1)*2 + (2-1)*2 = 4 forwards in groups of P
  // micro-batches per chunk; backwards walk chunks in reverse.
  std::string got;
  for (const auto& a : pipeline_schedule(2, 0, 4, 2)) got += to_string(a) + " ";
  EXPECT_EQ(got, "F0c0 F1c0 F0c1 F1c1 F2c0 B0c1 F3c0 B1c1 F2c1 B0c0 F3c1 B1c0 B2c1 B3c1 B2c0 B3c0 ");
}

TEST(PipelineSchedule, EveryRankRunsEachPassOnceWithoutDeadlockOrMisorderedMessages) {
  struct Layout {
    int P, M, v;
  };
  std::vector<Layout> layouts;
  for (int P : {1, 2, 3, 4})
    for (int M : {1, 2, 3, 4, 5, 8, 9}) layouts.push_back({P, M, 1});
  for (int P : {2, 3, 4})
    for (int v : {2, 3})
      for (int groups : {1, 2, 3}) layouts.push_back({P, P * groups, v});
  for (const Layout& l : layouts) {
    const std::string what = "P=" + std::to_string(l.P) + " M=" + std::to_string(l.M) + " v=" + std::to_string(l.v);
    const auto scheds = all_ranks(l.P, l.M, l.v);
    for (const auto& s : scheds) {
      ASSERT_EQ(s.size(), static_cast<size_t>(2 * l.M * l.v)) << what;
      // The simulation checks each pass runs once and backward follows forward; here every
      // (micro-batch, chunk) appears as both.
      std::set<std::tuple<int, int, int>> seen;
      for (const auto& a : s) seen.insert({static_cast<int>(a.op), a.micro_batch, a.chunk});
      EXPECT_EQ(seen.size(), s.size()) << what;
    }
    const SimResult r = simulate(scheds, l.v, l.M);
    ASSERT_EQ(r.error, "") << what;
    if (l.v == 1)  // 1F1B's memory bound: at most P - r micro-batches alive on rank r
      for (int rank = 0; rank < l.P; ++rank)
        EXPECT_LE(r.max_in_flight[static_cast<size_t>(rank)], std::min(l.P - rank, l.M)) << what << " rank " << rank;
    // forward-only schedules flow too
    std::vector<std::vector<PipelineAction>> fo;
    for (int rank = 0; rank < l.P; ++rank) fo.push_back(forward_only_schedule(l.P, rank, l.M, l.v));
    // (forwards only: no backward follows, so in-flight just counts up)
    EXPECT_EQ(simulate(fo, l.v, l.M).error, "") << what << " forward-only";
    // NCCL's blocking streams, with the engine's four channels.
    EXPECT_EQ(simulate_streams(scheds, l.v, true), "") << what << " NCCL streams";
    EXPECT_EQ(simulate_streams(fo, l.v, true), "") << what << " NCCL streams, forward-only";
  }
}

// Why the wrap-around messages have channels of their own: on the neighbour channels the
// interleaved schedule deadlocks under NCCL's semantics (1F1B has no wrap-around).
TEST(PipelineSchedule, InterleavedNeedsTheWrapAroundChannelsUnderNccl) {
  for (int P : {2, 4}) {
    EXPECT_EQ(simulate_streams(all_ranks(P, 2 * P, 2), 2, false), "deadlock") << "P=" << P;
    EXPECT_EQ(simulate_streams(all_ranks(P, 2 * P, 2), 2, true), "") << "P=" << P;
    EXPECT_EQ(simulate_streams(all_ranks(P, 5, 1), 1, false), "") << "P=" << P;
  }
}

// The simulator itself catches what it is there to catch.
TEST(PipelineSchedule, TheSimulationDetectsDeadlocksAndMisorderedMessages) {
  // P = 2, M = 2: the last rank runs both forwards first, but rank 0 waits for backward 0
  // before it sends forward 1.
  std::vector<std::vector<PipelineAction>> deadlock{
      {{PipelineOp::Forward, 0, 0}, {PipelineOp::Backward, 0, 0}, {PipelineOp::Forward, 1, 0}, {PipelineOp::Backward, 1, 0}},
      {{PipelineOp::Forward, 0, 0}, {PipelineOp::Forward, 1, 0}, {PipelineOp::Backward, 0, 0}, {PipelineOp::Backward, 1, 0}}};
  EXPECT_NE(simulate(deadlock, 1, 2).error.find("deadlock"), std::string::npos);
  EXPECT_EQ(simulate_streams(deadlock, 1, true), "deadlock");
  // Rank 0 takes the backwards in the other order than rank 1 sends them.
  auto misordered = all_ranks(2, 3, 1);
  std::vector<PipelineAction>& r0 = misordered[0];
  std::swap(r0[r0.size() - 1], r0[r0.size() - 2]);
  EXPECT_NE(simulate(misordered, 1, 3).error.find("out of order"), std::string::npos);
  // Interleaved chunks swapped on one rank: messages arrive for the other chunk.
  auto inter = all_ranks(2, 4, 2);
  std::swap(inter[1][0], inter[1][2]);  // F0c0 <-> F0c1 on rank 1
  EXPECT_NE(simulate(inter, 2, 4).error, "");
}

TEST(PipelineSchedule, BadLayoutsAreRefusedNamingTheKey) {
  try {
    pipeline_schedule(4, 0, 6, 2);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by pipeline_model_parallel_size (4)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipeline_schedule(1, 0, 4, 2), Error);
  EXPECT_THROW(pipeline_schedule(2, 2, 4, 1), Error);
  EXPECT_THROW(pipeline_schedule(2, 0, 0, 1), Error);
  EXPECT_EQ(pipeline_layer_range(8, 4, 3).first, 6);
  EXPECT_EQ(pipeline_layer_range(8, 4, 3).count, 2);
  try {
    pipeline_layer_range(6, 4, 0);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_layers = 6"), std::string::npos) << e.what();
  }
}

TEST(PipelineLayers, UnevenSplitFixesTheEndStagesAndSharesTheRest) {
  // Megatron's decoder_first/last_pipeline_num_layers: 4 layers over 3 stages, 2 on the last.
  EXPECT_EQ(pipeline_stage_layers(4, 3, {0, 2}), (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(pipeline_stage_layers(10, 4, {1, 3}), (std::vector<int64_t>{1, 3, 3, 3}));
  EXPECT_EQ(pipeline_stage_layers(7, 2, {3, 0}), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(pipeline_stage_layers(8, 4, {}), (std::vector<int64_t>{2, 2, 2, 2}));
  const LayerRange last = pipeline_layer_range(10, 4, 3, UnevenSplit{1, 3});
  EXPECT_EQ(last.first, 7);
  EXPECT_EQ(last.count, 3);
  const LayerRange second = pipeline_layer_range(10, 4, 1, UnevenSplit{1, 3});
  EXPECT_EQ(second.first, 1);
  EXPECT_EQ(second.count, 3);
  // Even split through the same entry point.
  EXPECT_EQ(pipeline_layer_range(8, 4, 2, UnevenSplit{}).first, 4);
  try {
    pipeline_stage_layers(10, 4, {2, 3});  // 5 left for 2 stages
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("decoder_first_pipeline_num_layers = 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("5 layers left"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipeline_stage_layers(4, 2, {5, 0}), Error);   // more than the model has
  EXPECT_THROW(pipeline_stage_layers(4, 2, {1, 1}), Error);   // 2 layers for no stage
  EXPECT_THROW(pipeline_stage_layers(4, 1, {4, 0}), Error);   // no pipeline
}
