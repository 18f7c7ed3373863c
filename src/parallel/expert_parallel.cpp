#include "parallel/expert_parallel.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace primus::parallel {

namespace {

Tensor to_device(const Tensor& host, Device device) { return device == Device::CPU ? host : host.to(device); }

// Element counts of row counts for all_to_all_v.
std::vector<int64_t> elements(const std::vector<int64_t>& rows, int64_t C) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * C;
  return out;
}

}  // namespace

int64_t TokenExchange::sent() const { return std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0}); }
int64_t TokenExchange::received() const { return std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0}); }

TokenExchange plan_token_exchange(const ExpertParallel& ep, const std::vector<int64_t>& rows_per_expert,
                                  Arena& arena) {
  PRIMUS_CHECK(ep.group != nullptr, "plan_token_exchange: no expert-parallel group");
  const int P = ep.size(), me = ep.rank();
  const auto E = static_cast<int64_t>(rows_per_expert.size());
  PRIMUS_CHECK(E % P == 0, "plan_token_exchange: {} experts do not split over {} expert-parallel ranks", E, P);
  const int64_t El = E / P;

  // 1. Every rank's rows per expert: counts[s * E + e].
  Tensor mine = Tensor::empty({E}, DType::I64);
  for (int64_t e = 0; e < E; ++e) mine.data<int64_t>()[e] = rows_per_expert[static_cast<size_t>(e)];
  const Device dev = ep.group->device();
  Tensor all = Tensor::empty({P * E}, DType::I64, dev);
  const Tensor mine_dev = to_device(mine, dev);
  ep.group->all_gather(all, mine_dev);
  const Tensor all_h = dev == Device::CPU ? all : all.to(Device::CPU);
  const int64_t* counts = all_h.data<int64_t>();
  auto count = [&](int64_t s, int64_t e) { return counts[s * E + e]; };

  TokenExchange plan;
  plan.send_rows.assign(static_cast<size_t>(P), 0);
  plan.recv_rows.assign(static_cast<size_t>(P), 0);
  plan.local_rows.assign(static_cast<size_t>(El), 0);
  for (int r = 0; r < P; ++r)
    for (int64_t e = 0; e < El; ++e) {
      plan.send_rows[static_cast<size_t>(r)] += count(me, r * El + e);
      plan.recv_rows[static_cast<size_t>(r)] += count(r, me * El + e);
      plan.local_rows[static_cast<size_t>(e)] += count(r, me * El + e);
    }

  plan.dispatcher = ep.dispatcher;
  // The experts read their rows expert-major (expert 0's rows from every source, then expert
  // 1's ...), picked from a source-major buffer: alltoall's received rows (chunk s: source s's
  // rows of this rank's experts), or allgather's gathered rows (slot s: all of source s's
  // x_perm, padded to the longest). next[s] = where source s's rows of the next local expert
  // start in that buffer; expert_order[r] = the buffer row that expert-major row r holds, and
  // source_order the inverse (-1 for the rows of other ranks' experts and the padding).
  std::vector<int64_t> next(static_cast<size_t>(P), 0);
  int64_t buffer_rows = plan.received();
  if (ep.dispatcher == TokenDispatcher::AllGather) {
    for (int64_t s = 0; s < P; ++s) {
      int64_t m = 0;
      for (int64_t e = 0; e < E; ++e) m += count(s, e);
      plan.max_rows = std::max(plan.max_rows, m);
    }
    for (int64_t s = 0; s < P; ++s) {
      next[static_cast<size_t>(s)] = s * plan.max_rows;
      for (int64_t e = 0; e < me * El; ++e) next[static_cast<size_t>(s)] += count(s, e);
    }
    buffer_rows = P * plan.max_rows;
  } else {
    for (int s = 1; s < P; ++s)
      next[static_cast<size_t>(s)] = next[static_cast<size_t>(s - 1)] + plan.recv_rows[static_cast<size_t>(s - 1)];
  }
  const int64_t M = plan.received();
  Tensor expert_order = Tensor::empty({M}, DType::I32), source_order = Tensor::empty({buffer_rows}, DType::I32);
  int32_t* eo = expert_order.data<int32_t>();
  int32_t* so = source_order.data<int32_t>();
  std::fill_n(so, buffer_rows, -1);
  int64_t row = 0;
  for (int64_t e = 0; e < El; ++e)
    for (int s = 0; s < P; ++s) {
      const int64_t n = count(s, me * El + e), at = next[static_cast<size_t>(s)];
      for (int64_t i = 0; i < n; ++i, ++row) {
        eo[row] = static_cast<int32_t>(at + i);
        so[at + i] = static_cast<int32_t>(row);
      }
      next[static_cast<size_t>(s)] += n;
    }
  PRIMUS_CHECK(row == M, "plan_token_exchange: regrouped {} of {} received rows", row, M);
  plan.expert_order = arena.alloc({M}, DType::I32);
  plan.source_order = arena.alloc({buffer_rows}, DType::I32);
  plan.expert_order.copy_from(expert_order);
  plan.source_order.copy_from(source_order);
  return plan;
}

