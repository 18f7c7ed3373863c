// CudaBackend's mixture-of-experts ops: the checks only this backend needs and the launches of
// moe.cu; and the experts' grouped GEMM: one cuBLASLt matmul per expert through the GEMM engine
// (its plan cache and tuning table apply), in sequence or concurrently over the engine's lanes,
// or one cublasGemmGroupedBatchedEx per GEMM kind (moe.h's GroupedGemmImpl).
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/moe.h"

namespace primus::cuda {

namespace {

std::atomic<GroupedGemmImpl> g_grouped_gemm_impl{GroupedGemmImpl::Loop};

void require_cuda(const Tensor& t, const char* op, const char* name) {
  PRIMUS_CHECK(t.is_cuda(), "{}: tensor '{}' is {}, the CUDA backend needs it on the GPU", op, name, t.describe());
}

MoeRoutingParams routing_params(const ops::Backend::MoeRouting& r) {
  MoeRoutingParams p;
  p.topk = static_cast<int>(r.topk);
  p.sigmoid = r.sigmoid;
  p.pre_softmax = r.pre_softmax;
  p.num_groups = static_cast<int>(r.num_groups);
  p.group_topk = static_cast<int>(r.group_topk);
  p.group_max = r.group_max;
  p.scaling = r.scaling;
  return p;
}

cudaDataType_t cublas_type(DType t) {
  switch (t) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    case DType::F32: return CUDA_R_32F;
    default: fail("grouped GEMM: dtype {} is not supported (bf16, fp16, fp32)", dtype_name(t));
  }
}

const char* type_name(cudaDataType_t t) {
  return t == CUDA_R_16BF ? "bf16" : t == CUDA_R_16F ? "fp16" : t == CUDA_R_32F ? "fp32" : "other";
}

// Row r of a 2-D tensor, and expert e's (out, in) block of a stacked (E, out, in) tensor.
char* row_ptr(const Tensor& t, int64_t r) {
  return static_cast<char*>(t.raw()) + r * t.size(1) * static_cast<int64_t>(dtype_size(t.dtype()));
}
char* expert_ptr(const Tensor& t, int64_t e) {
  return static_cast<char*>(t.raw()) + e * t.size(1) * t.size(2) * static_cast<int64_t>(dtype_size(t.dtype()));
}

// ---- cublasGemmGroupedBatchedEx ------------------------------------------------------------
//
// One problem of a grouped call in cuBLAS's column-major terms: C (m,n) = op(A) op(B) with
// leading dimensions lda / ldb / ldc. A row-major (R, C) matrix is, to cuBLAS, its (C, R)
// transpose with leading dimension C, so each row-major product Y = X W^T is issued as
// Y^T = W X^T (see the three builders in grouped_linear_*).
struct GroupedProblem {
  int m, n, k;
  const void* a;
  int lda;
  const void* b;
  int ldb;
  void* c;
  int ldc;
};

// Per (device, stream): a cuBLAS handle bound to the stream, and a ring of pinned staging slots
// for the pointer arrays (cuBLAS reads Aarray / Barray / Carray from device memory). A slot is
// refilled only after the copy that last read it has run (its event). Created on first use and
// kept for the life of the process (a handle is never destroyed: the CUDA runtime may already
// be gone when static destructors run); the map is keyed by the stream handle, so a backend
// created later on a recycled stream handle reuses the entry, which is harmless because the
// stream is rebound on every call.
struct BatchedContext {
  static constexpr int kSlots = 8;
  cublasHandle_t handle = nullptr;
  char* pinned = nullptr;  // kSlots slots of slot_bytes
  size_t slot_bytes = 0;
  int next = 0;
  cudaEvent_t copied[kSlots] = {};
};

BatchedContext& batched_context(int device, cudaStream_t stream) {
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, BatchedContext>* contexts =
      new std::map<std::pair<int, cudaStream_t>, BatchedContext>();  // never freed (see above)
  std::lock_guard<std::mutex> lock(mu);
  BatchedContext& bc = (*contexts)[{device, stream}];
  if (bc.handle == nullptr) {
    int current = 0;
    PRIMUS_CUDA_CHECK(cudaGetDevice(&current));
    if (current != device) PRIMUS_CUDA_CHECK(cudaSetDevice(device));
    PRIMUS_CUBLAS_CHECK(cublasCreate(&bc.handle));
    for (cudaEvent_t& ev : bc.copied) PRIMUS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    if (current != device) PRIMUS_CUDA_CHECK(cudaSetDevice(current));
  }
  return bc;
}

// One cublasGemmGroupedBatchedEx over `ps` (one group of size 1 each, alpha 1, the given beta),
// pointer arrays staged through `dev_ptrs` (3 * ps.size() pointers of device memory, stream
// ordered). Returns false, having launched no GEMM, when cuBLAS does not support the type
// combination (the caller then loops over the engine).
bool grouped_batched_gemm(int device, cudaStream_t stream, void* dev_ptrs, cublasOperation_t ta,
                          cublasOperation_t tb, const std::vector<GroupedProblem>& ps, cudaDataType_t in_type,
                          cudaDataType_t out_type, float beta) {
  if (ps.empty()) return true;
  BatchedContext& bc = batched_context(device, stream);
  const size_t G = ps.size(), bytes = 3 * G * sizeof(void*);
  if (bytes > bc.slot_bytes) {  // grow the ring once every copy out of it has run
    for (cudaEvent_t ev : bc.copied) PRIMUS_CUDA_CHECK(cudaEventSynchronize(ev));
    if (bc.pinned != nullptr) PRIMUS_CUDA_CHECK(cudaFreeHost(bc.pinned));
    bc.pinned = nullptr;
    const size_t grown = (bytes + 255) / 256 * 256 * 2;
    PRIMUS_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&bc.pinned), grown * BatchedContext::kSlots));
    bc.slot_bytes = grown;
  }
  const int slot = bc.next;
  bc.next = (slot + 1) % BatchedContext::kSlots;
  PRIMUS_CUDA_CHECK(cudaEventSynchronize(bc.copied[slot]));
  void** host = reinterpret_cast<void**>(bc.pinned + static_cast<size_t>(slot) * bc.slot_bytes);
  std::vector<int> m(G), n(G), k(G), lda(G), ldb(G), ldc(G), group_size(G, 1);
  for (size_t g = 0; g < G; ++g) {
    const GroupedProblem& p = ps[g];
    host[g] = const_cast<void*>(p.a);
    host[G + g] = const_cast<void*>(p.b);
    host[2 * G + g] = p.c;
    m[g] = p.m;
    n[g] = p.n;
    k[g] = p.k;
    lda[g] = p.lda;
    ldb[g] = p.ldb;
    ldc[g] = p.ldc;
  }
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(dev_ptrs, host, bytes, cudaMemcpyHostToDevice, stream));
  PRIMUS_CUDA_CHECK(cudaEventRecord(bc.copied[slot], stream));
  const std::vector<cublasOperation_t> tas(G, ta), tbs(G, tb);
  const std::vector<float> alphas(G, 1.f), betas(G, beta);
  void** dev = static_cast<void**>(dev_ptrs);
  PRIMUS_CUBLAS_CHECK(cublasSetStream(bc.handle, stream));
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      bc.handle, tas.data(), tbs.data(), m.data(), n.data(), k.data(), alphas.data(),
      const_cast<const void* const*>(dev), in_type, lda.data(), const_cast<const void* const*>(dev + G), in_type,
      ldb.data(), betas.data(), dev + 2 * G, out_type, ldc.data(), static_cast<int>(G), group_size.data(),
      CUBLAS_COMPUTE_32F);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    static std::atomic<bool> told{false};
    if (!told.exchange(true))
      fmt::print(stderr, "primus: cublasGemmGroupedBatchedEx does not support {} inputs with {} output; those "
                 "grouped GEMMs loop over the experts instead\n", type_name(in_type), type_name(out_type));
    return false;
  }
  PRIMUS_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasGemmGroupedBatchedEx failed with status {} ({} experts)",
               static_cast<int>(st), G);
  return true;
}

