// Context parallelism: the load-balanced split and ring attention (see context_parallel.h).
#include "parallel/context_parallel.h"

#include <cstring>

#include "core/cp_split.h"
#include "core/error.h"

namespace primus::parallel {

std::pair<int64_t, int64_t> context_parallel_chunks(int rank, int size) {
  PRIMUS_CHECK(size >= 1 && rank >= 0 && rank < size, "context parallel: rank {} of {} is not a rank of the group",
               rank, size);
  return {rank, 2 * static_cast<int64_t>(size) - 1 - rank};
}

std::vector<int64_t> context_parallel_positions(int64_t full_T, int rank, int size) {
  PRIMUS_CHECK(full_T > 0 && full_T % (2 * static_cast<int64_t>(size)) == 0,
               "context_parallel_size = {} cuts each sequence into 2 x {} = {} equal chunks, but seq_length = {} is "
               "not a multiple of {}; choose a seq_length divisible by 2 x context_parallel_size",
               size, size, 2 * size, full_T, 2 * size);
  context_parallel_chunks(rank, size);  // checks rank and size
  const int64_t local = full_T / size;
  std::vector<int64_t> pos(static_cast<size_t>(local));
  for (int64_t t = 0; t < local; ++t) pos[static_cast<size_t>(t)] = context_parallel_position(t, local, rank, size);
  return pos;
}

Tensor context_parallel_columns(const Tensor& full, int rank, int size) {
  PRIMUS_CHECK(full.ndim() == 2, "context_parallel_columns: expected a (batch, sequence) tensor, got {}",
               full.describe());
  const Tensor host = full.device() == Device::CPU ? full : full.to(Device::CPU);
  const int64_t B = host.size(0), T = host.size(1);
  const std::vector<int64_t> pos = context_parallel_positions(T, rank, size);
  const auto L = static_cast<int64_t>(pos.size());
  const int64_t c = L / 2;
  Tensor out = Tensor::empty({B, L}, host.dtype());
  const size_t es = dtype_size(host.dtype());
  const auto* src = static_cast<const char*>(host.raw());
  auto* dst = static_cast<char*>(out.raw());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < 2; ++h)  // the two chunks: contiguous runs of c columns
      std::memcpy(dst + static_cast<size_t>(b * L + h * c) * es,
                  src + static_cast<size_t>(b * T + pos[static_cast<size_t>(h * c)]) * es, static_cast<size_t>(c) * es);
  return out;
}

Tensor context_parallel_full_rows(const Tensor& local, const ContextParallel& cp) {
  PRIMUS_CHECK(local.ndim() == 2 && dtype_size(local.dtype()) == 4,
               "context_parallel_full_rows: expected a (batch, columns) tensor of a 4-byte dtype, got {}",
               local.describe());
  const Tensor host = local.device() == Device::CPU ? local : local.to(Device::CPU);
  if (!cp.active()) return host;
  Communicator& g = *cp.group;
  const int P = g.size();
  const int64_t B = host.size(0), L = host.size(1), T = L * P;
  Tensor in = host.to(g.device());
  Tensor all = Tensor::empty({P * B * L}, host.dtype(), g.device());
  g.all_gather(all, in);
  const Tensor got = all.to(Device::CPU);
  Tensor full = Tensor::empty({B, T}, host.dtype());
  const auto* src = static_cast<const uint32_t*>(got.raw());
  auto* dst = static_cast<uint32_t*>(full.raw());
  for (int r = 0; r < P; ++r) {
    const std::vector<int64_t> pos = context_parallel_positions(T, r, P);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < L; ++j) dst[b * T + pos[static_cast<size_t>(j)]] = src[(r * B + b) * L + j];
  }
  return full;
}

void context_parallel_sum(const ContextParallel& cp, Tensor& t) {
  if (cp.active()) cp.group->all_reduce(t, ReduceOp::Sum);
}

