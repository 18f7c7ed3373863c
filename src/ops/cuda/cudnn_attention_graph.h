// A thin RAII layer over the cuDNN 9 backend graph API (cudnn_graph.h): descriptors that destroy
// themselves, attribute setters that name the attribute and the descriptor in their error, an
// operation-graph builder (tensors by UID, pointwise / matmul / reduction / reshape operations),
// plan selection from the engine heuristics, and execution through a variant pack.
//
// Used by cudnn_attention.cpp (the fused SDPA graphs); written against the C API only, without
// the cudnn_frontend C++ headers. Every cuDNN status is checked: a failure throws primus::Error
//   "cuDNN CUDNN_STATUS_...: <what was being done> [<descriptor label>]: <cudnnGetLastErrorString>"
// so a report from the GPU machine says which descriptor and attribute cuDNN refused.
//
// Only compiled where CMake found cuDNN (PRIMUS_WITH_CUDNN); include it from .cpp files only.
#pragma once

#ifdef PRIMUS_WITH_CUDNN

#include <cudnn_graph.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace primus::cuda::cudnn {

// An attribute id with its spelled-out name, for error messages: PRIMUS_CUDNN_ATTR(CUDNN_ATTR_X).
struct Attr {
  cudnnBackendAttributeName_t id;
  const char* name;
};
#define PRIMUS_CUDNN_ATTR(a) (::primus::cuda::cudnn::Attr{a, #a})

// "cuDNN 9.14.0 (built against 9.19.0)".
std::string version_string();
// cudnnGetLastErrorString(), trimmed; "" when cuDNN has nothing to add.
std::string last_error_string();
// Throws primus::Error naming the status, `what` and cuDNN's last error string.
[[noreturn]] void throw_error(cudnnStatus_t status, const std::string& what);
inline void check(cudnnStatus_t status, const std::string& what) {
  if (status != CUDNN_STATUS_SUCCESS) [[unlikely]]
    throw_error(status, what);
}

// Owns one cudnnBackendDescriptor_t. `label` names it in errors ("tensor 'Q' (uid 1)").
class Descriptor {
 public:
  Descriptor() = default;
  Descriptor(cudnnBackendDescriptorType_t type, std::string label);
  ~Descriptor();
  Descriptor(Descriptor&& o) noexcept : d_(std::exchange(o.d_, nullptr)), label_(std::move(o.label_)) {}
  Descriptor& operator=(Descriptor&& o) noexcept;
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return d_; }
  const std::string& label() const { return label_; }

  Descriptor& set(Attr a, cudnnBackendAttributeType_t type, int64_t count, const void* values);
  Descriptor& set_int64(Attr a, int64_t v) { return set(a, CUDNN_TYPE_INT64, 1, &v); }
  Descriptor& set_int64s(Attr a, const std::vector<int64_t>& v) {
    return set(a, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
  }
  Descriptor& set_bool(Attr a, bool v) { return set(a, CUDNN_TYPE_BOOLEAN, 1, &v); }
  Descriptor& set_data_type(Attr a, cudnnDataType_t v) { return set(a, CUDNN_TYPE_DATA_TYPE, 1, &v); }
  Descriptor& set_handle(Attr a, cudnnHandle_t h) { return set(a, CUDNN_TYPE_HANDLE, 1, &h); }
  Descriptor& set_desc(Attr a, const Descriptor& d);
  Descriptor& set_descs(Attr a, const std::vector<cudnnBackendDescriptor_t>& ds) {
    return set(a, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ds.size()), ds.data());
  }
  template <typename E>
  Descriptor& set_enum(Attr a, cudnnBackendAttributeType_t type, E v) {
    return set(a, type, 1, &v);
  }
  void finalize();
  // Finalize without throwing: the status and, on failure, the message the throwing version would carry.
  cudnnStatus_t try_finalize(std::string* error);
  int64_t get_int64(Attr a) const;

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  std::string label_;
};

enum class TensorKind {
  Device,      // a device pointer bound at execution (graph input/output or workspace-backed)
  Virtual,     // an intermediate that lives only inside the fused kernel
  HostScalar,  // pass-by-value scalar: bound at execution to a host pointer holding the value
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims, strides;
  cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
  TensorKind kind = TensorKind::Device;
};

// A finalized execution plan plus everything it was built from (descriptors are kept alive for
// the plan's lifetime; cuDNN does not promise that a plan copies what it references).
struct Plan {
  std::vector<Descriptor> parts;      // tensors and operations
  Descriptor graph, engine_config, plan;
  std::map<int64_t, TensorInfo> tensors;  // by uid: what execute() must bind
  int64_t workspace_bytes = 0;
  std::string engine;  // e.g. "engine 9 (candidate 1 of 4, heuristics mode A)"
};

// Builds one operation graph. Tensors get increasing UIDs (returned); every operation is named
// so an error says which one cuDNN refused.
class GraphBuilder {
 public:
  explicit GraphBuilder(std::string graph_name) : graph_name_(std::move(graph_name)) {}

  int64_t tensor(const std::string& name, std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t dt,
                 TensorKind kind);
  // A pass-by-value fp32 scalar of shape (1,1,1,1).
  int64_t scalar(const std::string& name) { return tensor(name, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, TensorKind::HostScalar); }
  // A virtual tensor with `like`'s dims and strides.
  int64_t virtual_like(const std::string& name, int64_t like, cudnnDataType_t dt);

  // y = mode(x), y = mode(x, b) or y = mode(x, b, t) (b, t = -1 when absent). `axis` for GEN_INDEX.
  void pointwise(const std::string& name, cudnnPointwiseMode_t mode, cudnnDataType_t math, int64_t x, int64_t b,
                 int64_t t, int64_t y, int64_t axis = -1);
  // c = a @ b over the last two dims (batch dims broadcast); optional per-batch M/N/K override tensors.
  void matmul(const std::string& name, int64_t a, int64_t b, int64_t c, int64_t m_override = -1,
              int64_t n_override = -1, int64_t k_override = -1);
  void reduction(const std::string& name, cudnnReduceTensorOp_t op, int64_t x, int64_t y);
  // y is x reinterpreted with other dims/strides (a transposed view).
  void reshape(const std::string& name, int64_t x, int64_t y);

  const TensorInfo& info(int64_t uid) const;

  // Finalizes the operation graph, asks the heuristics (mode A, then FALLBACK) for engine configs
  // and returns the first one whose execution plan finalizes. The error lists every refusal.
  Plan build(cudnnHandle_t handle) &&;

 private:
  const Descriptor& desc(int64_t uid) const;
  std::string graph_name_;
  std::map<int64_t, Descriptor> tensors_;
  std::map<int64_t, TensorInfo> info_;
  std::vector<Descriptor> ops_;      // operations, in the order they were added
  std::vector<Descriptor> helpers_;  // the pointwise/matmul/reduction descriptors the operations reference
  int64_t next_uid_ = 1;
};

// Executes `plan` on the handle's stream. `bindings` gives one pointer per non-virtual tensor uid
// (device memory; a host pointer for HostScalar tensors); a missing or unknown uid is an error.
void execute(cudnnHandle_t handle, const Plan& plan, const std::vector<std::pair<int64_t, void*>>& bindings,
             void* workspace, const std::string& what);

}  // namespace primus::cuda::cudnn

#endif  // PRIMUS_WITH_CUDNN