void dispatch_tokens(ops::Context& ctx, const ExpertParallel& ep, Arena& arena, const TokenExchange& plan,
                     const Tensor& x, Tensor& out) {
  const int64_t C = x.size(1);
  PRIMUS_CHECK(x.size(0) >= plan.sent() && out.size(0) == plan.received() && out.size(1) == C,
               "dispatch_tokens: x {} / out {} do not match the plan ({} rows sent, {} received)", x.describe(),
               out.describe(), plan.sent(), plan.received());
  const Arena::Mark m = arena.mark();
  if (plan.dispatcher == TokenDispatcher::AllGather) {
    Tensor mine = arena.alloc({plan.max_rows, C}, x.dtype());  // x_perm padded to the longest
    if (plan.sent() < plan.max_rows) mine.rows(plan.sent(), plan.max_rows).zero_();
    if (plan.sent() > 0) mine.rows(0, plan.sent()).copy_from(x.rows(0, plan.sent()));
    Tensor gathered = arena.alloc({ep.size() * plan.max_rows, C}, x.dtype());
    ep.group->all_gather(gathered, mine);
    ops::moe_permute(ctx, out, gathered, plan.expert_order, 1);  // this rank's experts' rows
    arena.release(m);
    return;
  }
  Tensor received = arena.alloc({plan.received(), C}, x.dtype());
  ep.group->all_to_all_v(received, elements(plan.recv_rows, C), x, elements(plan.send_rows, C));
  ops::moe_permute(ctx, out, received, plan.expert_order, 1);  // source-major -> expert-major
  arena.release(m);
}

void combine_tokens(ops::Context& ctx, const ExpertParallel& ep, Arena& arena, const TokenExchange& plan,
                    const Tensor& y, Tensor& out) {
  const int64_t C = y.size(1);
  PRIMUS_CHECK(y.size(0) == plan.received() && out.size(0) >= plan.sent() && out.size(1) == C,
               "combine_tokens: y {} / out {} do not match the plan ({} rows received, {} sent)", y.describe(),
               out.describe(), plan.received(), plan.sent());
  const Arena::Mark m = arena.mark();
  if (plan.dispatcher == TokenDispatcher::AllGather) {
    // Laid out like the gathered rows, zeros where another rank's experts computed; summed over
    // ep, each rank's slice is its own rows.
    Tensor all = arena.alloc({ep.size() * plan.max_rows, C}, y.dtype());
    ops::moe_permute(ctx, all, y, plan.source_order, 1);
    Tensor mine = arena.alloc({plan.max_rows, C}, y.dtype());
    ep.group->reduce_scatter(mine, all, ReduceOp::Sum);
    if (plan.sent() > 0) out.rows(0, plan.sent()).copy_from(mine.rows(0, plan.sent()));
    arena.release(m);
    return;
  }
  Tensor by_source = arena.alloc({plan.received(), C}, y.dtype());
  ops::moe_permute(ctx, by_source, y, plan.source_order, 1);  // expert-major -> source-major
  ep.group->all_to_all_v(out, elements(plan.send_rows, C), by_source, elements(plan.recv_rows, C));
  arena.release(m);
}

}  // namespace primus::parallel