namespace {

// Chunk `which` (0: local columns [0, c), 1: [c, 2c)) of a (B, 2c, ...) tensor, copied into the arena.
Tensor chunk_of(ops::Context& ctx, Arena& arena, const Tensor& whole, int which) {
  const int64_t B = whole.size(0), row = whole.numel() / B, w = row / 2;
  Shape shape = whole.shape();
  shape[1] /= 2;
  Tensor out = arena.alloc(shape, whole.dtype());
  Tensor out2 = out.view({B, w});
  ops::copy_columns(ctx, out2, 0, whole.view({B, row}), which * w, w);
  return out;
}

// Columns `which` of an lse (B, H, 2c) -> (B, H, c) in the arena.
Tensor lse_chunk_of(ops::Context& ctx, Arena& arena, const Tensor& lse, int which) {
  const int64_t B = lse.size(0), H = lse.size(1), c = lse.size(2) / 2;
  Tensor out = arena.alloc({B, H, c}, lse.dtype());
  Tensor out2 = out.view({B * H, c});
  ops::copy_columns(ctx, out2, 0, lse.view({B * H, 2 * c}), which * c, c);
  return out;
}

// whole (B, 2c, ...) chunk `which` += part (B, c, ...).
void add_to_chunk(ops::Context& ctx, Arena& arena, Tensor& whole, int which, const Tensor& part) {
  const Arena::Mark m = arena.mark();
  const int64_t B = whole.size(0), row = whole.numel() / B, w = row / 2;
  Tensor w2 = whole.view({B, row});
  Tensor tmp = arena.alloc({B, w}, whole.dtype());
  ops::copy_columns(ctx, tmp, 0, w2, which * w, w);
  ops::add(ctx, tmp, tmp, part.view({B, w}));
  ops::copy_columns(ctx, w2, which * w, tmp, 0, w);
  arena.release(m);
}

// [k | v] of one rank as one flat buffer, so that each ring step is one send_recv.
struct KvViews {
  Tensor k, v;
};
KvViews kv_views(const Tensor& buf, const Tensor& k_like, const Tensor& v_like) {
  const int64_t nk = k_like.numel(), nv = v_like.numel();
  return {buf.rows(0, nk).view(k_like.shape()), buf.rows(nk, nk + nv).view(v_like.shape())};
}

Tensor pack_kv(ops::Context& ctx, Arena& arena, const Tensor& k, const Tensor& v) {
  Tensor buf = arena.alloc({k.numel() + v.numel()}, k.dtype());
  KvViews views = kv_views(buf, k, v);
  ops::copy_cast(ctx, views.k, k);
  ops::copy_cast(ctx, views.v, v);
  return buf;
}

void check_ring_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const char* op) {
  PRIMUS_CHECK(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4 && q.size(1) % 2 == 0 && q.size(1) == k.size(1) &&
                   q.size(1) == v.size(1) && k.dtype() == v.dtype(),
               "{}: q {}, k {}, v {} must be (B, 2c, H, D) of this rank's two chunks, k and v of one dtype", op,
               q.describe(), k.describe(), v.describe());
}

}  // namespace

void ring_attention_forward(ops::Context& ctx, const ContextParallel& cp, Arena& arena, Tensor& out, Tensor& lse,
                            const Tensor& q, const Tensor& k, const Tensor& v, float scale) {
  check_ring_shapes(q, k, v, "ring_attention_forward");
  if (!cp.active()) {
    ops::attention_forward(ctx, out, lse, q, k, v, scale, true);
    return;
  }
  Communicator& g = *cp.group;
  const int P = g.size(), r = g.rank(), next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t B = q.size(0), c = q.size(1) / 2, Hq = q.size(2), Dv = v.size(3);
  const Arena::Mark start = arena.mark();
  Tensor bufs[2] = {pack_kv(ctx, arena, k, v), arena.alloc({k.numel() + v.numel()}, k.dtype())};
  const Tensor qc[2] = {chunk_of(ctx, arena, q, 0), chunk_of(ctx, arena, q, 1)};
  Tensor part_out = arena.alloc({B, c, Hq, Dv}, out.dtype());
  Tensor part_lse = arena.alloc({B, Hq, c}, DType::F32);
  int cur = 0;
  for (int s = 0; s < P; ++s) {
    // The K/V of the next step travel while this step computes.
    CommHandle shift;
    if (s + 1 < P) shift = g.send_recv_async(bufs[cur], next, bufs[1 - cur], prev);
    if (s == 0) {
      ops::attention_forward(ctx, out, lse, q, k, v, scale, true);
    } else {
      const int src = (r - s + P) % P;
      const KvViews kv = kv_views(bufs[cur], k, v);
      // (query chunk, key chunk) blocks this step sees in full (see the header).
      const int blocks[2][2] = {{src < r ? 0 : 1, 0}, {1, src < r ? 0 : 1}};
      for (const auto& blk : blocks) {
        const Arena::Mark m = arena.mark();
        const Tensor kc = chunk_of(ctx, arena, kv.k, blk[1]), vc = chunk_of(ctx, arena, kv.v, blk[1]);
        ops::attention_forward(ctx, part_out, part_lse, qc[blk[0]], kc, vc, scale, false);
        ops::attention_merge(ctx, out, lse, part_out, part_lse, blk[0] * c);
        arena.release(m);
      }
    }
    if (shift) {
      shift->wait();
      cur = 1 - cur;
    }
  }
  arena.release(start);
}