// Runs gemm(e, r0, n, lane) for every expert e with n > 0 rows starting at row r0: on lane 0
// alone (Loop), or over the engine's lanes (Lanes), between one fork and one join.
template <typename Gemm>
void for_each_expert(GemmEngine& engine, const std::vector<int64_t>& rows, Gemm gemm) {
  const auto busy = static_cast<int>(std::count_if(rows.begin(), rows.end(), [](int64_t n) { return n > 0; }));
  const int lanes =
      g_grouped_gemm_impl.load() == GroupedGemmImpl::Lanes ? std::clamp(busy, 1, GemmEngine::kMaxLanes) : 1;
  engine.fork_lanes(lanes);
  int64_t r0 = 0;
  int i = 0;
  for (size_t e = 0; e < rows.size(); ++e) {
    if (const int64_t n = rows[e]; n > 0) gemm(static_cast<int64_t>(e), r0, n, i++ % lanes);
    r0 += rows[e];
  }
  engine.join_lanes();
}

}  // namespace

void set_grouped_gemm_impl(GroupedGemmImpl impl) { g_grouped_gemm_impl.store(impl); }
GroupedGemmImpl grouped_gemm_impl() { return g_grouped_gemm_impl.load(); }

// ---- routing -------------------------------------------------------------------------------

