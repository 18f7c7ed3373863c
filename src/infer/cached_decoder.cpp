#include "infer/cached_decoder.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "core/strings.h"
#include "model/decoder.h"
#ifdef PRIMUS_WITH_CUDA
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/sampling.h"
#endif

namespace primus::infer {

namespace {

// Rows of logits computed per output GEMM (bounds the fp32 logits buffer to rows x V).
constexpr int64_t kLogitsChunkRows = 256;

// positions[b] += 1 (int32 (B) on the context's device).
void advance_positions(ops::Context& ctx, Tensor& positions) {
  if (ctx.device() == Device::CPU) {
    for (int64_t b = 0; b < positions.numel(); ++b) ++positions.data<int32_t>()[b];
    return;
  }
#ifdef PRIMUS_WITH_CUDA
  ::primus::cuda::CudaBackend* cb = ::primus::cuda::as_cuda_backend(ctx.backend());
  PRIMUS_CHECK(cb != nullptr, "decode_step: the CUDA context has no CudaBackend");
  ops::cuda::launch_advance_positions(positions.data<int32_t>(), positions.numel(), cb->stream());
#else
  fail("decode_step: {} tensors need the CUDA build of primus", device_name(ctx.device()));
#endif
}

}  // namespace

std::vector<std::pair<std::string, Shape>> decoder_weight_shapes(const ModelConfig& c) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const ParamSpec& p : parameter_table(c)) out.emplace_back(p.name, p.shape);
  return out;
}

NamedTensorList weights_of(DecoderModel& model) {
  NamedTensorList out;
  for (NamedTensor* p : model.parameters()) out.emplace_back(p->name, p->value);
  for (NamedTensor* b : model.buffers()) out.emplace_back(b->name, b->value);
  return out;
}

CachedDecoder::CachedDecoder(const ModelConfig& config, ops::Context& ctx, const NamedTensorList& weights)
    : config_(config), ctx_(ctx), arena_(ctx.device()), prefill_arena_(ctx.device()) {
  check_buildable(config_, "generate");
  if (config_.num_query_groups <= 0) config_.num_query_groups = config_.num_attention_heads;
  rotary_ = rotary_of(config_);

  std::map<std::string, Tensor> by_name;
  std::vector<std::string> given;
  for (const auto& [name, t] : weights) {
    PRIMUS_CHECK(by_name.emplace(name, t).second, "CachedDecoder: weight '{}' is given twice", name);
    given.push_back(name);
  }
  const auto expected = decoder_weight_shapes(config_);
  std::vector<std::string> expected_names;
  for (const auto& e : expected) expected_names.push_back(e.first);
  dtype_ = weights.empty() ? DType::F32 : weights.front().second.dtype();
  PRIMUS_CHECK(dtype_ == DType::F32 || dtype_ == DType::BF16 || dtype_ == DType::F16,
               "CachedDecoder: weights must be fp32, bf16 or fp16, got {}", dtype_name(dtype_));
  std::map<std::string, NamedTensor*> used;
  for (const auto& [name, shape] : expected) {
    auto it = by_name.find(name);
    PRIMUS_CHECK(it != by_name.end(), "CachedDecoder: model '{}' needs weight '{}' {} which is missing{}",
                 config_.name, name, shape_str(shape), did_you_mean(name, given));
    const Tensor& t = it->second;
    PRIMUS_CHECK(t.shape() == shape, "CachedDecoder: weight '{}' has shape {}, expected {} for model '{}'", name,
                 shape_str(t.shape()), shape_str(shape), config_.name);
    PRIMUS_CHECK(t.dtype() == dtype_, "CachedDecoder: weight '{}' is {} but the others are {} (one dtype expected)",
                 name, dtype_name(t.dtype()), dtype_name(dtype_));
    PRIMUS_CHECK(t.device() == ctx_.device(), "CachedDecoder: weight '{}' is {} but the context runs on {}", name,
                 t.describe(), device_name(ctx_.device()));
    auto p = std::make_unique<NamedTensor>();
    p->name = name;
    p->value = t;
    p->shard = parallel::ShardSpec::replicated(shape);
    used[name] = p.get();
    tensors_.push_back(std::move(p));
    by_name.erase(it);
  }
  PRIMUS_CHECK(by_name.empty(), "CachedDecoder: weight '{}' is not a parameter of model '{}'{}",
               by_name.empty() ? "" : by_name.begin()->first, config_.name,
               by_name.empty() ? "" : did_you_mean(by_name.begin()->first, expected_names));
  auto lookup = [&](const std::string& name) {
    const auto it = used.find(name);
    PRIMUS_CHECK(it != used.end(), "CachedDecoder: no weight '{}'", name);
    return it->second;
  };
  embedding_ = lookup("embedding.word_embeddings.weight");
  for (const LayerSpec& layer : decoder_layers(config_))
    layers_.push_back(make_decoder_layer(config_, layer, lookup, 1));
  final_norm_ = lookup("decoder.final_layernorm.weight");
  output_ = config_.untie_embeddings_and_output_weights ? lookup("output_layer.weight") : embedding_;
}

