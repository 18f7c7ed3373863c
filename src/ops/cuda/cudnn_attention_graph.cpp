// The RAII layer over cuDNN's backend graph API (see cudnn_attention_graph.h).
#ifdef PRIMUS_WITH_CUDNN

#include "ops/cuda/cudnn_attention_graph.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <set>

#include "core/error.h"

namespace primus::cuda::cudnn {

namespace {

std::string version_of(size_t v) { return fmt::format("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100); }

std::string dims_string(const std::vector<int64_t>& v) { return fmt::format("[{}]", fmt::join(v, ",")); }

const char* dtype_string(cudnnDataType_t dt) {
  switch (dt) {
    case CUDNN_DATA_FLOAT: return "fp32";
    case CUDNN_DATA_HALF: return "fp16";
    case CUDNN_DATA_BFLOAT16: return "bf16";
    case CUDNN_DATA_INT32: return "int32";
    case CUDNN_DATA_BOOLEAN: return "bool";
    default: return "other";
  }
}

}  // namespace

std::string version_string() {
  return fmt::format("cuDNN {} (built against {})", version_of(cudnnGetVersion()), version_of(CUDNN_VERSION));
}

std::string last_error_string() {
  std::array<char, 4096> buf{};
  cudnnGetLastErrorString(buf.data(), buf.size());
  std::string s(buf.data());
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void throw_error(cudnnStatus_t status, const std::string& what) {
  const std::string detail = last_error_string();
  throw Error(fmt::format("cuDNN {} in {}{}{} [{}]", cudnnGetErrorString(status), what, detail.empty() ? "" : ": ",
                          detail, version_string()));
}

// ---- Descriptor --------------------------------------------------------------------------

Descriptor::Descriptor(cudnnBackendDescriptorType_t type, std::string label) : label_(std::move(label)) {
  check(cudnnBackendCreateDescriptor(type, &d_),
        fmt::format("cudnnBackendCreateDescriptor(type {}) for {}", static_cast<int>(type), label_));
}

Descriptor::~Descriptor() {
  if (d_) cudnnBackendDestroyDescriptor(d_);
}

Descriptor& Descriptor::operator=(Descriptor&& o) noexcept {
  if (this != &o) {
    if (d_) cudnnBackendDestroyDescriptor(d_);
    d_ = std::exchange(o.d_, nullptr);
    label_ = std::move(o.label_);
  }
  return *this;
}

Descriptor& Descriptor::set(Attr a, cudnnBackendAttributeType_t type, int64_t count, const void* values) {
  check(cudnnBackendSetAttribute(d_, a.id, type, count, values),
        fmt::format("cudnnBackendSetAttribute({}, {} element(s)) on {}", a.name, count, label_));
  return *this;
}

Descriptor& Descriptor::set_desc(Attr a, const Descriptor& d) {
  cudnnBackendDescriptor_t raw = d.get();
  check(cudnnBackendSetAttribute(d_, a.id, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw),
        fmt::format("cudnnBackendSetAttribute({} = {}) on {}", a.name, d.label(), label_));
  return *this;
}

void Descriptor::finalize() { check(cudnnBackendFinalize(d_), fmt::format("cudnnBackendFinalize of {}", label_)); }

cudnnStatus_t Descriptor::try_finalize(std::string* error) {
  const cudnnStatus_t st = cudnnBackendFinalize(d_);
  if (st != CUDNN_STATUS_SUCCESS && error) {
    const std::string detail = last_error_string();
    *error = fmt::format("{}{}{}", cudnnGetErrorString(st), detail.empty() ? "" : ": ", detail);
  }
  return st;
}

int64_t Descriptor::get_int64(Attr a) const {
  int64_t v = 0, n = 0;
  check(cudnnBackendGetAttribute(d_, a.id, CUDNN_TYPE_INT64, 1, &n, &v),
        fmt::format("cudnnBackendGetAttribute({}) on {}", a.name, label_));
  return v;
}

// ---- GraphBuilder ------------------------------------------------------------------------

int64_t GraphBuilder::tensor(const std::string& name, std::vector<int64_t> dims, std::vector<int64_t> strides,
                             cudnnDataType_t dt, TensorKind kind) {
  PRIMUS_CHECK(dims.size() == strides.size(), "cuDNN graph '{}': tensor '{}' has dims {} but strides {}", graph_name_,
               name, dims_string(dims), dims_string(strides));
  const int64_t uid = next_uid_++;
  Descriptor d(CUDNN_BACKEND_TENSOR_DESCRIPTOR,
               fmt::format("tensor '{}' (uid {}, {} dims {} strides {}) of graph '{}'", name, uid, dtype_string(dt),
                           dims_string(dims), dims_string(strides), graph_name_));
  d.set_data_type(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), dt);
  d.set_int64s(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), dims);
  d.set_int64s(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_STRIDES), strides);
  d.set_int64(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), uid);
  d.set_int64(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), 16);
  d.set_bool(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_IS_VIRTUAL), kind == TensorKind::Virtual);
  if (kind == TensorKind::HostScalar) d.set_bool(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_TENSOR_IS_BY_VALUE), true);
  d.finalize();
  tensors_.emplace(uid, std::move(d));
  info_.emplace(uid, TensorInfo{name, std::move(dims), std::move(strides), dt, kind});
  return uid;
}