void CudaBackend::moe_topk_forward(Tensor& probs, Tensor& indices, const Tensor& logits, const Tensor& bias,
                                   const MoeRouting& r) {
  require_cuda(probs, "moe_topk_forward", "probs");
  require_cuda(indices, "moe_topk_forward", "indices");
  require_cuda(logits, "moe_topk_forward", "logits");
  if (bias.defined()) require_cuda(bias, "moe_topk_forward", "bias");
  launch_moe_topk_forward(probs.data<float>(), indices.data<int32_t>(), logits.data<float>(),
                          bias.defined() ? bias.data<float>() : nullptr, logits.size(0), logits.size(1),
                          routing_params(r), stream_);
}

void CudaBackend::moe_topk_backward(Tensor& d_logits, const Tensor& d_probs, const Tensor& logits,
                                    const Tensor& indices, const MoeRouting& r) {
  require_cuda(d_logits, "moe_topk_backward", "d_logits");
  require_cuda(d_probs, "moe_topk_backward", "d_probs");
  require_cuda(logits, "moe_topk_backward", "logits");
  require_cuda(indices, "moe_topk_backward", "indices");
  launch_moe_topk_backward(d_logits.data<float>(), d_probs.data<float>(), logits.data<float>(),
                           indices.data<int32_t>(), logits.size(0), logits.size(1), routing_params(r), stream_);
}

void CudaBackend::moe_aux_stats(Tensor& score_sums, Tensor& counts, Tensor& lse_sq, const Tensor& logits,
                                int64_t topk, bool sigmoid) {
  require_cuda(score_sums, "moe_aux_stats", "score_sums");
  require_cuda(counts, "moe_aux_stats", "counts");
  require_cuda(lse_sq, "moe_aux_stats", "lse_sq");
  require_cuda(logits, "moe_aux_stats", "logits");
  const int64_t N = logits.size(0), E = logits.size(1), G = score_sums.size(0);
  const size_t ws = moe_aux_stats_workspace_bytes(N, E, G);
  launch_moe_aux_stats(score_sums.data<float>(), counts.data<float>(), lse_sq.data<float>(), logits.data<float>(), N,
                       E, G, topk, sigmoid, scratch(ws), ws, stream_);
}

