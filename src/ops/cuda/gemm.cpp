// cuBLASLt GEMM engine. Row-major out (M,N) = op(a) @ op(b) is computed as the column-major
// product out^T (N,M) = op(b)^T @ op(a)^T, i.e. cuBLASLt's A operand is our b and its B is our a:
//   A = b: transa = tb; stored (N,K) ld N when !tb, (K,N) ld K when tb   [col-major rows, cols]
//   B = a: transb = ta; stored (K,M) ld K when !ta, (M,K) ld M when ta
//   C = D = out: (N,M) ld N
// Each distinct GemmKey gets a plan (descriptors + algorithm) built once; the steady state is
// one cublasLtMatmul call with a preallocated workspace.
#include "ops/cuda/gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include <fmt/format.h>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/gemm_tuning.h"
#include "ops/cuda/timing.h"

namespace primus::cuda {

std::string GemmKey::str() const {
  return fmt::format("m={} n={} k={} ta={} tb={} {}->{} acc={} align={}", m, n, k, ta ? 1 : 0, tb ? 1 : 0,
                     dtype_name(in_dtype), dtype_name(out_dtype), accumulate ? 1 : 0, align);
}

namespace {

struct KeyHash {
  size_t operator()(const GemmKey& k) const {
    size_t h = std::hash<int64_t>()(k.m);
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(std::hash<int64_t>()(k.n));
    mix(std::hash<int64_t>()(k.k));
    mix((k.ta ? 1u : 0u) | (k.tb ? 2u : 0u) | (k.accumulate ? 4u : 0u));
    mix(static_cast<size_t>(k.in_dtype) * 31 + static_cast<size_t>(k.out_dtype));
    mix(static_cast<size_t>(k.align));
    return h;
  }
};

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    case DType::F32: return CUDA_R_32F;
    case DType::F8E4M3: return CUDA_R_8F_E4M3;
    case DType::F8E5M2: return CUDA_R_8F_E5M2;
    default: fail("GEMM: dtype {} is not supported (bf16, fp16, fp32; fp8 in matmul_fp8)", dtype_name(t));
  }
}

int pointer_align(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 1;
  while (a < 256 && (v & static_cast<uintptr_t>(a)) == 0) a <<= 1;
  return a;
}

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's recommendation for Hopper

int env_stage() {
  const char* names[] = {"PRIMUS_GEMM_TUNING_STAGE", "PRIMUS_HIPBLASLT_TUNING_STAGE"};
  for (const char* name : names) {
    const char* v = std::getenv(name);
    if (!v || !*v) continue;
    const std::string s(v);
    if (s == "0" || s == "1" || s == "2" || s == "3") return s[0] - '0';
    fail("{}={}: expected 0 (off), 1 (log shapes), 2 (tune) or 3 (use the tuned table)", name, s);
  }
  return 0;
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A (= our b), B (= our a), C/D
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool has_algo = false;
  bool family_member = false;  // its algorithm was its shape family's (plan_for): evictable
  std::string source;  // "heuristic", "table", "tuned", "heuristic (same family)"
};

}  // namespace

GemmTuningConfig GemmTuningConfig::from_env() {
  GemmTuningConfig c;
  c.stage = static_cast<TuningStage>(env_stage());
  if (const char* f = std::getenv("PRIMUS_GEMM_TUNING_FILE"); f && *f) c.shapes_file = f;
  if (const char* f = std::getenv("PRIMUS_GEMM_TUNING_RESULT"); f && *f) c.table_file = f;
  return c;
}

