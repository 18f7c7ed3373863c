#include "infer/device_sampler.h"

#include <cstring>
#include <limits>

#include "core/error.h"
#ifdef PRIMUS_WITH_CUDA
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/sampling.h"
#endif

namespace primus::infer {

#ifdef PRIMUS_WITH_CUDA

namespace {
cudaStream_t stream_of(ops::Context& ctx) {
  ::primus::cuda::CudaBackend* cb = ::primus::cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "DeviceSampler: the CUDA context has no CudaBackend");
  return cb->stream();
}
}  // namespace

DeviceSampler::DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t vocab, bool keep_entropy,
                             const std::vector<uint64_t>& streams, int64_t steps)
    : ctx_(ctx), options_(options), vocab_(vocab), batch_(static_cast<int64_t>(streams.size())), steps_(steps),
      keep_entropy_(keep_entropy), streams_(streams) {
  init();
  if (!options_.greedy()) {
    Tensor u = Tensor::empty({steps_, batch_}, DType::F64);
    for (int64_t s = 0; s < steps_; ++s)
      for (int64_t b = 0; b < batch_; ++b)
        u.data<double>()[s * batch_ + b] =
            sampling_uniform(options_.seed, streams_[static_cast<size_t>(b)], static_cast<uint64_t>(s));
    uniforms_ = Tensor::empty({steps_, batch_}, DType::F64, Device::CUDA);
    uniforms_.copy_from(u);
  }
}

DeviceSampler::DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t vocab, bool keep_entropy,
                             int64_t rows)
    : ctx_(ctx), options_(options), vocab_(vocab), batch_(rows), steps_(std::numeric_limits<int64_t>::max()),
      keep_entropy_(keep_entropy) {
  per_call_ = true;
  init();
  if (!options_.greedy()) {
    call_uniforms_ = Tensor::zeros({batch_}, DType::F64, Device::CUDA);
    PRIMUS_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&call_uniforms_host_),
                                     static_cast<size_t>(2 * batch_) * sizeof(double)));
  }
}

void DeviceSampler::init() {
  validate(options_);
  PRIMUS_CHECK(ctx_.device() == Device::CUDA, "DeviceSampler: the context runs on {}, not CUDA",
               device_name(ctx_.device()));
  PRIMUS_CHECK(batch_ > 0 && steps_ > 0 && vocab_ > 0, "DeviceSampler: batch {}, steps {}, vocab {} must be > 0",
               batch_, steps_, vocab_);
  pack_ = Tensor::zeros({3 * batch_}, DType::I32, Device::CUDA);
  tokens_ = pack_.rows(0, batch_);
  // Two slots: the copy of step s + 1 may land while the host reads step s (enqueue/collect).
  PRIMUS_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_), static_cast<size_t>(6 * batch_) * sizeof(int32_t)));
  std::memset(host_, 0, static_cast<size_t>(6 * batch_) * sizeof(int32_t));
  cur_ = host_;
  for (void*& e : events_) {
    cudaEvent_t ev = nullptr;
    PRIMUS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    e = ev;
  }
}

DeviceSampler::~DeviceSampler() {
  // A step enqueued but never collected (generation stopped) may still be copying into host_.
  for (void* e : events_)
    if (e != nullptr) {
      cudaEventSynchronize(static_cast<cudaEvent_t>(e));
      cudaEventDestroy(static_cast<cudaEvent_t>(e));
    }
  if (host_ != nullptr) cudaFreeHost(host_);
  if (call_uniforms_host_ != nullptr) cudaFreeHost(call_uniforms_host_);
}

double DeviceSampler::entropy(int64_t b) const {
  float e = 0.f;
  std::memcpy(&e, cur_ + 2 * batch_ + b, sizeof(float));
  return static_cast<double>(e);
}

void DeviceSampler::set_token(int64_t b, int32_t t) {
  cur_[b] = t;
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(pack_.data<int32_t>() + b, &cur_[b], sizeof(int32_t), cudaMemcpyHostToDevice,
                                    stream_of(ctx_)));
  PRIMUS_CUDA_CHECK(cudaStreamSynchronize(stream_of(ctx_)));  // cur_[b] is read by the copy
}

void DeviceSampler::choose(const Tensor& logits, int64_t step, const std::vector<bool>& skip) {
  enqueue(logits, step);
  collect(step, &logits, skip);
}