void CudaBackend::moe_aux_backward(Tensor& d_logits, const Tensor& logits, const Tensor& score_grad, float z_weight,
                                   bool sigmoid) {
  require_cuda(d_logits, "moe_aux_backward", "d_logits");
  require_cuda(logits, "moe_aux_backward", "logits");
  require_cuda(score_grad, "moe_aux_backward", "score_grad");
  launch_moe_aux_backward(d_logits.data<float>(), logits.data<float>(), score_grad.data<float>(), logits.size(0),
                          logits.size(1), score_grad.size(0), z_weight, sigmoid, stream_);
}

// ---- dispatch ------------------------------------------------------------------------------

void CudaBackend::moe_dispatch_plan(Tensor& row_of, Tensor& pair_of_row, Tensor& tokens_per_expert,
                                    const Tensor& indices, const Tensor& probs, int64_t capacity, bool drop_by_probs,
                                    bool pad) {
  require_cuda(row_of, "moe_dispatch_plan", "row_of");
  require_cuda(pair_of_row, "moe_dispatch_plan", "pair_of_row");
  require_cuda(tokens_per_expert, "moe_dispatch_plan", "tokens_per_expert");
  require_cuda(indices, "moe_dispatch_plan", "indices");
  require_cuda(probs, "moe_dispatch_plan", "probs");
  const int64_t N = indices.size(0), k = indices.size(1), E = tokens_per_expert.size(0);
  const size_t ws = moe_dispatch_plan_workspace_bytes(N, k, E, capacity, drop_by_probs);
  launch_moe_dispatch_plan(row_of.data<int32_t>(), pair_of_row.data<int32_t>(), tokens_per_expert.data<int32_t>(),
                           indices.data<int32_t>(), probs.data<float>(), N, k, E, capacity, drop_by_probs, pad,
                           scratch(ws), ws, stream_);
}

void CudaBackend::moe_permute(Tensor& x_perm, const Tensor& x, const Tensor& pair_of_row, int64_t topk) {
  require_cuda(x_perm, "moe_permute", "x_perm");
  require_cuda(x, "moe_permute", "x");
  require_cuda(pair_of_row, "moe_permute", "pair_of_row");
  launch_moe_permute(x_perm.raw(), x.raw(), pair_of_row.data<int32_t>(), x.dtype(), x_perm.size(0), x.size(1), topk,
                     stream_);
}

void CudaBackend::moe_permute_backward(Tensor& dx, const Tensor& d_x_perm, const Tensor& row_of) {
  require_cuda(dx, "moe_permute_backward", "dx");
  require_cuda(d_x_perm, "moe_permute_backward", "d_x_perm");
  require_cuda(row_of, "moe_permute_backward", "row_of");
  launch_moe_permute_backward(dx.raw(), d_x_perm.raw(), row_of.data<int32_t>(), dx.dtype(), row_of.size(0),
                              row_of.size(1), dx.size(1), stream_);
}

void CudaBackend::moe_unpermute(Tensor& y, const Tensor& y_perm, const Tensor& row_of, const Tensor& probs) {
  require_cuda(y, "moe_unpermute", "y");
  require_cuda(y_perm, "moe_unpermute", "y_perm");
  require_cuda(row_of, "moe_unpermute", "row_of");
  require_cuda(probs, "moe_unpermute", "probs");
  launch_moe_unpermute(y.raw(), y_perm.raw(), row_of.data<int32_t>(), probs.data<float>(), y.dtype(), row_of.size(0),
                       row_of.size(1), y.size(1), stream_);
}