void ring_attention_backward(ops::Context& ctx, const ContextParallel& cp, Arena& arena, Tensor& dq, Tensor& dk,
                             Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& out, const Tensor& lse, float scale) {
  check_ring_shapes(q, k, v, "ring_attention_backward");
  ops::attention_backward(ctx, dq, dk, dv, dout, q, k, v, out, lse, scale, true);  // step 0: the local keys
  if (!cp.active()) return;
  Communicator& g = *cp.group;
  const int P = g.size(), r = g.rank(), next = (r + 1) % P, prev = (r + P - 1) % P;
  const Arena::Mark start = arena.mark();
  const int64_t n = k.numel() + v.numel();
  Tensor bufs[2] = {pack_kv(ctx, arena, k, v), arena.alloc({n}, k.dtype())};
  // d[k | v] of the visiting K/V, summed over the ranks it has visited; starts as this rank's.
  Tensor dbufs[2] = {pack_kv(ctx, arena, dk, dv), arena.alloc({n}, k.dtype())};
  const Tensor qc[2] = {chunk_of(ctx, arena, q, 0), chunk_of(ctx, arena, q, 1)};
  const Tensor oc[2] = {chunk_of(ctx, arena, out, 0), chunk_of(ctx, arena, out, 1)};
  const Tensor doc[2] = {chunk_of(ctx, arena, dout, 0), chunk_of(ctx, arena, dout, 1)};
  const Tensor lc[2] = {lse_chunk_of(ctx, arena, lse, 0), lse_chunk_of(ctx, arena, lse, 1)};
  const int64_t B = q.size(0), c = q.size(1) / 2;
  Tensor dqb = arena.alloc({B, c, q.size(2), q.size(3)}, dq.dtype());
  Tensor dkb = arena.alloc({B, c, k.size(2), k.size(3)}, dk.dtype());
  Tensor dvb = arena.alloc({B, c, v.size(2), v.size(3)}, dv.dtype());
  int cur = 0, dcur = 0;
  CommHandle shift = g.send_recv_async(bufs[0], next, bufs[1], prev);  // the K/V of step 1
  for (int s = 1; s < P; ++s) {
    shift->wait();
    cur = 1 - cur;
    // The gradient of these K/V so far: computed by the previous rank in its last step.
    g.send_recv(dbufs[dcur], next, dbufs[1 - dcur], prev);
    dcur = 1 - dcur;
    if (s + 1 < P) shift = g.send_recv_async(bufs[cur], next, bufs[1 - cur], prev);
    const int src = (r - s + P) % P;
    const KvViews kv = kv_views(bufs[cur], k, v);
    KvViews dkv = kv_views(dbufs[dcur], k, v);
    const int blocks[2][2] = {{src < r ? 0 : 1, 0}, {1, src < r ? 0 : 1}};
    for (const auto& blk : blocks) {
      const Arena::Mark m = arena.mark();
      const int qi = blk[0], ki = blk[1];
      const Tensor kc = chunk_of(ctx, arena, kv.k, ki), vc = chunk_of(ctx, arena, kv.v, ki);
      ops::attention_backward(ctx, dqb, dkb, dvb, doc[qi], qc[qi], kc, vc, oc[qi], lc[qi], scale, false);
      add_to_chunk(ctx, arena, dq, qi, dqb);
      add_to_chunk(ctx, arena, dkv.k, ki, dkb);
      add_to_chunk(ctx, arena, dkv.v, ki, dvb);
      arena.release(m);
    }
  }
  // Every rank's contribution is in; one more shift brings each buffer home.
  g.send_recv(dbufs[dcur], next, dbufs[1 - dcur], prev);
  dcur = 1 - dcur;
  const KvViews home = kv_views(dbufs[dcur], k, v);
  ops::copy_cast(ctx, dk, home.k);
  ops::copy_cast(ctx, dv, home.v);
  arena.release(start);
}

}  // namespace primus::parallel