struct GemmEngine::Impl {
  int device = 0;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  // Side lanes (fork_lanes): stream, workspace and the event each one's work ends with; lane 0 is
  // the engine's own stream and workspace.
  struct Lane {
    cudaStream_t stream = nullptr;
    void* workspace = nullptr;
    cudaEvent_t done = nullptr;
  };
  std::vector<Lane> lanes;
  cudaEvent_t fork = nullptr;
  int forked = 0;  // lanes of the open fork; 0: none open
  std::unordered_map<GemmKey, Plan, KeyHash> plans;
  std::unordered_map<GemmKey, cublasLtMatmulAlgo_t, KeyHash> family_algo;  // see plan_for
  // Plans reusing a family's algorithm are dropped when the cache reaches this size (shapes
  // that vary step to step would grow it without bound); the others are kept.
  static constexpr size_t kMaxPlans = 8192;
  std::vector<GemmKey> order;  // keys in first-seen order (a family's first member only)
  std::unordered_map<GemmKey, GemmCandidate, KeyHash> table;  // stage 3 / set_algo overrides
  TuningTable tuned;  // stage 2 results of this process, rewritten after each new shape
  std::string device_name;
  // FP8 plans (matmul_fp8), keyed by shape, operand and output dtypes, beta != 0, c, fast_accum.
  struct Fp8Key {
    int64_t m, n, k;
    DType p, q, out;
    bool accumulate, has_c, fast_accum;
    int align;  // the smallest alignment of the matrix pointers (bytes, <= 256)
    bool operator==(const Fp8Key&) const = default;
  };
  struct Fp8KeyHash {
    size_t operator()(const Fp8Key& k) const {
      size_t h = std::hash<int64_t>()(k.m) * 1000003u ^ std::hash<int64_t>()(k.n) * 10007u ^ std::hash<int64_t>()(k.k);
      return h ^ (static_cast<size_t>(k.p) << 1) ^ (static_cast<size_t>(k.q) << 5) ^ (static_cast<size_t>(k.out) << 9) ^
             (k.accumulate ? 1u << 13 : 0u) ^ (k.has_c ? 1u << 14 : 0u) ^ (k.fast_accum ? 1u << 15 : 0u) ^
             (static_cast<size_t>(k.align) << 16);
    }
  };
  std::unordered_map<Fp8Key, Plan, Fp8KeyHash> fp8_plans;