int64_t GraphBuilder::virtual_like(const std::string& name, int64_t like, cudnnDataType_t dt) {
  const TensorInfo& i = info(like);
  return tensor(name, i.dims, i.strides, dt, TensorKind::Virtual);
}

const TensorInfo& GraphBuilder::info(int64_t uid) const {
  const auto it = info_.find(uid);
  PRIMUS_CHECK(it != info_.end(), "cuDNN graph '{}': no tensor with uid {}", graph_name_, uid);
  return it->second;
}

const Descriptor& GraphBuilder::desc(int64_t uid) const {
  const auto it = tensors_.find(uid);
  PRIMUS_CHECK(it != tensors_.end(), "cuDNN graph '{}': no tensor with uid {}", graph_name_, uid);
  return it->second;
}

void GraphBuilder::pointwise(const std::string& name, cudnnPointwiseMode_t mode, cudnnDataType_t math, int64_t x,
                             int64_t b, int64_t t, int64_t y, int64_t axis) {
  const std::string label = fmt::format("pointwise '{}' (mode {}) of graph '{}'", name, static_cast<int>(mode), graph_name_);
  Descriptor pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, label + " [pointwise descriptor]");
  pw.set_enum(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_POINTWISE_MODE), CUDNN_TYPE_POINTWISE_MODE, mode);
  pw.set_data_type(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_POINTWISE_MATH_PREC), math);
  if (axis >= 0) pw.set_int64(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_POINTWISE_AXIS), axis);
  pw.finalize();

  Descriptor op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, label);
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), pw);
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), desc(x));
  if (b >= 0) op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), desc(b));
  if (t >= 0) op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_TDESC), desc(t));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), desc(y));
  op.finalize();
  helpers_.push_back(std::move(pw));
  ops_.push_back(std::move(op));
}

void GraphBuilder::matmul(const std::string& name, int64_t a, int64_t b, int64_t c, int64_t m_override,
                          int64_t n_override, int64_t k_override) {
  const std::string label = fmt::format("matmul '{}' of graph '{}'", name, graph_name_);
  Descriptor mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR, label + " [matmul descriptor]");
  mm.set_data_type(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_MATMUL_COMP_TYPE), CUDNN_DATA_FLOAT);
  mm.finalize();

  Descriptor op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, label);
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_ADESC), desc(a));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_BDESC), desc(b));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_CDESC), desc(c));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_DESC), mm);
  if (m_override >= 0)
    op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC), desc(m_override));
  if (n_override >= 0)
    op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC), desc(n_override));
  if (k_override >= 0)
    op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC), desc(k_override));
  op.finalize();
  helpers_.push_back(std::move(mm));
  ops_.push_back(std::move(op));
}

void GraphBuilder::reduction(const std::string& name, cudnnReduceTensorOp_t rop, int64_t x, int64_t y) {
  const std::string label = fmt::format("reduction '{}' (op {}) of graph '{}'", name, static_cast<int>(rop), graph_name_);
  Descriptor red(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, label + " [reduction descriptor]");
  red.set_enum(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_REDUCTION_OPERATOR), CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, rop);
  red.set_data_type(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_REDUCTION_COMP_TYPE), CUDNN_DATA_FLOAT);
  red.finalize();

  Descriptor op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, label);
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_XDESC), desc(x));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_YDESC), desc(y));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_DESC), red);
  op.finalize();
  helpers_.push_back(std::move(red));
  ops_.push_back(std::move(op));
}

void GraphBuilder::reshape(const std::string& name, int64_t x, int64_t y) {
  Descriptor op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR,
                fmt::format("reshape '{}' of graph '{}'", name, graph_name_));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_XDESC), desc(x));
  op.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_YDESC), desc(y));
  op.finalize();
  ops_.push_back(std::move(op));
}