#ifdef PRIMUS_WITH_CUDA
struct CachedDecoder::StepGraph {
  cudaGraphExec_t exec = nullptr;
  Tensor logits;  // where the graph writes the step's logits (arena memory)
  ~StepGraph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
};
#else
struct CachedDecoder::StepGraph {
  Tensor logits;
};
#endif

CachedDecoder::~CachedDecoder() = default;

void CachedDecoder::drop_graph() {
  graph_.reset();
  graph_key_.clear();
  graph_warm_steps_ = 0;
}

KvCache CachedDecoder::new_cache(int64_t batch, int64_t max_len) const {
  std::vector<std::vector<Shape>> entries;
  for (const DecoderLayer& layer : layers_) entries.push_back(layer.attention().cache_entry_shapes());
  return KvCache::allocate(entries, batch, max_len, dtype_, ctx_.device());
}

int64_t CachedDecoder::cache_values_per_token() const {
  int64_t n = 0;
  for (const DecoderLayer& layer : layers_)
    for (const Shape& s : layer.attention().cache_entry_shapes()) n += shape_numel(s);
  return n;
}

int64_t CachedDecoder::weight_bytes() const {
  int64_t n = 0;
  for (const auto& t : tensors_) n += static_cast<int64_t>(t->value.nbytes());
  // An untied input embedding is read a row per token, not whole.
  if (output_ != embedding_) n -= static_cast<int64_t>(embedding_->value.nbytes());
  return n;
}

std::string CachedDecoder::cache_description() const {
  const int64_t per_layer = layers_.empty() ? 0 : cache_values_per_token() / static_cast<int64_t>(layers_.size());
  if (config_.multi_latent_attention)
    return fmt::format("latent KV cache: c_kv {} + k_pe {} = {} values per token and layer (full k and v: {})",
                       config_.kv_lora_rank, config_.qk_pos_emb_head_dim, per_layer,
                       config_.num_attention_heads * (config_.qk_head_dim + config_.qk_pos_emb_head_dim + config_.v_head_dim));
  return fmt::format("KV cache: k and v, {} values per token and layer", per_layer);
}

void CachedDecoder::check_cache(const KvCache& cache, const char* who) const {
  bool ok = cache.num_layers() == static_cast<int64_t>(layers_.size());
  for (size_t l = 0; ok && l < layers_.size(); ++l) {
    const std::vector<Shape> entries = layers_[l].attention().cache_entry_shapes();
    ok = cache.layers[l].size() == entries.size();
    for (size_t i = 0; ok && i < entries.size(); ++i) {
      Shape want{cache.batch, cache.max_len};
      want.insert(want.end(), entries[i].begin(), entries[i].end());
      const Tensor& t = cache.layers[l][i];
      ok = t.shape() == want && t.dtype() == dtype_ && t.device() == ctx_.device();
    }
  }
  PRIMUS_CHECK(ok, "{}: the cache ({} layers of {} sequences x {} positions) was not made for this decoder ({} layers, "
               "{}): use new_cache()",
               who, cache.num_layers(), cache.batch, cache.max_len, layers_.size(), dtype_name(dtype_));
}

