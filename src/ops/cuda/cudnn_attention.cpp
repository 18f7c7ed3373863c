// cuDNN fused SDPA forward/backward graphs, their plan cache and execution (cudnn_attention.h).
#include "ops/cuda/cudnn_attention.h"

#include <fmt/format.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

#ifdef PRIMUS_WITH_CUDNN
#include <cudnn_graph.h>

#include "ops/cuda/cudnn_attention_graph.h"
#endif

namespace primus::cuda {

namespace {

const char* pass_name(CudnnPass p) { return p == CudnnPass::Forward ? "forward" : "backward"; }

}  // namespace

std::string CudnnAttentionShape::describe() const {
  return fmt::format("B={} T={} Hq={} Hkv={} D={}/{} {} {}", B, T, Hq, Hkv, Dqk, Dv, dtype_name(dtype),
                     causal ? "causal" : "full");
}

#ifndef PRIMUS_WITH_CUDNN

// ---- built without cuDNN: every shape is refused with the reason ----------------------------

struct CudnnAttention::Impl {
  std::string reason =
      "this primus was built without cuDNN (CMake did not find libcudnn/cudnn_graph.h; install cuDNN 9 and "
      "reconfigure)";
  bool warned = false;
};

CudnnAttention::CudnnAttention(int, cudaStream_t, CudnnAttentionOptions) : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;
bool CudnnAttention::compiled_in() { return false; }
const std::string& CudnnAttention::prepare(CudnnPass, const CudnnAttentionShape&) { return impl_->reason; }
bool CudnnAttention::ready(CudnnPass pass, const CudnnAttentionShape& s, bool strict, const char* fallback) {
  if (strict)
    fail("attention {} {}: cuDNN-only mode (AttentionKernel::Cudnn, attention_backend: fused) but {}",
         pass_name(pass), s.describe(), impl_->reason);
  if (!impl_->warned) {
    impl_->warned = true;
    fmt::print(stderr, "primus: warning: cuDNN attention unavailable ({}); using the {} kernel\n", impl_->reason,
               fallback);
  }
  return false;
}
size_t CudnnAttention::workspace_bytes(CudnnPass, const CudnnAttentionShape&) { fail("{}", impl_->reason); }
std::string CudnnAttention::describe(CudnnPass, const CudnnAttentionShape&) { return impl_->reason; }
void CudnnAttention::forward(const CudnnAttentionShape&, const CudnnAttentionForwardArgs&, void*, size_t) {
  fail("{}", impl_->reason);
}
void CudnnAttention::backward(const CudnnAttentionShape&, const CudnnAttentionBackwardArgs&, void*, size_t) {
  fail("{}", impl_->reason);
}

#else

namespace {

using cudnn::GraphBuilder;
using cudnn::Plan;
using cudnn::TensorKind;

constexpr size_t kAlign = 256;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

constexpr cudnnDataType_t kF32 = CUDNN_DATA_FLOAT;

cudnnDataType_t io_type(DType dt) { return dt == DType::F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16; }

// A (B,T,H,D) row-major tensor as cuDNN's (b, h, s, d).
std::vector<int64_t> bshd_strides(int64_t T, int64_t H, int64_t D) { return {T * H * D, D, H * D, 1}; }
// The same memory as the transposed view (b, h, d, s).
std::vector<int64_t> bshd_strides_t(int64_t T, int64_t H, int64_t D) { return {T * H * D, D, 1, H * D}; }

// cudaMalloc'd device memory freed with the plan that uses it.
struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

struct ForwardGraph {
  Plan plan;
  int64_t q = -1, k = -1, v = -1, o = -1, stats = -1, scale = -1, neg_inf = -1;
};

struct BackwardGraph {
  Plan plan;
  int64_t q = -1, k = -1, v = -1, o = -1, dout = -1, stats = -1, dq = -1, dk = -1, dv = -1;
  int64_t scale = -1, one = -1, neg_inf = -1, softmax_sum = -1, dq_accum = -1, seq_q = -1, seq_kv = -1;
  size_t dq_accum_bytes = 0, softmax_sum_bytes = 0;
  DeviceBuffer seq_lens;  // 2*B int32: seq_len_q then seq_len_kv, all T (padding-mask workaround only)
  bool zero_dq_accum = false;
};

// Causal mask, top-left aligned (query i sees keys j <= i): out = (row >= col) ? scores : -inf.
// As the cuDNN frontend lowers it for the composite SDPA graphs (generated indices, CMP_GE, select).
int64_t add_causal_mask(GraphBuilder& g, int64_t scores, int64_t neg_inf, const CudnnAttentionOptions& opt) {
  const cudnnDataType_t idx = opt.mask_index_int32 ? CUDNN_DATA_INT32 : kF32;
  const int64_t row = g.virtual_like("causal row index", scores, idx);
  g.pointwise("causal gen_row_index (axis 2)", CUDNN_POINTWISE_GEN_INDEX, kF32, scores, -1, -1, row, 2);
  const int64_t col = g.virtual_like("causal col index", scores, idx);
  g.pointwise("causal gen_col_index (axis 3)", CUDNN_POINTWISE_GEN_INDEX, kF32, scores, -1, -1, col, 3);
  const int64_t keep = g.virtual_like("causal row >= col", scores, CUDNN_DATA_BOOLEAN);
  g.pointwise("causal cmp_ge(row, col)", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, -1, keep);
  const int64_t out = g.virtual_like("causal-masked scores", scores, kF32);
  g.pointwise("causal binary_select(scores, -inf, keep)", CUDNN_POINTWISE_BINARY_SELECT, kF32, scores, neg_inf, keep,
              out);
  return out;
}

// Padding mask with per-batch lengths (all T here): out = (row < seq_q && col < seq_kv) ? scores : -inf.
int64_t add_padding_mask(GraphBuilder& g, int64_t scores, int64_t neg_inf, int64_t seq_q, int64_t seq_kv) {
  const int64_t row = g.virtual_like("padding row index", scores, CUDNN_DATA_INT32);
  g.pointwise("padding gen_row_index (axis 2)", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, scores, -1, -1, row, 2);
  const int64_t col = g.virtual_like("padding col index", scores, CUDNN_DATA_INT32);
  g.pointwise("padding gen_col_index (axis 3)", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, scores, -1, -1, col, 3);
  const int64_t row_ok = g.virtual_like("padding row < seq_len_q", scores, CUDNN_DATA_BOOLEAN);
  g.pointwise("padding cmp_lt(row, seq_len_q)", CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, seq_q, -1, row_ok);
  const int64_t col_ok = g.virtual_like("padding col < seq_len_kv", scores, CUDNN_DATA_BOOLEAN);
  g.pointwise("padding cmp_lt(col, seq_len_kv)", CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, seq_kv, -1, col_ok);
  const int64_t keep = g.virtual_like("padding keep", scores, CUDNN_DATA_BOOLEAN);
  g.pointwise("padding logical_and", CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, row_ok, col_ok, -1, keep);
  const int64_t out = g.virtual_like("padding-masked scores", scores, kF32);
  g.pointwise("padding binary_select(scores, -inf, keep)", CUDNN_POINTWISE_BINARY_SELECT, kF32, scores, neg_inf, keep,
              out);
  return out;
}

std::unique_ptr<ForwardGraph> build_forward(cudnnHandle_t handle, const CudnnAttentionShape& s,
                                            const CudnnAttentionOptions& opt) {
  const cudnnDataType_t io = io_type(s.dtype);
  const int64_t B = s.B, T = s.T, Hq = s.Hq, Hk = s.Hkv, Dk = s.Dqk, Dv = s.Dv;
  auto f = std::make_unique<ForwardGraph>();
  GraphBuilder g("sdpa forward " + s.describe());
  f->q = g.tensor("Q", {B, Hq, T, Dk}, bshd_strides(T, Hq, Dk), io, TensorKind::Device);
  f->k = g.tensor("K^T", {B, Hk, Dk, T}, bshd_strides_t(T, Hk, Dk), io, TensorKind::Device);
  f->v = g.tensor("V", {B, Hk, T, Dv}, bshd_strides(T, Hk, Dv), io, TensorKind::Device);
  f->o = g.tensor("O", {B, Hq, T, Dv}, bshd_strides(T, Hq, Dv), io, TensorKind::Device);
  f->stats = g.tensor("Stats (lse)", {B, Hq, T, 1}, {Hq * T, T, 1, 1}, kF32, TensorKind::Device);
  f->scale = g.scalar("attn_scale");
  const std::vector<int64_t> rows{B, Hq, T, 1}, rows_st{Hq * T, T, 1, 1};

  const int64_t s0 = g.tensor("S = Q @ K^T", {B, Hq, T, T}, {Hq * T * T, T * T, T, 1}, kF32, TensorKind::Virtual);
  g.matmul("bmm1 Q @ K^T", f->q, f->k, s0);
  const int64_t s1 = g.virtual_like("S * scale", s0, kF32);
  g.pointwise("attn_scale mul", CUDNN_POINTWISE_MUL, kF32, s0, f->scale, -1, s1);
  int64_t scores = s1;
  if (s.causal) {
    f->neg_inf = g.scalar("-inf");
    scores = add_causal_mask(g, scores, f->neg_inf, opt);
  }
  // softmax with stats
  const int64_t mx = g.tensor("rowmax(S)", rows, rows_st, kF32, TensorKind::Virtual);
  g.reduction("softmax max", CUDNN_REDUCE_TENSOR_MAX, scores, mx);
  const int64_t sub = g.virtual_like("S - max", scores, kF32);
  g.pointwise("softmax sub", CUDNN_POINTWISE_SUB, kF32, scores, mx, -1, sub);
  const int64_t ex = g.virtual_like("exp(S - max)", scores, kF32);
  g.pointwise("softmax exp", CUDNN_POINTWISE_EXP, kF32, sub, -1, -1, ex);
  const int64_t sum = g.tensor("rowsum(exp)", rows, rows_st, kF32, TensorKind::Virtual);
  g.reduction("softmax sum", CUDNN_REDUCE_TENSOR_ADD, ex, sum);
  const int64_t lsum = g.tensor("log(rowsum)", rows, rows_st, kF32, TensorKind::Virtual);
  g.pointwise("softmax log", CUDNN_POINTWISE_LOG, kF32, sum, -1, -1, lsum);
  g.pointwise("stats = max + log(sum)", CUDNN_POINTWISE_ADD, kF32, mx, lsum, -1, f->stats);
  const int64_t p = g.virtual_like("P = exp / sum", ex, io);  // bmm2's A operand takes the I/O type
  g.pointwise("softmax div", CUDNN_POINTWISE_DIV, kF32, ex, sum, -1, p);
  g.matmul("bmm2 P @ V", p, f->v, f->o);
  f->plan = std::move(g).build(handle);
  return f;
}

std::unique_ptr<BackwardGraph> build_backward(cudnnHandle_t handle, const CudnnAttentionShape& s,
                                              const CudnnAttentionOptions& opt) {
  const cudnnDataType_t io = io_type(s.dtype);
  const int64_t B = s.B, T = s.T, Hq = s.Hq, Hk = s.Hkv, Dk = s.Dqk, Dv = s.Dv;
  const size_t runtime = cudnnGetVersion();
  bool padding = false;
  switch (opt.padding_workaround) {
    case CudnnAttentionOptions::PaddingWorkaround::On: padding = true; break;
    case CudnnAttentionOptions::PaddingWorkaround::Off: padding = false; break;
    case CudnnAttentionOptions::PaddingWorkaround::Auto: padding = runtime <= 91500 && T % 128 != 0; break;
  }
  auto b = std::make_unique<BackwardGraph>();
  GraphBuilder g(fmt::format("sdpa backward {}{}", s.describe(), padding ? " (padding-mask workaround)" : ""));
  b->q = g.tensor("Q", {B, Hq, T, Dk}, bshd_strides(T, Hq, Dk), io, TensorKind::Device);
  b->k = g.tensor("K^T", {B, Hk, Dk, T}, bshd_strides_t(T, Hk, Dk), io, TensorKind::Device);
  b->v = g.tensor("V^T", {B, Hk, Dv, T}, bshd_strides_t(T, Hk, Dv), io, TensorKind::Device);
  b->o = g.tensor("O", {B, Hq, T, Dv}, bshd_strides(T, Hq, Dv), io, TensorKind::Device);
  b->dout = g.tensor("dO", {B, Hq, T, Dv}, bshd_strides(T, Hq, Dv), io, TensorKind::Device);
  b->stats = g.tensor("Stats (lse)", {B, Hq, T, 1}, {Hq * T, T, 1, 1}, kF32, TensorKind::Device);
  b->dq = g.tensor("dQ", {B, Hq, T, Dk}, bshd_strides(T, Hq, Dk), io, TensorKind::Device);
  b->dk = g.tensor("dK", {B, Hk, T, Dk}, bshd_strides(T, Hk, Dk), io, TensorKind::Device);
  b->dv = g.tensor("dV", {B, Hk, T, Dv}, bshd_strides(T, Hk, Dv), io, TensorKind::Device);
  b->scale = g.scalar("attn_scale");
  b->one = g.scalar("1");
  if (s.causal || padding) b->neg_inf = g.scalar("-inf");
  if (padding) {
    b->seq_q = g.tensor("seq_len_q", {B, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, TensorKind::Device);
    b->seq_kv = g.tensor("seq_len_kv", {B, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, TensorKind::Device);
  }
  const std::vector<int64_t> rows{B, Hq, T, 1}, rows_st{Hq * T, T, 1, 1};
  const std::vector<int64_t> sq{B, Hq, T, T}, sq_st{Hq * T * T, T * T, T, 1}, sq_t_st{Hq * T * T, T * T, 1, T};

  // softmax_sum = rowsum(dO * O) (* 1, the dropout-scale slot of the pattern), fp32 in workspace.
  const int64_t dod = g.tensor("dO * O", {B, Hq, T, Dv}, {Hq * T * Dv, T * Dv, Dv, 1}, kF32, TensorKind::Virtual);
  g.pointwise("mul dO O", CUDNN_POINTWISE_MUL, kF32, b->dout, b->o, -1, dod);
  const int64_t dsum = g.tensor("rowsum(dO * O)", rows, rows_st, kF32, TensorKind::Virtual);
  g.reduction("reduce dO O", CUDNN_REDUCE_TENSOR_ADD, dod, dsum);
  b->softmax_sum = g.tensor("softmax_sum", rows, rows_st, kF32, TensorKind::Device);
  g.pointwise("softmax_sum = rowsum * 1", CUDNN_POINTWISE_MUL, kF32, dsum, b->one, -1, b->softmax_sum);

  // P = exp(scale * Q @ K^T - Stats), masked.
  const int64_t s0 = g.tensor("S = Q @ K^T", sq, sq_st, kF32, TensorKind::Virtual);
  g.matmul("matmul Q @ K^T", b->q, b->k, s0, b->seq_q, b->seq_kv);
  const int64_t s1 = g.virtual_like("S * scale", s0, kF32);
  g.pointwise("mul S attn_scale", CUDNN_POINTWISE_MUL, kF32, s0, b->scale, -1, s1);
  int64_t scores = g.virtual_like("S - Stats", s1, kF32);
  g.pointwise("sub S Stats", CUDNN_POINTWISE_SUB, kF32, s1, b->stats, -1, scores);
  if (padding) scores = add_padding_mask(g, scores, b->neg_inf, b->seq_q, b->seq_kv);
  if (s.causal) scores = add_causal_mask(g, scores, b->neg_inf, opt);
  const int64_t p = g.virtual_like("P = exp(S - Stats)", scores, kF32);
  g.pointwise("exp S", CUDNN_POINTWISE_EXP, kF32, scores, -1, -1, p);

  // dV = P^T @ dO, summed over the Hq/Hkv query heads of each kv head.
  const int64_t pt = g.tensor("P^T", sq, sq_t_st, io, TensorKind::Virtual);
  g.reshape("P -> P^T", p, pt);
  if (Hq == Hk) {
    g.matmul("matmul P^T @ dO", pt, b->dout, b->dv, b->seq_kv, -1, b->seq_q);
  } else {
    const int64_t dvf = g.tensor("dV per query head", {B, Hq, T, Dv}, {Hq * T * Dv, T * Dv, Dv, 1}, io,
                                 TensorKind::Virtual);
    g.matmul("matmul P^T @ dO", pt, b->dout, dvf, b->seq_kv, -1, b->seq_q);
    g.reduction("dV sum over query heads of a kv head", CUDNN_REDUCE_TENSOR_ADD, dvf, b->dv);
  }

  // dS = P * (dO @ V^T - softmax_sum) * scale
  const int64_t dp = g.tensor("dP = dO @ V^T", sq, sq_st, kF32, TensorKind::Virtual);
  g.matmul("matmul dO @ V^T", b->dout, b->v, dp, b->seq_q, b->seq_kv);
  const int64_t d1 = g.virtual_like("dP - softmax_sum", dp, kF32);
  g.pointwise("sub dP softmax_sum", CUDNN_POINTWISE_SUB, kF32, dp, b->softmax_sum, -1, d1);
  const int64_t d2 = g.virtual_like("(dP - softmax_sum) * P", dp, kF32);
  g.pointwise("mul dP P", CUDNN_POINTWISE_MUL, kF32, d1, p, -1, d2);
  const int64_t ds = g.virtual_like("dS", dp, kF32);
  g.pointwise("mul dS attn_scale", CUDNN_POINTWISE_MUL, kF32, d2, b->scale, -1, ds);

  // dK = dS^T @ Q, summed over the group.
  const int64_t dst = g.tensor("dS^T", sq, sq_t_st, io, TensorKind::Virtual);
  g.reshape("dS -> dS^T", ds, dst);
  if (Hq == Hk) {
    g.matmul("matmul dS^T @ Q", dst, b->q, b->dk, b->seq_kv, -1, b->seq_q);
  } else {
    const int64_t dkf = g.tensor("dK per query head", {B, Hq, T, Dk}, {Hq * T * Dk, T * Dk, Dk, 1}, io,
                                 TensorKind::Virtual);
    g.matmul("matmul dS^T @ Q", dst, b->q, dkf, b->seq_kv, -1, b->seq_q);
    g.reduction("dK sum over query heads of a kv head", CUDNN_REDUCE_TENSOR_ADD, dkf, b->dk);
  }

  // dQ = dS @ K, accumulated in fp32 (workspace), then cast to the I/O type.
  const int64_t kk = g.tensor("K (view of K^T)", {B, Hk, T, Dk}, bshd_strides(T, Hk, Dk), kF32, TensorKind::Virtual);
  g.reshape("K^T -> K", b->k, kk);
  b->dq_accum = g.tensor("dQ_accum", {B, Hq, T, Dk}, {Hq * T * Dk, T * Dk, Dk, 1}, kF32, TensorKind::Device);
  g.matmul("matmul dS @ K", ds, kk, b->dq_accum, b->seq_q, -1, b->seq_kv);
  g.pointwise("dQ = identity(dQ_accum)", CUDNN_POINTWISE_IDENTITY, kF32, b->dq_accum, -1, -1, b->dq);

  b->plan = std::move(g).build(handle);
  b->dq_accum_bytes = static_cast<size_t>(B * Hq * T * Dk) * sizeof(float);
  b->softmax_sum_bytes = static_cast<size_t>(B * Hq * T) * sizeof(float);
  b->zero_dq_accum = runtime < 90600;  // older engines expect a zeroed accumulator (newer ones zero it)
  if (padding) {
    const std::vector<int32_t> lens(static_cast<size_t>(2 * B), static_cast<int32_t>(T));
    PRIMUS_CUDA_CHECK(cudaMalloc(&b->seq_lens.p, lens.size() * sizeof(int32_t)));
    PRIMUS_CUDA_CHECK(cudaMemcpy(b->seq_lens.p, lens.data(), lens.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  return b;
}

// Shapes cuDNN's fused SDPA engines do not take, refused without building a graph.
std::string precheck(const CudnnAttentionShape& s) {
  if (s.dtype != DType::BF16 && s.dtype != DType::F16)
    return fmt::format("the cuDNN SDPA path takes bf16/fp16 inputs, got {}", dtype_name(s.dtype));
  if (s.B < 1 || s.T < 1 || s.Hq < 1 || s.Hkv < 1) return "empty attention problem";
  if (s.Hq % s.Hkv != 0) return fmt::format("Hq={} is not a multiple of Hkv={}", s.Hq, s.Hkv);
  if (s.Dqk % 8 != 0 || s.Dv % 8 != 0 || s.Dqk > 256 || s.Dv > 256)
    return fmt::format("head dims {}/{}: cuDNN SDPA needs multiples of 8 up to 256", s.Dqk, s.Dv);
  return "";
}

}  // namespace

struct CudnnAttention::Impl {
  struct Entry {
    std::string error;  // "" when the plan below is usable
    std::unique_ptr<ForwardGraph> fwd;
    std::unique_ptr<BackwardGraph> bwd;
    bool warned = false;
  };

  int device;
  cudaStream_t stream;
  CudnnAttentionOptions options;
  cudnnHandle_t handle = nullptr;
  bool handle_tried = false;
  std::string handle_error;
  std::map<std::pair<CudnnPass, CudnnAttentionShape>, Entry> cache;

  Impl(int d, cudaStream_t s, CudnnAttentionOptions o) : device(d), stream(s), options(o) {}
  ~Impl() {
    cache.clear();  // plans reference the handle
    if (handle) cudnnDestroy(handle);
  }

  // The handle on first use; "" or why cuDNN cannot be used at all.
  const std::string& ensure_handle() {
    if (handle || handle_tried) return handle_error;
    handle_tried = true;
    try {
      const size_t v = cudnnGetVersion();
      PRIMUS_CHECK(v / 10000 == 9, "{}: the cuDNN path needs cuDNN 9.x", cudnn::version_string());
      PRIMUS_CUDA_CHECK(cudaSetDevice(device));
      cudnnHandle_t h = nullptr;
      cudnn::check(cudnnCreate(&h), "cudnnCreate");
      handle = h;
      cudnn::check(cudnnSetStream(handle, stream), "cudnnSetStream(backend stream)");
    } catch (const Error& e) {
      if (handle) cudnnDestroy(handle);
      handle = nullptr;
      handle_error = fmt::format("cuDNN could not be initialised: {}", e.what());
    }
    return handle_error;
  }

  Entry& entry(CudnnPass pass, const CudnnAttentionShape& s) {
    auto [it, inserted] = cache.try_emplace({pass, s});
    Entry& e = it->second;
    if (!inserted) return e;
    e.error = precheck(s);
    if (e.error.empty()) e.error = ensure_handle();
    if (!e.error.empty()) return e;
    try {
      if (pass == CudnnPass::Forward) e.fwd = build_forward(handle, s, options);
      else e.bwd = build_backward(handle, s, options);
    } catch (const Error& err) {
      e.error = err.what();
    }
    return e;
  }

  Entry& ready_entry(CudnnPass pass, const CudnnAttentionShape& s) {
    Entry& e = entry(pass, s);
    PRIMUS_CHECK(e.error.empty(), "cuDNN attention {} {} was not prepared: {}", pass_name(pass), s.describe(), e.error);
    return e;
  }
};

CudnnAttention::CudnnAttention(int device, cudaStream_t stream, CudnnAttentionOptions options)
    : impl_(std::make_unique<Impl>(device, stream, options)) {}
CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::compiled_in() { return true; }

const std::string& CudnnAttention::prepare(CudnnPass pass, const CudnnAttentionShape& s) {
  return impl_->entry(pass, s).error;
}

bool CudnnAttention::ready(CudnnPass pass, const CudnnAttentionShape& s, bool strict, const char* fallback) {
  Impl::Entry& e = impl_->entry(pass, s);
  if (e.error.empty()) return true;
  if (strict)
    fail("attention {} {}: cuDNN-only mode (AttentionKernel::Cudnn, attention_backend: fused) but cuDNN "
         "cannot run it: {}",
         pass_name(pass), s.describe(), e.error);
  if (!e.warned) {
    e.warned = true;
    fmt::print(stderr,
               "primus: warning: attention {} {}: cuDNN SDPA unavailable, using the {} kernel for this shape "
               "(attention_backend: flash or unfused picks a kernel explicitly). Reason: {}\n",
               pass_name(pass), s.describe(), fallback, e.error);
  }
  return false;
}

size_t CudnnAttention::workspace_bytes(CudnnPass pass, const CudnnAttentionShape& s) {
  Impl::Entry& e = impl_->ready_entry(pass, s);
  if (pass == CudnnPass::Forward) return static_cast<size_t>(e.fwd->plan.workspace_bytes);
  const BackwardGraph& b = *e.bwd;
  return align_up(static_cast<size_t>(b.plan.workspace_bytes)) + align_up(b.dq_accum_bytes) +
         align_up(b.softmax_sum_bytes);
}

std::string CudnnAttention::describe(CudnnPass pass, const CudnnAttentionShape& s) {
  Impl::Entry& e = impl_->entry(pass, s);
  if (!e.error.empty()) return "unavailable: " + e.error;
  return pass == CudnnPass::Forward ? e.fwd->plan.engine : e.bwd->plan.engine;
}

void CudnnAttention::forward(const CudnnAttentionShape& s, const CudnnAttentionForwardArgs& a, void* workspace,
                             size_t bytes) {
  const ForwardGraph& f = *impl_->ready_entry(CudnnPass::Forward, s).fwd;
  PRIMUS_CHECK(bytes >= static_cast<size_t>(f.plan.workspace_bytes),
               "cuDNN attention forward {}: workspace of {} bytes, the plan needs {}", s.describe(), bytes,
               f.plan.workspace_bytes);
  float scale = a.scale, neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<std::pair<int64_t, void*>> bind = {
      {f.q, const_cast<void*>(a.q)}, {f.k, const_cast<void*>(a.k)}, {f.v, const_cast<void*>(a.v)},
      {f.o, a.out},                  {f.stats, a.lse},              {f.scale, &scale}};
  if (f.neg_inf >= 0) bind.emplace_back(f.neg_inf, &neg_inf);
  cudnn::execute(impl_->handle, f.plan, bind, f.plan.workspace_bytes > 0 ? workspace : nullptr,
                 "sdpa forward " + s.describe());
}

void CudnnAttention::backward(const CudnnAttentionShape& s, const CudnnAttentionBackwardArgs& a, void* workspace,
                              size_t bytes) {
  const BackwardGraph& b = *impl_->ready_entry(CudnnPass::Backward, s).bwd;
  const size_t need = workspace_bytes(CudnnPass::Backward, s);
  PRIMUS_CHECK(bytes >= need && workspace != nullptr,
               "cuDNN attention backward {}: workspace of {} bytes, it needs {}", s.describe(), bytes, need);
  // Workspace layout: [plan workspace | dQ_accum fp32 (B,Hq,T,Dqk) | softmax_sum fp32 (B,Hq,T)].
  char* base = static_cast<char*>(workspace);
  void* dq_accum = base + align_up(static_cast<size_t>(b.plan.workspace_bytes));
  void* softmax_sum = static_cast<char*>(dq_accum) + align_up(b.dq_accum_bytes);
  if (b.zero_dq_accum) PRIMUS_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, b.dq_accum_bytes, impl_->stream));
  float scale = a.scale, one = 1.f, neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<std::pair<int64_t, void*>> bind = {
      {b.q, const_cast<void*>(a.q)},       {b.k, const_cast<void*>(a.k)},     {b.v, const_cast<void*>(a.v)},
      {b.o, const_cast<void*>(a.out)},     {b.dout, const_cast<void*>(a.dout)}, {b.stats, const_cast<float*>(a.lse)},
      {b.dq, a.dq},                        {b.dk, a.dk},                      {b.dv, a.dv},
      {b.scale, &scale},                   {b.one, &one},                     {b.dq_accum, dq_accum},
      {b.softmax_sum, softmax_sum}};
  if (b.neg_inf >= 0) bind.emplace_back(b.neg_inf, &neg_inf);
  if (b.seq_q >= 0) {
    bind.emplace_back(b.seq_q, b.seq_lens.p);
    bind.emplace_back(b.seq_kv, static_cast<int32_t*>(b.seq_lens.p) + s.B);
  }
  cudnn::execute(impl_->handle, b.plan, bind, base, "sdpa backward " + s.describe());
}

#endif  // PRIMUS_WITH_CUDNN

}  // namespace primus::cuda