void CudaBackend::moe_unpermute_backward(Tensor& d_y_perm, Tensor& d_probs, const Tensor& dy, const Tensor& y_perm,
                                         const Tensor& row_of, const Tensor& pair_of_row, const Tensor& probs) {
  require_cuda(d_y_perm, "moe_unpermute_backward", "d_y_perm");
  require_cuda(d_probs, "moe_unpermute_backward", "d_probs");
  require_cuda(dy, "moe_unpermute_backward", "dy");
  require_cuda(y_perm, "moe_unpermute_backward", "y_perm");
  require_cuda(row_of, "moe_unpermute_backward", "row_of");
  require_cuda(pair_of_row, "moe_unpermute_backward", "pair_of_row");
  require_cuda(probs, "moe_unpermute_backward", "probs");
  launch_moe_unpermute_backward(d_y_perm.raw(), d_probs.data<float>(), dy.raw(), y_perm.raw(), row_of.data<int32_t>(),
                                pair_of_row.data<int32_t>(), probs.data<float>(), dy.dtype(), row_of.size(0),
                                row_of.size(1), pair_of_row.numel(), dy.size(1), stream_);
}

// ---- grouped GEMM --------------------------------------------------------------------------
//
// Expert e owns rows [o_e, o_e + rows[e]) of x / y / dx / dy and w[e] (out, in). In the engine's
// row-major terms (gemm.h):
//   forward  y_e (n_e, out)  = x_e (n_e, in) @ w_e^T          M = n_e, N = out, K = in, tb
//   dgrad    dx_e (n_e, in)  = dy_e (n_e, out) @ w_e          M = n_e, N = in,  K = out
//   wgrad    dw_e (out, in)  = dy_e^T @ x_e (+ dw_e)          M = out, N = in,  K = n_e, ta
// and for cublasGemmGroupedBatchedEx (column-major, C^T = B^T A^T):
//   forward  m = out, n = n_e, k = in:  A = w_e (T, lda in),  B = x_e (N, ldb in),   C = y_e (ldc out)
//   dgrad    m = in, n = n_e, k = out:  A = w_e (N, lda in),  B = dy_e (N, ldb out), C = dx_e (ldc in)
//   wgrad    m = in, n = out, k = n_e:  A = x_e (N, lda in),  B = dy_e (T, ldb out), C = dw_e (ldc in)

void CudaBackend::grouped_linear_forward(Tensor& y, const Tensor& x, const Tensor& w,
                                         const std::vector<int64_t>& rows) {
  require_cuda(y, "grouped_linear_forward", "y");
  require_cuda(x, "grouped_linear_forward", "x");
  require_cuda(w, "grouped_linear_forward", "w");
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2);
  int64_t total = 0;
  for (int64_t n : rows) total += n;
  if (out == 0 || total == 0) return;
  if (in == 0) {  // empty sums
    PRIMUS_CUDA_CHECK(cudaMemsetAsync(y.raw(), 0, static_cast<size_t>(total * out) * dtype_size(y.dtype()), stream_));
    return;
  }
  auto loop = [&]() {
    for_each_expert(*gemm_, rows, [&](int64_t e, int64_t r0, int64_t n, int lane) {
      gemm_->matmul_on_lane(lane, row_ptr(y, r0), y.dtype(), row_ptr(x, r0), expert_ptr(w, e), x.dtype(), n, out, in,
                            false, true, 1.f, 0.f);
    });
  };
  if (grouped_gemm_impl() == GroupedGemmImpl::Batched) {
    std::vector<GroupedProblem> ps;
    int64_t r0 = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = rows[static_cast<size_t>(e)];
      if (n > 0)
        ps.push_back({static_cast<int>(out), static_cast<int>(n), static_cast<int>(in), expert_ptr(w, e),
                      static_cast<int>(in), row_ptr(x, r0), static_cast<int>(in), row_ptr(y, r0),
                      static_cast<int>(out)});
      r0 += n;
    }
    void* dev = scratch(3 * ps.size() * sizeof(void*));
    if (grouped_batched_gemm(device_, stream_, dev, CUBLAS_OP_T, CUBLAS_OP_N, ps, cublas_type(x.dtype()),
                             cublas_type(y.dtype()), 0.f))
      return;
  }
  loop();
}