  // Sets the FP8 operands' scale pointers (cuBLASLt's A = q, B = p) on a plan's descriptor.
  static void set_fp8_scales(Plan& p, const float* p_scale_inv, const float* q_scale_inv) {
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &q_scale_inv,
                                                       sizeof(q_scale_inv)));
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p_scale_inv,
                                                       sizeof(p_scale_inv)));
  }

  Plan& fp8_plan_for(const Fp8Key& key, const float* p_scale_inv, const float* q_scale_inv) {
    auto it = fp8_plans.find(key);
    if (it != fp8_plans.end()) return it->second;
    Plan p;
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = CUBLAS_OP_T, opb = CUBLAS_OP_N;
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
    const int8_t fast = key.fast_accum ? 1 : 0;
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
    const uint64_t M = static_cast<uint64_t>(key.m), N = static_cast<uint64_t>(key.n), K = static_cast<uint64_t>(key.k);
    // cuBLASLt's A = q stored (N,K) row-major = column-major (K,N), transposed; B = p, (K,M) column-major.
    PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(key.q), K, N, static_cast<int64_t>(K)));
    PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(key.p), K, M, static_cast<int64_t>(K)));
    PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, cuda_type(key.out), N, M, static_cast<int64_t>(N)));
    // An algorithm chosen without the scale pointers is not supported once they are set.
    set_fp8_scales(p, p_scale_inv, q_scale_inv);
    const std::vector<cublasLtMatmulHeuristicResult_t> results = heuristics(p, key.align, 1);
    PRIMUS_CHECK(!results.empty(),
                 "cuBLASLt has no FP8 algorithm for m={} n={} k={} {} x {} -> {}; FP8 GEMMs need compute capability "
                 "8.9 or newer and dimensions that are multiples of 16",
                 key.m, key.n, key.k, dtype_name(key.p), dtype_name(key.q), dtype_name(key.out));
    const cublasLtMatmulHeuristicResult_t& result = results[0];
    p.algo = result.algo;
    p.workspace = result.workspaceSize;
    p.has_algo = true;
    p.source = "heuristic (fp8)";
    return fp8_plans.emplace(key, p).first->second;
  }

  Plan& plan_for(const GemmKey& key) {
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan p;
    const cudaDataType_t in = cuda_type(key.in_dtype), out = cuda_type(key.out_dtype);
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opb = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
    const uint64_t M = static_cast<uint64_t>(key.m), N = static_cast<uint64_t>(key.n), K = static_cast<uint64_t>(key.k);
    if (key.tb) {
      PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, in, K, N, static_cast<int64_t>(K)));
    } else {
      PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, in, N, K, static_cast<int64_t>(N)));
    }
    if (key.ta) {
      PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, in, M, K, static_cast<int64_t>(M)));
    } else {
      PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, in, K, M, static_cast<int64_t>(K)));
    }
    PRIMUS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, out, N, M, static_cast<int64_t>(N)));
    auto t = table.find(key);
    if (t != table.end()) {
      cublasLtMatmulAlgo_t algo;
      std::memcpy(&algo, t->second.algo, sizeof(algo));
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(handle, p.desc, p.a, p.b, p.c, p.c, &algo, &check) == CUBLAS_STATUS_SUCCESS &&
          check.workspaceSize <= kWorkspaceBytes) {
        p.algo = algo;
        p.workspace = check.workspaceSize;
        p.has_algo = true;
        p.source = "table";
      } else {
        fmt::print(stderr, "primus: GEMM tuning table entry for {} is not valid on this GPU/cuBLASLt; using the "
                   "heuristic instead\n", key.str());
      }
    }
    // Shapes that change every step (an MoE expert's row count: M of its forward and dgrad, K
    // of its wgrad) would ask cuBLASLt's heuristic, tens of microseconds of host time, for
    // every expert of every layer on every step. A key's family (M and K rounded up to 256)
    // keeps the first heuristic answer; a later member reuses it after cublasLtMatmulAlgoCheck
    // accepts it for the exact shape.
    GemmKey family = key;
    family.m = (key.m + 255) / 256 * 256;
    family.k = (key.k + 255) / 256 * 256;
    if (!p.has_algo) {
      if (auto f = family_algo.find(family); f != family_algo.end()) {
        cublasLtMatmulHeuristicResult_t check{};
        if (cublasLtMatmulAlgoCheck(handle, p.desc, p.a, p.b, p.c, p.c, &f->second, &check) == CUBLAS_STATUS_SUCCESS &&
            check.workspaceSize <= kWorkspaceBytes) {
          p.algo = f->second;
          p.workspace = check.workspaceSize;
          p.has_algo = true;
          p.source = "heuristic (same family)";
          p.family_member = true;
        }
      }
    }
    if (!p.has_algo) {
      auto results = heuristics(p, key.align, 1);
      PRIMUS_CHECK(!results.empty(), "cuBLASLt has no algorithm for GEMM {}", key.str());
      p.algo = results[0].algo;
      p.workspace = results[0].workspaceSize;
      p.has_algo = true;
      p.source = "heuristic";
      family_algo.emplace(family, p.algo);
    }
    if (plans.size() >= kMaxPlans) evict_family_plans();
    if (!p.family_member) order.push_back(key);  // bounded like the families
    return plans.emplace(key, p).first->second;
  }

  void evict_family_plans() {
    for (auto it = plans.begin(); it != plans.end();) {
      if (!it->second.family_member) {
        ++it;
        continue;
      }
      destroy(it->second);
      it = plans.erase(it);
    }
  }

  static void destroy(Plan& p) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }

  // cuBLASLt's algorithms for a plan (its descriptor as set now), for pointers aligned to `align` bytes.
  std::vector<cublasLtMatmulHeuristicResult_t> heuristics(const Plan& p, int align, int count) {
    cublasLtMatmulPreference_t pref = nullptr;
    PRIMUS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    PRIMUS_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t min_align = static_cast<uint32_t>(align);
    for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      PRIMUS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &min_align, sizeof(min_align)));
    }
    std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
    int returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, count,
                                                             results.data(), &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS) returned = 0;
    results.resize(static_cast<size_t>(returned));
    results.erase(std::remove_if(results.begin(), results.end(),
                                 [](const auto& r) { return r.state != CUBLAS_STATUS_SUCCESS; }),
                  results.end());
    return results;
  }

  // D = out; C = c, or out itself when c is null (C and D share a layout and dtype).
  cublasStatus_t run(const Plan& p, const cublasLtMatmulAlgo_t& algo, void* out, const void* a, const void* b,
                     float alpha, float beta, cudaStream_t stream, const void* c = nullptr, void* ws = nullptr) {
    return cublasLtMatmul(handle, p.desc, &alpha, b, p.a, a, p.b, &beta, c != nullptr ? c : out, p.c, out, p.c, &algo,
                          ws != nullptr ? ws : workspace, kWorkspaceBytes, stream);
  }
};

