#include "model/mlp_moe.h"

#include <cmath>
#include <optional>

#include "core/error.h"
#include "core/trace.h"
#include "parallel/context_parallel.h"
#include "parallel/layers.h"

namespace primus {

void MoeStepStats::reset(int64_t num_experts) {
  tokens_per_expert.assign(static_cast<size_t>(num_experts), 0.0);
  load_balancing_loss = z_loss = dropped = 0;
  micro_batches = 0;
}

struct MoeMlp::Acts : BlockActivations {
  Tensor h, rstd;                  // (R,C), (R) fp32: this rank's residual rows
  Tensor hN;                       // (N,C): h of the tensor-parallel group (h itself without SP)
  Tensor logits;                   // (N,E) fp32
  Tensor probs, indices;           // (N,k) fp32, int32
  Tensor row_of, pair_of_row;      // (N,k) int32, (M) int32
  std::vector<int64_t> rows;       // per expert (host): this rank's routed rows, E of them
  // Expert parallel: where this rank's rows go and which rows its E_l experts compute; one
  // rank: the plan is empty and the experts compute the routed rows themselves.
  parallel::TokenExchange exchange;
  std::vector<int64_t> expert_rows;  // per local expert: rows the grouped GEMMs see (Mx in all)
  Tensor x_perm, g, act;           // the experts' rows: (Mx,C), (Mx,2Fe), (Mx,Fe) [not kept under Selective]
  Tensor y_perm;                   // (M,C): the experts' outputs back in the routed rows' order
  Tensor shared_g, shared_act;     // (N,2Fs), (N,Fs) [not kept under Selective]
  Tensor score_grad;               // (G,E) fp32: d objective / d aux scores; undefined without aux losses
  float z_weight = 0;
  int64_t M() const { return pair_of_row.defined() ? pair_of_row.size(0) : 0; }
  int64_t Mx() const { return x_perm.defined() ? x_perm.size(0) : 0; }
};

MoeMlp::MoeMlp(MoeParams p, const ModelConfig& c, int64_t layer, int64_t tp_size)
    : p_(p), layer_(layer), E_(c.num_experts), k_(c.moe_router_topk), Fe_(c.moe_ffn_hidden_size / tp_size) {
  routing_.topk = k_;
  routing_.sigmoid = c.moe_router_score_function == "sigmoid";
  routing_.pre_softmax = c.moe_router_pre_softmax;
  routing_.num_groups = c.moe_router_num_groups;
  routing_.group_topk = c.moe_router_group_topk;
  routing_.group_max = c.moe_router_group_score == "max";
  routing_.scaling = static_cast<float>(c.moe_router_topk_scaling_factor);
  aux_coeff_ = c.moe_aux_loss_coeff;
  if (aux_coeff_ > 0)
    balance_ = c.moe_router_load_balancing_type == "aux_loss"       ? Balance::Aux
               : c.moe_router_load_balancing_type == "seq_aux_loss" ? Balance::SeqAux
                                                                    : Balance::None;
  z_coeff_ = c.moe_z_loss_coeff;
  capacity_factor_ = c.moe_expert_capacity_factor;
  drop_by_probs_ = c.moe_token_drop_policy == "probs";
  pad_ = c.moe_pad_expert_input_to_capacity;
  rate_ = c.moe_router_bias_update_rate;
  if (p_.shared_fc1 != nullptr)
    shared_ = SwigluMlp{p_.shared_fc1, p_.shared_fc2, c.moe_shared_expert_intermediate_size / tp_size,
                        p_.shared_fc1_lora, p_.shared_fc2_lora};
  stats_.reset(E_);
}

std::vector<NamedTensor*> MoeMlp::params() const {
  std::vector<NamedTensor*> out = {p_.norm, p_.router, p_.fc1, p_.fc2};
  if (p_.shared_fc1 != nullptr) out.insert(out.end(), {p_.shared_fc1, p_.shared_fc2});
  parallel::append_lora_params({&p_.fc1_lora, &p_.fc2_lora, &p_.shared_fc1_lora, &p_.shared_fc2_lora}, out);
  return out;
}

std::vector<NamedTensor*> MoeMlp::overwritten_grads() const {
  // The router and the experts' weights (the norm's and the adapters' grads accumulate).
  std::vector<NamedTensor*> out = {p_.router, p_.fc1, p_.fc2};
  if (p_.shared_fc1 != nullptr) out.insert(out.end(), {p_.shared_fc1, p_.shared_fc2});
  return out;
}

std::vector<NamedTensor*> MoeMlp::lora_partial_grads(const parallel::TensorParallel& tp) const {
  std::vector<NamedTensor*> out;
  if (!tp.active()) return out;
  for (const parallel::LoraAdapter* l : {&p_.fc1_lora, &p_.shared_fc1_lora})
    if (l->active()) out.push_back(l->a);
  for (const parallel::LoraAdapter* l : {&p_.fc2_lora, &p_.shared_fc2_lora})
    if (l->active()) out.push_back(l->b);
  return out;
}

int64_t MoeMlp::capacity(int64_t n) const {
  if (capacity_factor_ <= 0) return -1;
  // Megatron's get_capacity(n k, E, cf); a capacity beyond the token count drops nothing.
  const auto cap = static_cast<int64_t>(std::ceil(static_cast<double>(n * k_) / static_cast<double>(E_) * capacity_factor_));
  return std::min(cap, n);
}

void MoeMlp::route(LayerEnv& env, Acts& a) {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const int64_t N = env.dims.N();
  Tensor bias;
  if (p_.expert_bias != nullptr) {  // the selection bias in fp32 (a bf16 copy at inference)
    bias = A.alloc({E_}, DType::F32);
    ops::copy_cast(ctx, bias, p_.expert_bias->value);
  }
  a.probs = A.alloc({N, k_}, DType::F32);
  a.indices = A.alloc({N, k_}, DType::I32);
  ops::moe_topk_forward(ctx, a.probs, a.indices, a.logits, bias, routing_);

  const int64_t cap = capacity(N);
  const int64_t most = pad_ ? E_ * cap : cap >= 0 ? std::min(N * k_, E_ * cap) : N * k_;
  a.row_of = A.alloc({N, k_}, DType::I32);
  Tensor pair_of_row = A.alloc({most}, DType::I32);
  // What the host reads back, in one block (one copy, one synchronisation): the experts' row
  // counts (int32, E) and, in a training forward, the load-balancing statistics (fp32).
  const bool aux = env.training && (balance_ != Balance::None || z_coeff_ > 0);
  const int64_t G = balance_ == Balance::SeqAux ? env.dims.B : 1;
  const int64_t stat_words = aux ? 2 * G * E_ + 1 : 0;
  Tensor readback = A.alloc({E_ + stat_words}, DType::I32);
  Tensor counts = readback.rows(0, E_);
  ops::moe_dispatch_plan(ctx, a.row_of, pair_of_row, counts, a.indices, a.probs, cap, drop_by_probs_, pad_);
  if (aux) {
    const Tensor stats = readback.rows(E_, E_ + stat_words).reinterpret(DType::F32);
    Tensor sums = stats.rows(0, G * E_).view({G, E_}), top = stats.rows(G * E_, 2 * G * E_).view({G, E_});
    Tensor lse_sq = stats.rows(2 * G * E_, 2 * G * E_ + 1);
    ops::moe_aux_stats(ctx, sums, top, lse_sq, a.logits, k_, routing_.sigmoid);
    // Context parallel: the statistics of the whole sequences (Megatron reduces the routed
    // counts over tp x cp; the score sums are reduced too, so every cp rank logs the same value).
    Tensor all = stats;
    parallel::context_parallel_sum(env.cp, all);
  }

  // The experts' row counts size the grouped GEMMs: the one host synchronisation of the layer.
  const Tensor back = readback.to(Device::CPU);
  a.rows.assign(static_cast<size_t>(E_), 0);
  int64_t M = 0;
  for (int64_t e = 0; e < E_; ++e) M += a.rows[static_cast<size_t>(e)] = back.data<int32_t>()[e];
  a.pair_of_row = pair_of_row.rows(0, M);
  // Expert parallel: the one exchange of counts, then every rank knows what it sends and gets.
  if (env.ep.active()) {
    a.exchange = parallel::plan_token_exchange(env.ep, a.rows, A);
    a.expert_rows = a.exchange.local_rows;
  } else {
    a.expert_rows = a.rows;
  }

  if (env.training && !env.recomputing) {
    std::vector<double> kept(a.rows.begin(), a.rows.end());
    if (pad_) {  // padded rows are not tokens: count the kept slots of each expert
      std::fill(kept.begin(), kept.end(), 0.0);
      const Tensor row_of_h = a.row_of.to(Device::CPU);
      for (int64_t q = 0; q < N * k_; ++q)
        if (const int32_t r = row_of_h.data<int32_t>()[q]; r >= 0) kept[static_cast<size_t>(r / cap)] += 1;
    }
    double total = 0;
    for (int64_t e = 0; e < E_; ++e) {
      stats_.tokens_per_expert[static_cast<size_t>(e)] += kept[static_cast<size_t>(e)];
      total += kept[static_cast<size_t>(e)];
    }
    stats_.dropped += static_cast<double>(N * k_) - total;
    ++stats_.micro_batches;
  }
  a.score_grad = Tensor();
  a.z_weight = 0;
  if (!aux) return;
  const float* sums = back.rows(E_, E_ + stat_words).reinterpret(DType::F32).data<float>();
  const float* top = sums + G * E_;
  const double lse_sq = top[G * E_];
  const double w = env.aux_loss_weight;
  // The tokens the (cp-reduced) statistics cover; this rank's gradient is its own tokens' share.
  const double n_all = static_cast<double>(N) * env.cp.size();
  Tensor grad_h = Tensor::zeros({G, E_}, DType::F32);
  double balance = 0;
  if (balance_ != Balance::None) {
    // aux: coeff E / (k T^2) sum_i S_i c_i per group of T tokens, averaged over the G groups.
    const double T = n_all / static_cast<double>(G);
    const double scale = aux_coeff_ * static_cast<double>(E_) / (static_cast<double>(k_) * T * T) / static_cast<double>(G);
    for (int64_t i = 0; i < G * E_; ++i) {
      balance += scale * static_cast<double>(sums[i]) * top[i];
      grad_h.data<float>()[i] = static_cast<float>(w * scale * top[i]);
    }
  }
  if (!env.recomputing) {
    if (balance_ != Balance::None) stats_.load_balancing_loss += balance / aux_coeff_;
    if (z_coeff_ > 0) stats_.z_loss += lse_sq / n_all;
  }
  a.score_grad = A.alloc({G, E_}, DType::F32);
  a.score_grad.copy_from(grad_h);
  a.z_weight = static_cast<float>(w * z_coeff_ / n_all);
}

void MoeMlp::forward(LayerEnv& env, const Tensor& x, Tensor& y, std::unique_ptr<BlockActivations>& acts_out,
                     Recompute keep) {
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const bool ep = env.ep.active();
  // The shared experts' GEMMs on the gathered rows, without their own reduction: their partial
  // sums are reduced together with the routed experts'.
  LayerEnv local = env;
  local.tp = {};
  const DType dt = x.dtype();
  const int64_t N = d.N(), R = d.residual_rows();
  auto acts = std::make_unique<Acts>();
  Acts& a = *acts;
  a.x = x;
  const Arena::Mark start = A.mark();  // Full: everything is scratch
  std::optional<trace::Range> range;
  range.emplace("moe router forward");
  a.h = A.alloc({R, d.C}, dt);
  a.rstd = A.alloc({R}, DType::F32);
  ops::rmsnorm_forward(ctx, a.h, a.rstd, x, p_.norm->value, env.norm_eps);
  a.hN = parallel::enter_tp_region(env.tp, a.h, A);
  a.logits = A.alloc({N, E_}, DType::F32);
  ops::linear_forward(ctx, a.logits, a.hN, p_.router->value);
  route(env, a);

  const int64_t M = a.M(), Mx = ep ? a.exchange.received() : M;
  a.x_perm = A.alloc({Mx, d.C}, dt);
  a.g = A.alloc({Mx, 2 * Fe_}, dt);
  a.y_perm = A.alloc({M, d.C}, dt);
  if (shared_.fc1 != nullptr) a.shared_g = A.alloc({N, 2 * shared_.F}, dt);
  auto alloc_acts = [&] {
    a.act = A.alloc({Mx, Fe_}, dt);
    if (shared_.fc1 != nullptr) a.shared_act = A.alloc({N, shared_.F}, dt);
  };
  if (keep == Recompute::None) alloc_acts();
  const Arena::Mark scratch = keep == Recompute::Full ? start : A.mark();
  if (keep != Recompute::None) alloc_acts();

  range.reset();
  range.emplace("moe experts forward");
  if (ep) {  // the routed rows to the ranks of their experts
    Tensor routed = A.alloc({M, d.C}, dt);
    ops::moe_permute(ctx, routed, a.hN, a.pair_of_row, k_);
    parallel::dispatch_tokens(ctx, env.ep, A, a.exchange, routed, a.x_perm);
  } else {
    ops::moe_permute(ctx, a.x_perm, a.hN, a.pair_of_row, k_);
  }
  PRIMUS_CHECK(!(p_.fc1_lora.active() || p_.fc2_lora.active()) || !lora_dropout_of(env).active(),
               "MoE layer {}: lora_dropout with adapters on the routed experts is not built (their rows are "
               "permuted tokens, possibly of other expert-parallel ranks); set lora_dropout: 0 or leave "
               "linear_fc1 / linear_fc2 out of lora_target_modules", layer_);
  ops::grouped_linear_forward(ctx, a.g, a.x_perm, p_.fc1->value, a.expert_rows);
  parallel::lora_grouped_forward(ctx, A, a.g, a.x_perm, p_.fc1_lora, a.expert_rows);
  ops::swiglu_forward(ctx, a.act, a.g);
  if (ep) {  // and the experts' outputs back to the ranks of their tokens
    Tensor y_experts = A.alloc({Mx, d.C}, dt);
    ops::grouped_linear_forward(ctx, y_experts, a.act, p_.fc2->value, a.expert_rows);
    parallel::lora_grouped_forward(ctx, A, y_experts, a.act, p_.fc2_lora, a.expert_rows);
    parallel::combine_tokens(ctx, env.ep, A, a.exchange, y_experts, a.y_perm);
  } else {
    ops::grouped_linear_forward(ctx, a.y_perm, a.act, p_.fc2->value, a.expert_rows);
    parallel::lora_grouped_forward(ctx, A, a.y_perm, a.act, p_.fc2_lora, a.expert_rows);
  }
  // partial (N,C) = shared(h_N) + the routed experts' outputs (this rank's share of their sum),
  // then y = x + the sum over tp.
  range.reset();
  range.emplace("moe combine forward");
  Tensor partial = parallel::tp_partial_buffer(env.tp, y, A);
  if (shared_.fc1 != nullptr)
    shared_.forward(local, a.hN, a.shared_g, a.shared_act, partial, nullptr);
  else
    ops::fill(ctx, partial, 0.f);
  ops::moe_unpermute(ctx, partial, a.y_perm, a.row_of, a.probs);
  parallel::exit_tp_region(env.tp, y, partial);
  ops::add(ctx, y, y, x);

  A.release(scratch);
  if (keep == Recompute::Full) {
    acts = std::make_unique<Acts>();
    acts->x = x;
  } else if (keep == Recompute::Selective) {
    a.act = a.shared_act = Tensor();
  }
  acts_out = std::move(acts);
}

void MoeMlp::backward(LayerEnv& env, BlockActivations& base, Tensor& dres, Recompute kept) {
  Acts& a = static_cast<Acts&>(base);
  ops::Context& ctx = env.ctx;
  Arena& A = env.arena;
  const TokenDims& d = env.dims;
  const int64_t N = d.N(), M = a.M(), Mx = a.Mx(), R = d.residual_rows();
  const bool ep = env.ep.active();
  LayerEnv local = env;  // the shared experts without their own reduction (see forward)
  local.tp = {};
  const DType dt = a.x.dtype();
  const bool acc = !env.overwrite_linear_grads;
  const Arena::Mark start = A.mark();
  if (kept == Recompute::Selective) {
    a.act = A.alloc({Mx, Fe_}, dt);
    ops::swiglu_forward(ctx, a.act, a.g);
    if (shared_.fc1 != nullptr) {
      a.shared_act = A.alloc({N, shared_.F}, dt);
      ops::swiglu_forward(ctx, a.shared_act, a.shared_g);
    }
  }
  // dhN (N,C): this rank's partial d h_N; dh (R,C) after the tensor-parallel reduction.
  Tensor dhN = A.alloc({N, d.C}, dt);
  Tensor dh = env.tp.sp() ? A.alloc({R, d.C}, dt) : dhN;
  Tensor d_logits = A.alloc({N, E_}, DType::F32);
  {
    const Arena::Mark m = A.mark();
    const Tensor dyN = parallel::exit_tp_region_backward(env.tp, dres, A);  // d y of the group's N rows
    // The routed experts, in reverse: unpermute, [exchange,] fc2, SwiGLU, fc1[, exchange back].
    Tensor d_y_perm = A.alloc({M, d.C}, dt), d_probs = A.alloc({N, k_}, DType::F32);
    ops::moe_unpermute_backward(ctx, d_y_perm, d_probs, dyN, a.y_perm, a.row_of, a.pair_of_row, a.probs);
    // d probs = dy . (the experts' output summed over tp): sum this rank's share over tp.
    if (env.tp.active()) env.tp.group->all_reduce(d_probs, parallel::ReduceOp::Sum);
    Tensor d_y_experts = d_y_perm;
    if (ep) {  // d y travels like the tokens did
      d_y_experts = A.alloc({Mx, d.C}, dt);
      parallel::dispatch_tokens(ctx, env.ep, A, a.exchange, d_y_perm, d_y_experts);
    }
    std::optional<trace::Range> range(std::in_place, "moe experts backward");
    Tensor d_act = A.alloc({Mx, Fe_}, dt), d_g = A.alloc({Mx, 2 * Fe_}, dt);
    ops::grouped_linear_backward(ctx, &d_act, p_.fc2->grad, d_y_experts, a.act, p_.fc2->value, a.expert_rows, acc);
    parallel::lora_grouped_backward(ctx, A, d_act, d_y_experts, a.act, p_.fc2_lora, a.expert_rows);
    ops::swiglu_backward(ctx, d_g, d_act, a.g);
    Tensor d_x_experts = A.alloc({Mx, d.C}, dt);
    ops::grouped_linear_backward(ctx, &d_x_experts, p_.fc1->grad, d_g, a.x_perm, p_.fc1->value, a.expert_rows, acc);
    parallel::lora_grouped_backward(ctx, A, d_x_experts, d_g, a.x_perm, p_.fc1_lora, a.expert_rows);
    Tensor d_x_perm = d_x_experts;
    if (ep) {  // and d x like the experts' outputs
      d_x_perm = A.alloc({M, d.C}, dt);
      parallel::combine_tokens(ctx, env.ep, A, a.exchange, d_x_experts, d_x_perm);
    }
    range.reset();
    range.emplace("moe combine+router backward");
    // d h_N: the shared experts' path (written), then the routed tokens' (added).
    if (shared_.fc1 != nullptr)
      shared_.backward(local, a.hN, a.shared_g, a.shared_act, dyN, dhN);
    else
      ops::fill(ctx, dhN, 0.f);
    ops::moe_permute_backward(ctx, dhN, d_x_perm, a.row_of);
    // The router: top-k probabilities, then the auxiliary losses' gradients.
    ops::moe_topk_backward(ctx, d_logits, d_probs, a.logits, a.indices, routing_);
    A.release(m);
  }
  if (a.score_grad.defined())
    ops::moe_aux_backward(ctx, d_logits, a.logits, a.score_grad, a.z_weight, routing_.sigmoid);
  parallel::enter_tp_region_backward(env.tp, dh, dhN);  // dh (R,C) = the sum over tp of the partials
  // The router is replicated and every tp rank routed the same N tokens: like a norm, it takes
  // its gradient from this rank's residual rows only (summed over tp with the norms under SP).
  const int64_t r0 = env.tp.sp() ? env.tp.rank() * R : 0;
  Tensor d_z = d_logits.rows(r0, r0 + R);  // the router GEMMs run in the model dtype
  if (dt != DType::F32) {
    d_z = A.alloc({R, E_}, dt);
    ops::copy_cast(ctx, d_z, d_logits.rows(r0, r0 + R));
  }
  ops::matmul(ctx, dh, d_z, ops::Transpose::No, p_.router->value, ops::Transpose::No, 1.f, 1.f);  // dh += dz Wr
  if (p_.router->grad.defined())  // frozen under LoRA
    ops::matmul(ctx, p_.router->grad, d_z, ops::Transpose::Yes, a.h, ops::Transpose::No, 1.f, acc ? 1.f : 0.f);
  Tensor dw_norm = norm_weight_grad(env, *p_.norm);
  ops::rmsnorm_backward(ctx, dres, dw_norm, dh, a.x, p_.norm->value, a.rstd);  // dres = d x
  A.release(start);
  if (kept == Recompute::Selective) a.act = a.shared_act = Tensor();
}

void MoeMlp::update_expert_bias(ops::Context& ctx, const std::vector<double>& tokens) const {
  if (p_.expert_bias == nullptr) return;
  PRIMUS_CHECK(static_cast<int64_t>(tokens.size()) == E_, "MoE layer {}: {} token counts for {} experts", layer_,
               tokens.size(), E_);
  double mean = 0;
  for (double t : tokens) mean += t;
  mean /= static_cast<double>(E_);
  Tensor& b = p_.expert_bias->value;
  Tensor host = Tensor::from_floats(b.to_float_vector(), b.shape());
  for (int64_t e = 0; e < E_; ++e) {
    const double off = mean - tokens[static_cast<size_t>(e)];
    host.data<float>()[e] += static_cast<float>(rate_ * ((off > 0) - (off < 0)));
  }
  if (b.dtype() == DType::F32) {
    b.copy_from(host);
  } else {
    const Tensor dev = host.to(b.device());
    ops::copy_cast(ctx, b, dev);
  }
}

}  // namespace primus