void CachedDecoder::ensure_rope_rows(int64_t n) {
  if (cos_host_.defined() && cos_host_.size(0) >= n) return;
  cos_host_ = Tensor();
  sin_host_ = Tensor();
  ops::rope_tables(cos_host_, sin_host_, n, rotary_.inv_freq, rotary_.table_scale);
  if (ctx_.device() == Device::CPU) {
    cos_dev_ = cos_host_;
    sin_dev_ = sin_host_;
  } else {
    cos_dev_ = Tensor::empty(cos_host_.shape(), DType::F32, ctx_.device());
    sin_dev_ = Tensor::empty(sin_host_.shape(), DType::F32, ctx_.device());
    cos_dev_.copy_from(cos_host_);
    sin_dev_.copy_from(sin_host_);
  }
}

template <typename Attend>
void CachedDecoder::run_layers(LayerEnv& env, Tensor& x, Arena& arena, Attend&& attend) {
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Arena::Mark m = arena.mark();
    Tensor x_mid = arena.alloc(x.shape(), dtype_);
    attend(layers_[l].attention(), x, x_mid, l);
    std::unique_ptr<BlockActivations> acts;
    layers_[l].mlp().forward(env, x_mid, x, acts, Recompute::Full);  // x = x_mid + mlp(norm(x_mid))
    arena.release(m);
  }
}

Tensor CachedDecoder::device_logits(const Tensor& x_rows) { return device_logits(x_rows, arena_); }

Tensor CachedDecoder::device_logits(const Tensor& x_rows, Arena& arena) {
  const int64_t n = x_rows.size(0), V = config_.padded_vocab_size, C = config_.hidden_size;
  Tensor h = arena.alloc({n, C}, dtype_), rstd = arena.alloc({n}, DType::F32);
  ops::rmsnorm_forward(ctx_, h, rstd, x_rows, final_norm_->value, static_cast<float>(config_.norm_epsilon));
  Tensor logits = arena.alloc({n, V}, DType::F32);
  ops::matmul(ctx_, logits, h, ops::Transpose::No, output_->value, ops::Transpose::Yes);
  return logits;
}

Tensor CachedDecoder::final_logits(const Tensor& x_rows, Arena& arena) {
  const int64_t n = x_rows.size(0), V = config_.padded_vocab_size;
  Tensor host = Tensor::empty({n, V}, DType::F32);
  for (int64_t r0 = 0; r0 < n; r0 += kLogitsChunkRows) {
    const int64_t r1 = std::min(n, r0 + kLogitsChunkRows);
    const Arena::Mark m = arena.mark();
    const Tensor logits = device_logits(x_rows.rows(r0, r1), arena);
    Tensor dst = host.rows(r0, r1);
    dst.copy_from(logits);
    arena.release(m);
  }
  return host;
}

namespace {
std::vector<int64_t> all_slots(size_t n) {
  std::vector<int64_t> s(n);
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<int64_t>(i);
  return s;
}
}  // namespace

Tensor CachedDecoder::prefill(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits) {
  PRIMUS_CHECK(static_cast<int64_t>(prompts.size()) == cache.batch, "prefill: {} prompts for a cache of {} sequences",
               prompts.size(), cache.batch);
  drop_graph();  // the next decode steps capture again (buffers and scratch may move)
  const Tensor last = prefill_rows(cache, all_slots(prompts.size()), prompts, all_logits, arena_);
  return final_logits(last, arena_);
}

Tensor CachedDecoder::prefill_to_device(KvCache& cache, const std::vector<std::vector<int32_t>>& prompts) {
  PRIMUS_CHECK(static_cast<int64_t>(prompts.size()) == cache.batch, "prefill: {} prompts for a cache of {} sequences",
               prompts.size(), cache.batch);
  drop_graph();
  const Tensor last = prefill_rows(cache, all_slots(prompts.size()), prompts, nullptr, arena_);
  return device_logits(last, arena_);
}

Tensor CachedDecoder::prefill_slots(KvCache& cache, std::span<const int64_t> slots,
                                    const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits) {
  const Tensor last = prefill_rows(cache, slots, prompts, all_logits, prefill_arena_);
  return final_logits(last, prefill_arena_);
}