namespace {

void fill_candidate_info(GemmCandidate& c, const cublasLtMatmulAlgo_t& algo) {
  std::memcpy(c.algo, &algo, sizeof(algo));
  size_t written = 0;
  int v = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &v, sizeof(v), &written) == 0) c.algo_id = v;
  uint32_t u = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &u, sizeof(u), &written) == 0)
    c.tile = static_cast<int>(u);
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &u, sizeof(u), &written) == 0)
    c.stages = static_cast<int>(u);
  int32_t s = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof(s), &written) == 0)
    c.splitk = s;
}

// Device buffers for timing one key: `sets` copies of (a, b, out), random in [-1, 1).
struct TimingBuffers {
  std::vector<void*> a, b, out;
  int sets = 1;
  TimingBuffers(const GemmKey& key, cudaStream_t stream) {
    const size_t in_sz = dtype_size(key.in_dtype), out_sz = dtype_size(key.out_dtype);
    const size_t a_bytes = static_cast<size_t>(key.m * key.k) * in_sz;
    const size_t b_bytes = static_cast<size_t>(key.k * key.n) * in_sz;
    const size_t o_bytes = static_cast<size_t>(key.m * key.n) * out_sz;
    const size_t per_set = a_bytes + b_bytes + o_bytes;
    constexpr size_t kRotateBytes = size_t{256} << 20;  // several times any L2 (50-60 MB on Hopper)
    sets = static_cast<int>(std::clamp<size_t>((kRotateBytes + per_set - 1) / per_set, 1, 16));
    for (int s = 0; s < sets; ++s) {
      void *pa, *pb, *po;
      PRIMUS_CUDA_CHECK(cudaMalloc(&pa, a_bytes));
      PRIMUS_CUDA_CHECK(cudaMalloc(&pb, b_bytes));
      PRIMUS_CUDA_CHECK(cudaMalloc(&po, o_bytes));
      launch_fill_uniform(pa, key.in_dtype, key.m * key.k, 11 + s, -1.f, 1.f, stream);
      launch_fill_uniform(pb, key.in_dtype, key.k * key.n, 23 + s, -1.f, 1.f, stream);
      launch_fill_uniform(po, key.out_dtype, key.m * key.n, 37 + s, -1.f, 1.f, stream);
      a.push_back(pa);
      b.push_back(pb);
      out.push_back(po);
    }
  }
  ~TimingBuffers() {
    for (auto* p : a) cudaFree(p);
    for (auto* p : b) cudaFree(p);
    for (auto* p : out) cudaFree(p);
  }
};

}  // namespace

GemmEngine::GemmEngine(int device, cudaStream_t stream, GemmTuningConfig config)
    : impl_(std::make_unique<Impl>()), config_(std::move(config)), stream_(stream) {
  impl_->device = device;
  PRIMUS_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  PRIMUS_CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
  cudaDeviceProp prop{};
  PRIMUS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  impl_->device_name = prop.name;
  impl_->tuned.device = prop.name;
  impl_->tuned.cublaslt_version = cublaslt_version();
  if (config_.stage == TuningStage::UseTable) {
    const int n = load_table(config_.table_file);
    fmt::print(stderr, "primus: GEMM tuning stage 3: {} tuned shapes loaded from {}\n", n, config_.table_file);
  }
  if (config_.stage == TuningStage::Tune && std::filesystem::exists(config_.table_file)) {
    // Continue an existing table: its shapes are not re-tuned, new ones are appended.
    TuningTable t = read_tuning_table(config_.table_file);
    if (t.cublaslt_version == cublaslt_version()) {
      for (const auto& e : t.entries) impl_->table[e.key] = e.chosen;
      impl_->tuned.entries = std::move(t.entries);
    } else {
      fmt::print(stderr, "primus: GEMM tuning table {} is from cuBLASLt {}; re-tuning for {}\n", config_.table_file,
                 t.cublaslt_version, cublaslt_version());
    }
  }
}