void CudaBackend::grouped_linear_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                                          const std::vector<int64_t>& rows, bool accumulate) {
  require_cuda(dw, "grouped_linear_backward", "dw");
  require_cuda(dy, "grouped_linear_backward", "dy");
  require_cuda(x, "grouped_linear_backward", "x");
  require_cuda(w, "grouped_linear_backward", "w");
  if (dx.defined()) require_cuda(dx, "grouped_linear_backward", "dx");
  PRIMUS_CHECK(dy.dtype() == x.dtype() && (!dx.defined() || dx.dtype() == x.dtype()),
               "grouped_linear_backward: dy {} and dx must have x's dtype {}", dy.describe(), dtype_name(x.dtype()));
  const int64_t E = w.size(0), out = w.size(1), in = w.size(2);
  const size_t dw_expert_bytes = static_cast<size_t>(out * in) * dtype_size(dw.dtype());
  const bool batched = grouped_gemm_impl() == GroupedGemmImpl::Batched;
  void* dev = batched ? scratch(3 * static_cast<size_t>(E) * sizeof(void*)) : nullptr;

  // dx = dy @ w per expert.
  if (dx.defined() && in > 0) {
    bool done = false;
    if (out == 0) {  // empty sums
      int64_t total = 0;
      for (int64_t n : rows) total += n;
      PRIMUS_CUDA_CHECK(
          cudaMemsetAsync(dx.raw(), 0, static_cast<size_t>(total * in) * dtype_size(dx.dtype()), stream_));
      done = true;
    } else if (batched) {
      std::vector<GroupedProblem> ps;
      int64_t r0 = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = rows[static_cast<size_t>(e)];
        if (n > 0)
          ps.push_back({static_cast<int>(in), static_cast<int>(n), static_cast<int>(out), expert_ptr(w, e),
                        static_cast<int>(in), row_ptr(dy, r0), static_cast<int>(out), row_ptr(dx, r0),
                        static_cast<int>(in)});
        r0 += n;
      }
      done = grouped_batched_gemm(device_, stream_, dev, CUBLAS_OP_N, CUBLAS_OP_N, ps, cublas_type(dy.dtype()),
                                  cublas_type(dx.dtype()), 0.f);
    }
    if (!done)
      for_each_expert(*gemm_, rows, [&](int64_t e, int64_t r0, int64_t n, int lane) {
        gemm_->matmul_on_lane(lane, row_ptr(dx, r0), dx.dtype(), row_ptr(dy, r0), expert_ptr(w, e), dy.dtype(), n, in,
                              out, false, false, 1.f, 0.f);
      });
  }

  // dw[e] (+)= dy_e^T @ x_e; an expert without rows gets zeros unless accumulating.
  if (out == 0 || in == 0) return;
  if (!accumulate)
    for (int64_t e = 0; e < E; ++e)
      if (rows[static_cast<size_t>(e)] == 0)
        PRIMUS_CUDA_CHECK(cudaMemsetAsync(expert_ptr(dw, e), 0, dw_expert_bytes, stream_));
  const float beta = accumulate ? 1.f : 0.f;
  if (batched) {
    std::vector<GroupedProblem> ps;
    int64_t r0 = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = rows[static_cast<size_t>(e)];
      if (n > 0)
        ps.push_back({static_cast<int>(in), static_cast<int>(out), static_cast<int>(n), row_ptr(x, r0),
                      static_cast<int>(in), row_ptr(dy, r0), static_cast<int>(out), expert_ptr(dw, e),
                      static_cast<int>(in)});
      r0 += n;
    }
    if (grouped_batched_gemm(device_, stream_, dev, CUBLAS_OP_N, CUBLAS_OP_T, ps, cublas_type(x.dtype()),
                             cublas_type(dw.dtype()), beta))
      return;
  }
  for_each_expert(*gemm_, rows, [&](int64_t e, int64_t r0, int64_t n, int lane) {
    gemm_->matmul_on_lane(lane, expert_ptr(dw, e), dw.dtype(), row_ptr(dy, r0), row_ptr(x, r0), dy.dtype(), out, in, n,
                          true, false, 1.f, beta);
  });
}

}  // namespace primus::cuda