Tensor CachedDecoder::prefill_slots_to_device(KvCache& cache, std::span<const int64_t> slots,
                                              const std::vector<std::vector<int32_t>>& prompts) {
  const Tensor last = prefill_rows(cache, slots, prompts, nullptr, prefill_arena_);
  return device_logits(last, prefill_arena_);
}

void CachedDecoder::upload_positions(KvCache& cache) const {
  Tensor pos_host = Tensor::empty({cache.batch}, DType::I32);
  for (int64_t b = 0; b < cache.batch; ++b)
    pos_host.data<int32_t>()[b] = static_cast<int32_t>(cache.lengths[static_cast<size_t>(b)]);
  // Tensor::copy_from runs on the legacy default stream, which the backend's (blocking) stream
  // is ordered with: decode steps queued before see the old positions, later ones the new.
  cache.positions.copy_from(pos_host);
}

Tensor CachedDecoder::prefill_rows(KvCache& cache, std::span<const int64_t> slots,
                                   const std::vector<std::vector<int32_t>>& prompts, Tensor* all_logits,
                                   Arena& arena) {
  const auto B = static_cast<int64_t>(prompts.size());
  const int64_t V = config_.padded_vocab_size, C = config_.hidden_size;
  PRIMUS_CHECK(B >= 1 && B <= cache.batch, "prefill: {} prompts for a cache of {} slots", B, cache.batch);
  PRIMUS_CHECK(static_cast<int64_t>(slots.size()) == B, "prefill: {} slots for {} prompts", slots.size(), B);
  check_cache(cache, "prefill");
  std::vector<bool> taken(static_cast<size_t>(cache.batch), false);
  bool consecutive = true;
  for (int64_t j = 0; j < B; ++j) {
    const int64_t s = slots[static_cast<size_t>(j)];
    PRIMUS_CHECK(s >= 0 && s < cache.batch, "prefill: slot {} outside the cache's [0, {})", s, cache.batch);
    PRIMUS_CHECK(!taken[static_cast<size_t>(s)], "prefill: slot {} is given twice", s);
    taken[static_cast<size_t>(s)] = true;
    consecutive = consecutive && s == slots[0] + j;
  }
  int64_t T = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    PRIMUS_CHECK(!p.empty(), "prefill: prompt {} is empty (at least one token is needed)", b);
    PRIMUS_CHECK(static_cast<int64_t>(p.size()) <= cache.max_len,
                 "prefill: prompt {} has {} tokens but the cache holds {} positions", b, p.size(), cache.max_len);
    for (size_t i = 0; i < p.size(); ++i)
      PRIMUS_CHECK(p[i] >= 0 && p[i] < V, "prefill: prompt {} token {} is id {}, outside the vocabulary [0, {})", b,
                   i, p[i], V);
    T = std::max<int64_t>(T, static_cast<int64_t>(p.size()));
  }
  const int64_t N = B * T;
  arena.reset();
  ensure_rope_rows(cache.max_len);  // once for the whole generation (decode reuses the rows)

  // Right-padded ids (padding repeats id 0: causal attention keeps it out of real rows).
  Tensor ids_host = Tensor::zeros({N}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    std::copy(prompts[static_cast<size_t>(b)].begin(), prompts[static_cast<size_t>(b)].end(),
              ids_host.data<int32_t>() + b * T);
  auto on_device = [&](const Tensor& host) {
    if (ctx_.device() == Device::CPU) return host;
    Tensor t = arena.alloc(host.shape(), host.dtype());
    t.copy_from(host);
    return t;
  };
  const Tensor ids = on_device(ids_host);
  LayerEnv env{ctx_, arena, TokenDims{B, T, C, 1}, on_device(cos_host_.rows(0, T)), on_device(sin_host_.rows(0, T)),
               static_cast<float>(config_.norm_epsilon)};
  Tensor x = arena.alloc({N, C}, dtype_);
  ops::embedding_forward(ctx_, x, ids, embedding_->value);
  run_layers(env, x, arena, [&](AttentionBlock& attention, const Tensor& in, Tensor& out, size_t l) {
    std::vector<Tensor>& layer = cache.layers[l];
    if (consecutive) {  // the slots' rows of the cache are one (B, max_len, ...) block: write there
      std::vector<Tensor> block;
      for (const Tensor& t : layer) block.push_back(t.rows(slots[0], slots[0] + B));
      attention.prefill(env, in, out, block);
      return;
    }
    // Staging (B, T, entry) in this layer's arena scope, then each joiner's len_b rows to its slot.
    std::vector<Tensor> staging;
    for (const Tensor& t : layer) {
      Shape shape = t.shape();
      shape[0] = B;
      shape[1] = T;
      staging.push_back(arena.alloc(shape, t.dtype()));
    }
    attention.prefill(env, in, out, staging);
    for (size_t i = 0; i < layer.size(); ++i) {
      const int64_t row = layer[i].numel() / (cache.batch * cache.max_len);
      const Tensor src = staging[i].view({B * T, row});
      Tensor dst = layer[i].view({cache.batch * cache.max_len, row});
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = static_cast<int64_t>(prompts[static_cast<size_t>(b)].size());
        const int64_t s = slots[static_cast<size_t>(b)];
        Tensor d = dst.rows(s * cache.max_len, s * cache.max_len + len);
        ops::copy_cast(ctx_, d, src.rows(b * T, b * T + len));
      }
    }
  });
  for (int64_t b = 0; b < B; ++b)
    cache.lengths[static_cast<size_t>(slots[static_cast<size_t>(b)])] =
        static_cast<int64_t>(prompts[static_cast<size_t>(b)].size());
  upload_positions(cache);

  if (all_logits != nullptr) *all_logits = final_logits(x, arena).view({B, T, V});
  Tensor last = arena.alloc({B, C}, dtype_);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = b * T + static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()) - 1;
    Tensor dst = last.rows(b, b + 1);
    ops::copy_cast(ctx_, dst, x.rows(r, r + 1));
  }
  return last;
}