GemmEngine::~GemmEngine() {
  for (auto& [key, p] : impl_->plans) Impl::destroy(p);
  for (auto& [key, p] : impl_->fp8_plans) Impl::destroy(p);
  cudaFree(impl_->workspace);
  for (const Impl::Lane& l : impl_->lanes) {
    cudaFree(l.workspace);
    cudaEventDestroy(l.done);
    cudaStreamDestroy(l.stream);
  }
  if (impl_->fork != nullptr) cudaEventDestroy(impl_->fork);
  cublasLtDestroy(impl_->handle);
}

namespace {

// The key of one matmul call: its shape, transposes, dtypes, whether it reads out (beta), and
// the smallest alignment of its pointers.
GemmKey key_of(const void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int64_t M, int64_t N,
               int64_t K, bool ta, bool tb, float beta, const void* c) {
  GemmKey key;
  key.m = M;
  key.n = N;
  key.k = K;
  key.ta = ta;
  key.tb = tb;
  key.in_dtype = in_dtype;
  key.out_dtype = out_dtype;
  key.accumulate = beta != 0.f;
  key.align = std::min({pointer_align(a), pointer_align(b), pointer_align(out)});
  if (c != nullptr) key.align = std::min(key.align, pointer_align(c));
  return key;
}

}  // namespace

size_t GemmEngine::cublaslt_version() { return cublasLtGetVersion(); }

std::vector<GemmKey> GemmEngine::seen_shapes() const { return impl_->order; }

void GemmEngine::matmul(void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int64_t M,
                        int64_t N, int64_t K, bool ta, bool tb, float alpha, float beta, const void* c) {
  const GemmKey key = key_of(out, out_dtype, a, b, in_dtype, M, N, K, ta, tb, beta, c);
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    if (config_.stage == TuningStage::LogShapes) append_shape(config_.shapes_file, key);
    if (config_.stage == TuningStage::Tune && impl_->table.find(key) == impl_->table.end()) {
      // Tune on first sight (the run pays it once per shape), record it and keep the table current.
      GemmTuneResult r = tune(key, config_.max_candidates, config_.warmup, config_.iters);
      if (r.best >= 0) {
        set_algo(key, r.candidates[static_cast<size_t>(r.best)].algo);
        TuningTableEntry e{key, r.candidates[static_cast<size_t>(r.best)], r.heuristic_us(),
                           static_cast<int>(r.candidates.size())};
        impl_->tuned.entries.push_back(e);
        write_tuning_table(config_.table_file, impl_->tuned);
      }
    }
  }
  Plan& p = impl_->plan_for(key);
  const cublasStatus_t st = impl_->run(p, p.algo, out, a, b, alpha, beta, stream_, c);
  PRIMUS_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasLtMatmul failed with status {} for GEMM {} (algorithm from {})",
               static_cast<int>(st), key.str(), p.source);
}

void GemmEngine::matmul_fp8(void* out, DType out_dtype, const void* p, DType p_dtype, const void* q, DType q_dtype,
                            int64_t M, int64_t N, int64_t K, const float* p_scale_inv, const float* q_scale_inv,
                            float beta, const void* c, bool fast_accum) {
  int align = std::min({pointer_align(p), pointer_align(q), pointer_align(out)});
  if (c != nullptr) align = std::min(align, pointer_align(c));
  PRIMUS_CHECK(align >= 16 && pointer_align(p_scale_inv) >= 16 && pointer_align(q_scale_inv) >= 16,
               "matmul_fp8: FP8 GEMMs need 16-byte aligned matrices and scale pointers (m={} n={} k={})", M, N, K);
  const Impl::Fp8Key key{M, N, K, p_dtype, q_dtype, out_dtype, beta != 0.f, c != nullptr, fast_accum, align};
  Plan& plan = impl_->fp8_plan_for(key, p_scale_inv, q_scale_inv);
  Impl::set_fp8_scales(plan, p_scale_inv, q_scale_inv);
  // cuBLASLt's A is q and its B is p: Impl::run's (b, a).
  cublasStatus_t st = impl_->run(plan, plan.algo, out, p, q, 1.f, beta, stream_, c);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    // The first heuristic answer refused the call: take the first candidate that runs and keep it.
    for (const auto& r : impl_->heuristics(plan, align, 16)) {
      st = impl_->run(plan, r.algo, out, p, q, 1.f, beta, stream_, c);
      if (st == CUBLAS_STATUS_SUCCESS) {
        plan.algo = r.algo;
        plan.workspace = r.workspaceSize;
        plan.source = "heuristic (fp8, first that runs)";
        break;
      }
    }
  }
  PRIMUS_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasLtMatmul (fp8) failed with status {} for m={} n={} k={} {} x {} -> {}",
               static_cast<int>(st), M, N, K, dtype_name(p_dtype), dtype_name(q_dtype), dtype_name(out_dtype));
}