void DeviceSampler::collect(int64_t step, const std::vector<bool>& skip) { collect(step, nullptr, skip); }

void DeviceSampler::enqueue(const Tensor& logits, int64_t step) {
  PRIMUS_CHECK(!per_call_, "DeviceSampler: this sampler takes per-call draws: enqueue(logits, call, draws)");
  PRIMUS_CHECK(logits.ndim() == 2 && logits.size(0) == batch_, "DeviceSampler: logits must be [{}, V], got {}",
               batch_, logits.describe());
  PRIMUS_CHECK(step >= 0 && step < steps_, "DeviceSampler: step {} outside [0, {})", step, steps_);
  std::vector<Draw> draws(static_cast<size_t>(batch_));
  for (int64_t b = 0; b < batch_; ++b) draws[static_cast<size_t>(b)] = {streams_[static_cast<size_t>(b)],
                                                                         static_cast<uint64_t>(step)};
  enqueue_rows(logits, step, options_.greedy() ? nullptr : uniforms_.data<double>() + step * batch_,
               std::move(draws));
}

void DeviceSampler::enqueue(const Tensor& logits, int64_t call, const std::vector<Draw>& draws) {
  PRIMUS_CHECK(per_call_, "DeviceSampler: per-call draws need the per-call constructor (rows)");
  PRIMUS_CHECK(logits.ndim() == 2 && logits.size(0) >= 1 && logits.size(0) <= batch_ &&
                   static_cast<int64_t>(draws.size()) == logits.size(0),
               "DeviceSampler: logits {} and {} draws for a sampler of {} rows (one draw per row, 1..{} rows)",
               logits.describe(), draws.size(), batch_, batch_);
  PRIMUS_CHECK(call >= 0, "DeviceSampler: call {} < 0", call);
  const double* uniforms = nullptr;
  if (!options_.greedy()) {
    // The host slot of this call: the copy of call - 2 from it finished before call - 2 was collected.
    double* host = call_uniforms_host_ + (call % 2) * batch_;
    for (size_t b = 0; b < draws.size(); ++b) host[b] = sampling_uniform(options_.seed, draws[b].stream, draws[b].step);
    PRIMUS_CUDA_CHECK(cudaMemcpyAsync(call_uniforms_.data<double>(), host, draws.size() * sizeof(double),
                                      cudaMemcpyHostToDevice, stream_of(ctx_)));
    uniforms = call_uniforms_.data<double>();
  }
  enqueue_rows(logits, call, uniforms, draws);
}

void DeviceSampler::choose(const Tensor& logits, int64_t call, const std::vector<Draw>& draws,
                           const std::vector<bool>& skip) {
  enqueue(logits, call, draws);
  collect(call, &logits, skip);
}

void DeviceSampler::copy_tokens_from(const DeviceSampler& from, const std::vector<int64_t>& rows) {
  PRIMUS_CHECK(static_cast<int64_t>(rows.size()) <= from.batch_, "DeviceSampler: {} rows from a sampler of {}",
               rows.size(), from.batch_);
  const cudaStream_t stream = stream_of(ctx_);
  for (size_t j = 0; j < rows.size(); ++j) {
    PRIMUS_CHECK(rows[j] >= 0 && rows[j] < batch_, "DeviceSampler: row {} outside [0, {})", rows[j], batch_);
    PRIMUS_CUDA_CHECK(cudaMemcpyAsync(pack_.data<int32_t>() + rows[j], from.pack_.data<int32_t>() + j, sizeof(int32_t),
                                      cudaMemcpyDeviceToDevice, stream));
  }
}