Tensor CachedDecoder::decode(KvCache& cache, std::span<const int32_t> tokens) {
  const int64_t B = cache.batch, V = config_.padded_vocab_size;
  PRIMUS_CHECK(static_cast<int64_t>(tokens.size()) == B, "decode: {} tokens for a cache of {} sequences",
               tokens.size(), B);
  check_cache(cache, "decode");
  Tensor ids_host = Tensor::empty({B}, DType::I32), pos_host = Tensor::empty({B}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const int32_t t = tokens[static_cast<size_t>(b)];
    PRIMUS_CHECK(t >= 0 && t < V, "decode: token {} of sequence {} is outside the vocabulary [0, {})", t, b, V);
    ids_host.data<int32_t>()[b] = t;
    pos_host.data<int32_t>()[b] = static_cast<int32_t>(cache.lengths[static_cast<size_t>(b)]);
  }
  // The host's lengths are the truth here: the caller may have set them.
  cache.positions.copy_from(pos_host);
  if (!decode_ids_.defined() || decode_ids_.numel() != B) decode_ids_ = Tensor::empty({B}, DType::I32, ctx_.device());
  decode_ids_.copy_from(ids_host);
  const Tensor logits = decode_step(cache, decode_ids_);
  Tensor host = Tensor::empty({B, V}, DType::F32);
  host.copy_from(logits);
  return host;
}

Tensor CachedDecoder::decode_step(KvCache& cache, const Tensor& tokens, bool cuda_graph) {
  const int64_t B = cache.batch;
  PRIMUS_CHECK(tokens.dtype() == DType::I32 && tokens.numel() == B && tokens.device() == ctx_.device(),
               "decode: tokens must be int32 [{}] on {}, got {}", B, device_name(ctx_.device()), tokens.describe());
  check_cache(cache, "decode");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = cache.lengths[static_cast<size_t>(b)];
    PRIMUS_CHECK(p >= 1, "decode: sequence {} has no prompt in the cache: call prefill() first", b);
    PRIMUS_CHECK(p < cache.max_len, "decode: sequence {} is at position {} but the cache holds {} positions", b, p,
                 cache.max_len);
  }
  last_step_graphed_ = false;
  Tensor logits;