void GemmEngine::fork_lanes(int n) {
  PRIMUS_CHECK(impl_->forked == 0, "GemmEngine::fork_lanes: the previous fork was not joined");
  PRIMUS_CHECK(n >= 1 && n <= kMaxLanes, "GemmEngine::fork_lanes: {} lanes (1..{})", n, kMaxLanes);
  if (impl_->fork == nullptr) PRIMUS_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->fork, cudaEventDisableTiming));
  while (static_cast<int>(impl_->lanes.size()) < n - 1) {
    Impl::Lane l;
    int priority = 0;
    PRIMUS_CUDA_CHECK(cudaStreamGetPriority(stream_, &priority));
    PRIMUS_CUDA_CHECK(cudaStreamCreateWithPriority(&l.stream, cudaStreamNonBlocking, priority));
    PRIMUS_CUDA_CHECK(cudaMalloc(&l.workspace, kWorkspaceBytes));
    PRIMUS_CUDA_CHECK(cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming));
    impl_->lanes.push_back(l);
  }
  if (n > 1) {
    PRIMUS_CUDA_CHECK(cudaEventRecord(impl_->fork, stream_));
    for (int i = 0; i < n - 1; ++i) PRIMUS_CUDA_CHECK(cudaStreamWaitEvent(impl_->lanes[static_cast<size_t>(i)].stream, impl_->fork, 0));
  }
  impl_->forked = n;
}

void GemmEngine::matmul_on_lane(int lane, void* out, DType out_dtype, const void* a, const void* b, DType in_dtype,
                                int64_t M, int64_t N, int64_t K, bool ta, bool tb, float alpha, float beta) {
  PRIMUS_CHECK(lane >= 0 && lane < impl_->forked, "GemmEngine::matmul_on_lane: lane {} outside the open fork of {}",
               lane, impl_->forked);
  if (lane == 0) {
    matmul(out, out_dtype, a, b, in_dtype, M, N, K, ta, tb, alpha, beta);
    return;
  }
  // The shape goes through the engine's usual path (plan cache, tuning stages) on its stream
  // first only when it is new, so a lane never tunes (tuning times on the engine's stream).
  const GemmKey key = key_of(out, out_dtype, a, b, in_dtype, M, N, K, ta, tb, beta, nullptr);
  if (impl_->plans.find(key) == impl_->plans.end() && config_.stage != TuningStage::Off) {
    matmul(out, out_dtype, a, b, in_dtype, M, N, K, ta, tb, alpha, beta);  // logs / tunes it, on lane 0
    return;
  }
  const Impl::Lane& l = impl_->lanes[static_cast<size_t>(lane - 1)];
  Plan& p = impl_->plan_for(key);
  const cublasStatus_t st = impl_->run(p, p.algo, out, a, b, alpha, beta, l.stream, nullptr, l.workspace);
  PRIMUS_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasLtMatmul failed with status {} for GEMM {} on lane {} (algorithm "
               "from {})", static_cast<int>(st), key.str(), lane, p.source);
}

void GemmEngine::join_lanes() {
  PRIMUS_CHECK(impl_->forked > 0, "GemmEngine::join_lanes: no fork is open");
  for (int i = 0; i < impl_->forked - 1; ++i) {
    const Impl::Lane& l = impl_->lanes[static_cast<size_t>(i)];
    PRIMUS_CUDA_CHECK(cudaEventRecord(l.done, l.stream));
    PRIMUS_CUDA_CHECK(cudaStreamWaitEvent(stream_, l.done, 0));
  }
  impl_->forked = 0;
}