void DeviceSampler::enqueue_rows(const Tensor& logits, int64_t call, const double* uniforms, std::vector<Draw> draws) {
  PRIMUS_CHECK(logits.dtype() == DType::F32 && logits.ndim() == 2 && logits.size(1) >= vocab_ &&
                   logits.device() == Device::CUDA,
               "DeviceSampler: logits must be fp32 [rows, >= {}] on CUDA, got {}", vocab_, logits.describe());
  const cudaStream_t stream = stream_of(ctx_);
  const int64_t n = logits.size(0);
  int32_t* tokens = pack_.data<int32_t>();
  int32_t* status = tokens + batch_;
  float* entropy = reinterpret_cast<float*>(tokens + 2 * batch_);
  const int64_t V = logits.size(1);
  const float entropy_t = options_.greedy() ? 1.f : options_.temperature;
  if (options_.greedy()) {
    ops::cuda::launch_argmax_entropy(logits.data<float>(), n, V, vocab_, entropy_t, tokens, status,
                                     keep_entropy_ ? entropy : nullptr, stream);
  } else {
    if (keep_entropy_)  // its tokens are overwritten by the sampling kernel below
      ops::cuda::launch_argmax_entropy(logits.data<float>(), n, V, vocab_, entropy_t, tokens, status, entropy, stream);
    ops::cuda::launch_sample_tokens(logits.data<float>(), n, V, vocab_, options_.temperature, options_.top_k,
                                    options_.top_p, uniforms, tokens, status, stream);
  }
  const int slot = static_cast<int>(call % 2);
  PRIMUS_CUDA_CHECK(cudaMemcpyAsync(host_ + slot * 3 * batch_, tokens, static_cast<size_t>(3 * batch_) * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, stream));
  PRIMUS_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[static_cast<size_t>(slot)]), stream));
  slot_draws_[static_cast<size_t>(slot)] = std::move(draws);
}

void DeviceSampler::collect(int64_t step, const Tensor* logits, const std::vector<bool>& skip) {
  PRIMUS_CHECK(step >= 0 && step < steps_, "DeviceSampler: step {} outside [0, {})", step, steps_);
  const int slot = static_cast<int>(step % 2);
  PRIMUS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[static_cast<size_t>(slot)])));
  cur_ = host_ + slot * 3 * batch_;
  const std::vector<Draw>& draws = slot_draws_[static_cast<size_t>(slot)];
  const auto rows = static_cast<int64_t>(draws.size());  // the rows that call sampled
  for (int64_t b = 0; b < rows; ++b) {
    const int32_t st = cur_[batch_ + b];
    if (st == 0 || (static_cast<size_t>(b) < skip.size() && skip[static_cast<size_t>(b)])) continue;
    // Only choose() can fall back: after enqueue alone the logits may be the next step's already.
    PRIMUS_CHECK(logits != nullptr, "DeviceSampler: row {} of step {} needs the host (status {}) but its logits are "
                 "gone: use choose() for sampling that can fall back (1024 < top_k < vocabulary)", b, step, st);
    const int64_t V = logits->size(1);
    std::vector<float> row(static_cast<size_t>(vocab_));
    PRIMUS_CUDA_CHECK(cudaMemcpy(row.data(), logits->data<float>() + b * V, row.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost));
    // Status 2 (a non-finite largest logit) makes the host's sampling throw its own error.
    const int32_t t = sample_token(row, options_, draws[static_cast<size_t>(b)].stream, draws[static_cast<size_t>(b)].step);
    PRIMUS_CHECK(st == 1, "DeviceSampler: the device reports a non-finite largest logit for sequence {} at step {}",
                 b, step);
    ++host_fallbacks_;
    set_token(b, t);
  }
}

#else  // no CUDA

DeviceSampler::DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t, bool,
                             const std::vector<uint64_t>&, int64_t)
    : ctx_(ctx), options_(options) {
  fail("DeviceSampler: sampling on the device needs the CUDA build of primus");
}
DeviceSampler::DeviceSampler(ops::Context& ctx, const SamplingOptions& options, int64_t, bool, int64_t)
    : ctx_(ctx), options_(options) {
  fail("DeviceSampler: sampling on the device needs the CUDA build of primus");
}
DeviceSampler::~DeviceSampler() = default;
void DeviceSampler::init() {}
void DeviceSampler::choose(const Tensor&, int64_t, const std::vector<Draw>&, const std::vector<bool>&) {}
void DeviceSampler::enqueue(const Tensor&, int64_t, const std::vector<Draw>&) {}
void DeviceSampler::copy_tokens_from(const DeviceSampler&, const std::vector<int64_t>&) {}
void DeviceSampler::enqueue_rows(const Tensor&, int64_t, const double*, std::vector<Draw>) {}
double DeviceSampler::entropy(int64_t) const { return 0.0; }
void DeviceSampler::set_token(int64_t, int32_t) {}
void DeviceSampler::choose(const Tensor&, int64_t, const std::vector<bool>&) {}
void DeviceSampler::enqueue(const Tensor&, int64_t) {}
void DeviceSampler::collect(int64_t, const std::vector<bool>&) {}
void DeviceSampler::collect(int64_t, const Tensor*, const std::vector<bool>&) {}

#endif

}  // namespace primus::infer