Plan GraphBuilder::build(cudnnHandle_t handle) && {
  Plan p;
  std::vector<cudnnBackendDescriptor_t> raw_ops;
  for (const Descriptor& d : ops_) raw_ops.push_back(d.get());
  p.graph = Descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, fmt::format("operation graph '{}' ({} operations)",
                                                                          graph_name_, raw_ops.size()));
  p.graph.set_handle(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), handle);
  p.graph.set_descs(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), raw_ops);
  p.graph.finalize();

  std::vector<std::string> refusals;
  for (const auto& [mode, mode_name] : {std::pair{CUDNN_HEUR_MODE_A, "A"}, std::pair{CUDNN_HEUR_MODE_FALLBACK, "FALLBACK"}}) {
    Descriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR,
                    fmt::format("engine heuristics (mode {}) for graph '{}'", mode_name, graph_name_));
    heur.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), p.graph);
    heur.set_enum(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, mode);
    std::string herr;
    if (heur.try_finalize(&herr) != CUDNN_STATUS_SUCCESS) {
      refusals.push_back(fmt::format("heuristics mode {}: finalize failed: {}", mode_name, herr));
      continue;
    }
    int64_t count = 0;
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                   nullptr),
          "cudnnBackendGetAttribute(CUDNN_ATTR_ENGINEHEUR_RESULTS, count) on " + heur.label());
    if (count == 0) {
      refusals.push_back(fmt::format("heuristics mode {}: no engine config for this graph", mode_name));
      continue;
    }
    std::vector<Descriptor> configs;
    std::vector<cudnnBackendDescriptor_t> raw_configs;
    for (int64_t i = 0; i < count; ++i) {
      configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
                           fmt::format("engine config {} of {} (heuristics mode {}) for graph '{}'", i, count,
                                       mode_name, graph_name_));
      raw_configs.push_back(configs.back().get());
    }
    int64_t got = 0;
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                   &got, raw_configs.data()),
          "cudnnBackendGetAttribute(CUDNN_ATTR_ENGINEHEUR_RESULTS) on " + heur.label());
    if (got <= 0) {
      refusals.push_back(fmt::format("heuristics mode {}: {} engine config(s) counted, none returned", mode_name, count));
      continue;
    }
    for (int64_t i = 0; i < std::min(got, count); ++i) {
      Descriptor plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
                      fmt::format("execution plan for graph '{}' ({})", graph_name_, configs[i].label()));
      plan.set_handle(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), handle);
      plan.set_desc(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), configs[i]);
      std::string perr;
      if (plan.try_finalize(&perr) != CUDNN_STATUS_SUCCESS) {
        refusals.push_back(fmt::format("mode {} candidate {}: {}", mode_name, i, perr));
        continue;
      }
      p.workspace_bytes = plan.get_int64(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE));
      // Best effort: the engine's global index, to name it in benchmarks and logs.
      std::string engine_id = "?";
      {
        cudnnBackendDescriptor_t engine = nullptr;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine) == CUDNN_STATUS_SUCCESS) {
          int64_t n = 0, index = -1;
          if (cudnnBackendGetAttribute(configs[i].get(), CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                       &n, &engine) == CUDNN_STATUS_SUCCESS &&
              cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index) ==
                  CUDNN_STATUS_SUCCESS)
            engine_id = std::to_string(index);
          cudnnBackendDestroyDescriptor(engine);
        }
      }
      p.engine = fmt::format("engine {} (candidate {} of {}, heuristics mode {})", engine_id, i, got, mode_name);
      p.engine_config = std::move(configs[i]);
      p.plan = std::move(plan);
      for (auto& [uid, d] : tensors_) p.parts.push_back(std::move(d));
      for (Descriptor& d : ops_) p.parts.push_back(std::move(d));
      for (Descriptor& d : helpers_) p.parts.push_back(std::move(d));
      p.tensors = std::move(info_);
      return p;
    }
  }
  fail("cuDNN: no engine can run graph '{}' ({}): {} [{}]", graph_name_, p.graph.label(), fmt::join(refusals, "; "),
       version_string());
}

// ---- execution ---------------------------------------------------------------------------

void execute(cudnnHandle_t handle, const Plan& plan, const std::vector<std::pair<int64_t, void*>>& bindings,
             void* workspace, const std::string& what) {
  std::vector<int64_t> uids;
  std::vector<void*> ptrs;
  uids.reserve(bindings.size());
  ptrs.reserve(bindings.size());
  std::set<int64_t> bound;
  for (const auto& [uid, ptr] : bindings) {
    const auto it = plan.tensors.find(uid);
    PRIMUS_CHECK(it != plan.tensors.end() && it->second.kind != TensorKind::Virtual,
                 "{}: binding for uid {} which is not a non-virtual tensor of the graph", what, uid);
    PRIMUS_CHECK(ptr != nullptr, "{}: tensor '{}' (uid {}) bound to a null pointer", what, it->second.name, uid);
    PRIMUS_CHECK(bound.insert(uid).second, "{}: tensor '{}' (uid {}) bound twice", what, it->second.name, uid);
    uids.push_back(uid);
    ptrs.push_back(ptr);
  }
  for (const auto& [uid, t] : plan.tensors) {
    PRIMUS_CHECK(t.kind == TensorKind::Virtual || bound.count(uid), "{}: tensor '{}' (uid {}) of the graph is not bound",
                 what, t.name, uid);
  }
  PRIMUS_CHECK(plan.workspace_bytes == 0 || workspace != nullptr, "{}: the plan needs {} bytes of workspace, got none",
               what, plan.workspace_bytes);
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack for " + what);
  pack.set_int64s(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), uids);
  pack.set(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(ptrs.size()), ptrs.data());
  pack.set(PRIMUS_CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  check(cudnnBackendExecute(handle, plan.plan.get(), pack.get()),
        fmt::format("cudnnBackendExecute of {} ({})", what, plan.engine));
}

}  // namespace primus::cuda::cudnn

#endif  // PRIMUS_WITH_CUDNN