bool GemmEngine::set_algo(const GemmKey& key, const uint64_t (&algo)[8]) {
  GemmCandidate c;
  std::memcpy(c.algo, algo, sizeof(c.algo));
  impl_->table[key] = c;
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    Plan& p = impl_->plan_for(key);  // picks the table entry up (or warns and falls back)
    return p.source == "table";
  }
  Plan& p = it->second;
  cublasLtMatmulAlgo_t a;
  std::memcpy(&a, algo, sizeof(a));
  cublasLtMatmulHeuristicResult_t check{};
  if (cublasLtMatmulAlgoCheck(impl_->handle, p.desc, p.a, p.b, p.c, p.c, &a, &check) != CUBLAS_STATUS_SUCCESS ||
      check.workspaceSize > kWorkspaceBytes)
    return false;
  p.algo = a;
  p.workspace = check.workspaceSize;
  p.source = "tuned";
  return true;
}

int GemmEngine::load_table(const std::string& path) {
  const TuningTable t = read_tuning_table(path);
  PRIMUS_CHECK(t.cublaslt_version == 0 || t.cublaslt_version == cublaslt_version(),
               "GEMM tuning table '{}' was made with cuBLASLt {} but this process uses {}: its algorithms do "
               "not transfer; re-run stage 2 (`primus tune`) on this machine",
               path, t.cublaslt_version, cublaslt_version());
  if (!t.device.empty() && t.device != impl_->device_name)
    fmt::print(stderr, "primus: GEMM tuning table '{}' was tuned on '{}', this GPU is '{}'\n", path, t.device,
               impl_->device_name);
  int applied = 0;
  for (const auto& e : t.entries) {
    impl_->table[e.key] = e.chosen;
    ++applied;
  }
  return applied;
}

GemmTuneResult GemmEngine::tune(const GemmKey& key, int max_candidates, int warmup, int iters) {
  GemmTuneResult r;
  r.key = key;
  Plan& p = impl_->plan_for(key);
  const auto results = impl_->heuristics(p, key.align, std::max(1, max_candidates));
  if (results.empty()) return r;
  TimingBuffers buf(key, stream_);
  const float alpha = 1.f, beta = key.accumulate ? 1.f : 0.f;
  double best = 1e30;
  for (size_t i = 0; i < results.size(); ++i) {
    GemmCandidate c;
    c.index = static_cast<int>(i);
    c.workspace = results[i].workspaceSize;
    fill_candidate_info(c, results[i].algo);
    const auto& algo = results[i].algo;
    bool failed = false;
    auto body = [&](int it) {
      const int s = it % buf.sets;
      if (impl_->run(p, algo, buf.out[static_cast<size_t>(s)], buf.a[static_cast<size_t>(s)],
                     buf.b[static_cast<size_t>(s)], alpha, beta, stream_) != CUBLAS_STATUS_SUCCESS)
        failed = true;
    };
    // A short look first: a candidate 1.5x slower than the best after 3 timed runs is dropped.
    TimingStats quick = time_on_stream(stream_, warmup, 3, body);
    if (failed) {
      c.time_us = -2;
    } else if (i > 0 && quick.median_us > 1.5 * best) {
      c.time_us = -1;
    } else {
      TimingStats full = time_on_stream(stream_, 0, iters, body);
      c.time_us = failed ? -2 : full.median_us;
      if (c.time_us > 0 && c.time_us < best) {
        best = c.time_us;
        r.best = static_cast<int>(i);
      }
    }
    r.candidates.push_back(c);
  }
  PRIMUS_CUDA_CHECK(cudaGetLastError());
  return r;
}

double GemmEngine::time_current(const GemmKey& key, int warmup, int iters) {
  Plan& p = impl_->plan_for(key);
  TimingBuffers buf(key, stream_);
  const float alpha = 1.f, beta = key.accumulate ? 1.f : 0.f;
  TimingStats st = time_on_stream(stream_, warmup, iters, [&](int it) {
    const int s = it % buf.sets;
    PRIMUS_CHECK(impl_->run(p, p.algo, buf.out[static_cast<size_t>(s)], buf.a[static_cast<size_t>(s)],
                            buf.b[static_cast<size_t>(s)], alpha, beta, stream_) == CUBLAS_STATUS_SUCCESS,
                 "cublasLtMatmul failed for GEMM {}", key.str());
  });
  return st.median_us;
}

}  // namespace primus::cuda