#ifdef PRIMUS_WITH_CUDA
  ::primus::cuda::CudaBackend* cb =
      ctx_.device() == Device::CUDA ? ::primus::cuda::as_cuda_backend(ctx_.backend()) : nullptr;
  if (cuda_graph && cb != nullptr && graph_failure_.empty()) {
    // Everything the captured kernels address: a graph is replayed only for the same buffers.
    std::vector<const void*> key = {cache.positions.raw(), tokens.raw(),
                                    reinterpret_cast<const void*>(static_cast<intptr_t>(B)),
                                    reinterpret_cast<const void*>(static_cast<intptr_t>(cache.max_len)),
                                    cb->scratch(0), cos_dev_.raw(), sin_dev_.raw()};
    for (const auto& layer : cache.layers)
      for (const Tensor& t : layer) key.push_back(t.raw());
    if (key != graph_key_) {
      drop_graph();
      graph_key_ = key;
    }
    const cudaStream_t stream = cb->stream();
    if (graph_ == nullptr && graph_warm_steps_ >= 2) {
      // Capture the third step. Nothing runs while capturing: the graph is launched below.
      std::string failure;
      cudaGraph_t graph = nullptr;
      auto step = std::make_unique<StepGraph>();
      cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
      if (e != cudaSuccess) {
        failure = fmt::format("cudaStreamBeginCapture: {}", cudaGetErrorString(e));
      } else {
        try {
          step->logits = decode_step_body(cache, tokens);
        } catch (const std::exception& ex) {
          failure = ex.what();
        }
        e = cudaStreamEndCapture(stream, &graph);
        if (failure.empty() && e != cudaSuccess) failure = fmt::format("cudaStreamEndCapture: {}", cudaGetErrorString(e));
        if (failure.empty()) {
          e = cudaGraphInstantiate(&step->exec, graph, 0);
          if (e != cudaSuccess) failure = fmt::format("cudaGraphInstantiate: {}", cudaGetErrorString(e));
        }
        if (graph != nullptr) cudaGraphDestroy(graph);
      }
      (void)cudaGetLastError();  // a failed capture's error is not sticky: clear it
      if (failure.empty()) {
        graph_ = std::move(step);
      } else {
        graph_failure_ = failure;  // later steps run eagerly
        drop_graph();
        // Where the capture left the positions: the body advanced nothing (capture runs nothing).
      }
    }
    if (graph_ != nullptr) {
      const cudaError_t launched = cudaGraphLaunch(graph_->exec, stream);
      PRIMUS_CHECK(launched == cudaSuccess, "decode: replaying the captured decode step failed: {}",
                   cudaGetErrorString(launched));
      for (int64_t b = 0; b < B; ++b) ++cache.lengths[static_cast<size_t>(b)];
      last_step_graphed_ = true;
      return graph_->logits;
    }
    if (graph_failure_.empty()) ++graph_warm_steps_;
  }
#else
  (void)cuda_graph;
#endif
  logits = decode_step_body(cache, tokens);
  for (int64_t b = 0; b < B; ++b) ++cache.lengths[static_cast<size_t>(b)];
  return logits;
}

Tensor CachedDecoder::decode_step_body(KvCache& cache, const Tensor& tokens) {
  const int64_t B = cache.batch, C = config_.hidden_size;
  arena_.reset();
  ensure_rope_rows(cache.max_len);  // a no-op after prefill
  // RoPE rows of each sequence's own position, gathered on the device: the batch sits in the
  // T dim of the RoPE ops, so row b of these (B, R/2) tables rotates sequence b.
  const int64_t half = rotary_.dims() / 2;
  Tensor cos = arena_.alloc({B, half}, DType::F32), sin = arena_.alloc({B, half}, DType::F32);
  ops::rope_gather_tables(ctx_, cos, sin, cos_dev_, sin_dev_, cache.positions);
  LayerEnv env{ctx_, arena_, TokenDims{1, B, C, 1}, cos, sin, static_cast<float>(config_.norm_epsilon)};
  Tensor x = arena_.alloc({B, C}, dtype_);
  ops::embedding_forward(ctx_, x, tokens, embedding_->value);
  run_layers(env, x, arena_, [&](AttentionBlock& attention, const Tensor& in, Tensor& out, size_t l) {
    attention.decode(env, in, out, cache.layers[l], cache.positions);
  });
  advance_positions(ctx_, cache.positions);
  return device_logits(x);
}

}  // namespace primus::infer
