#!/usr/bin/env python3
"""Reference parity for our decoder: an independent PyTorch Llama / MoE / MLA written from the papers.

The model follows the published definitions, not our code: RMSNorm (Zhang & Sennrich
2019), rotary embeddings in the rotate-half form (Su et al. 2021) with Llama 3.1's
frequency scaling (Meta's Llama 3.1 release), grouped-query attention (Ainslie et al.
2023) with a causal mask, the SwiGLU MLP (Shazeer 2020), pre-norm residual blocks and a
(tied or untied) output layer (Touvron et al. 2023), cross-entropy over loss-masked tokens; the
mixture-of-experts MLP as Megatron-core defines it (top-k router with softmax or sigmoid scores,
pre-softmax, group-limited routing, expert bias for selection, scaling; expert capacity with
drop by probability or position; shared experts; the switch load-balancing loss over the
micro-batch or per sequence, and the router z-loss: Fedus et al. 2021, Zoph et al. 2022,
DeepSeek-AI 2024); DeepSeek-V2's multi-head latent attention with YaRN frequencies and
attention temperature (DeepSeek-AI 2024; Peng et al. 2023; DeepSeek's reference code).
Gradients come from torch autograd; the optimizer check uses torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_ and the Megatron LR formula written out below.

The reference runs in float64, so each comparison measures our fp32 error alone:
    error = max|ours - reference| / max|reference|      (per tensor)
must be < 1e-5 for logits, loss and every gradient, and < 1e-4 for the weights after
20 optimizer steps.

Exchange: our tool `reference_llama_dump` writes weights, batch and outputs as a
safetensors file; read_safetensors() below reads it from the format (8-byte little-endian
header length, JSON header, raw little-endian bytes), without the safetensors package.

Usage: check_llama.py --dump build/bin/reference_llama_dump [--workdir DIR]
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import torch

TOL_MODEL = 1e-5
TOL_OPTIM = 1e-4
DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[base + begin:base + end], dtype=DTYPES[info["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out, meta


# ---- the model, from the papers ----------------------------------------------------

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_inv_freq(cfg):
    """theta_i = base^(-2i/R); Llama 3.1 rescales by wavelength 2*pi/theta_i:
    kept below L/high_freq_factor, divided by `factor` above L/low_freq_factor,
    interpolated in between with smooth = (L/wavelength - low) / (high - low)."""
    rot = int(round(cfg["head_dim"] * cfg["rotary_percent"]))
    freq = 1.0 / (cfg["rotary_base"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    if cfg["use_rope_scaling"]:
        factor, low, high = cfg["rope_scaling_factor"], cfg["rope_low_freq_factor"], cfg["rope_high_freq_factor"]
        L = cfg["original_max_position_embeddings"]
        scaled = []
        for f in freq.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < L / high:
                scaled.append(f)
            elif wavelen > L / low:
                scaled.append(f / factor)
            else:
                smooth = (L / wavelen - low) / (high - low)
                scaled.append((1 - smooth) * f / factor + smooth * f)
        freq = torch.tensor(scaled, dtype=torch.float64)
    # The frequencies are model constants exchanged in fp32 (as HF keeps inv_freq).
    return freq.float().double()


def apply_rope(x, cos, sin):
    """x (B,T,H,D); cos/sin (T, R/2), or (B,T,R/2) for per-token positions. Rotates pairs
    (i, i + R/2) of the first R dims."""
    half = cos.shape[-1]
    rot, rest = x[..., :2 * half], x[..., 2 * half:]
    x1, x2 = rot[..., :half], rot[..., half:]
    if cos.dim() == 3:
        c, s = cos[:, :, None, :], sin[:, :, None, :]
    else:
        c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def attention(q, k, v, scale=None, segments=None):
    """Causal softmax(q k^T * scale) v (scale 1/sqrt(D) by default); query head h reads kv head
    h // (Hq/Hkv); v may have another head dim than q and k. segments (B,T): a query sees only
    keys of its own document."""
    B, T, Hq, D = q.shape
    group = Hq // k.shape[2]
    q = q.transpose(1, 2)
    k = k.transpose(1, 2).repeat_interleave(group, dim=1)
    v = v.transpose(1, 2).repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1.0 / math.sqrt(D))
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    if segments is not None:  # (B,1,T,T): other documents masked too
        mask = mask[None, None] | (segments[:, None, :, None] != segments[:, None, None, :])
    scores = scores.masked_fill(mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)  # (B,T,Hq,D)


def yarn_mscale(factor, m):
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def mla_rope(cfg):
    """Rotary frequencies of the Dr dims and the YaRN table scale and softmax scale, as DeepSeek's
    reference code computes them (YaRN: Peng et al. 2023)."""
    m = cfg["mla"]
    dim, base, factor = m["qk_pos_emb_head_dim"], cfg["rotary_base"], m["yarn_factor"]
    freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    table_scale, softmax_scale = 1.0, 1.0 / math.sqrt(m["qk_head_dim"] + dim)
    if factor > 1:
        L = cfg["original_max_position_embeddings"]

        def correction_dim(rotations):
            return dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(m["beta_fast"])), 0)
        high = min(math.ceil(correction_dim(m["beta_slow"])), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extrapolate = 1 - ramp  # the share of the original frequency
        freq = freq / factor * (1 - extrapolate) + freq * extrapolate
        table_scale = yarn_mscale(factor, m["mscale"]) / yarn_mscale(factor, m["mscale_all_dim"])
        if m["mscale_all_dim"]:
            softmax_scale *= yarn_mscale(factor, m["mscale_all_dim"]) ** 2
    return freq, table_scale, softmax_scale


def mla_attention(h, p, pre, cfg, cos, sin, scale, dropout=None):
    """DeepSeek-V2's multi-head latent attention on h (B,T,C) (DeepSeek-AI 2024, section 2.1):
    queries through an optional low-rank latent, keys/values from a shared latent c_kv, a
    decoupled rotary key shared by the heads."""
    m, eps = cfg["mla"], cfg["norm_epsilon"]
    B, T, _ = h.shape
    H, Dn, Dr, Dv, L = (cfg["num_attention_heads"], m["qk_head_dim"], m["qk_pos_emb_head_dim"], m["v_head_dim"],
                        m["kv_lora_rank"])
    a = pre + "self_attention."
    if m["q_lora_rank"] > 0:
        cq = linear(h, p, a + "linear_q_down_proj", cfg, dropout)
        if m["latent_norms"]:
            cq = rms_norm(cq, p[a + "q_layernorm.weight"], eps)
        q = linear(cq, p, a + "linear_q_up_proj", cfg, dropout)
    else:
        q = linear(h, p, a + "linear_q_proj", cfg, dropout)
    q = q.reshape(B, T, H, Dn + Dr)
    q_nope, q_pe = q[..., :Dn], apply_rope(q[..., Dn:], cos, sin)
    kv_d = linear(h, p, a + "linear_kv_down_proj", cfg, dropout)
    c_kv, k_pe = kv_d[..., :L], kv_d[..., L:]
    if m["latent_norms"]:
        c_kv = rms_norm(c_kv, p[a + "kv_layernorm.weight"], eps)
    kv = linear(c_kv, p, a + "linear_kv_up_proj", cfg, dropout).reshape(B, T, H, Dn + Dv)
    k_nope, v = kv[..., :Dn], kv[..., Dn:]
    k_pe = apply_rope(k_pe.reshape(B, T, 1, Dr), cos, sin).expand(B, T, H, Dr)
    out = attention(torch.cat([q_nope, q_pe], -1), torch.cat([k_nope, k_pe], -1), v, scale)
    return linear(out.reshape(B, T, H * Dv), p, a + "linear_proj", cfg, dropout)


def swiglu_mlp(x, fc1, fc2):
    gate, up = (x @ fc1.T).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up) @ fc2.T


def topk_indices(scores, k):
    """Top-k expert indices per row (descending; inputs are random, so no ties)."""
    return torch.topk(scores, k, dim=-1).indices


def group_limited_topk(sel, k, groups, group_topk, group_score="topk_sum"):
    """DeepSeek's device-limited routing: groups scored by the sum of their top (k / group_topk)
    selection scores (topk_sum: Megatron, V3) or by their best one (max: V2's
    group_limited_greedy); only the best group_topk groups are eligible for the top-k."""
    N, E = sel.shape
    grouped = sel.view(N, groups, E // groups)
    if group_score == "max":
        group_scores = grouped.max(dim=-1).values
    else:
        group_scores = grouped.topk(k // group_topk, dim=-1).values.sum(-1)
    keep = torch.zeros(N, groups, dtype=torch.bool)
    keep.scatter_(1, group_scores.topk(group_topk, dim=-1).indices, True)
    eligible = keep.unsqueeze(-1).expand(N, groups, E // groups).reshape(N, E)
    return topk_indices(sel.masked_fill(~eligible, float("-inf")), k)


def moe_mlp(x, p, pre, m, B, T, bias, cfg=None, dropout=None):
    """Megatron's MoE layer (router, token dropping, experts, shared experts) on x (B,T,C).
    Every expert runs on every token and is weighted by its (masked) routing probability: the
    same outputs and gradients as a dispatcher that only sends the routed tokens.
    Returns the layer output and its auxiliary objective (load balancing + z-loss)."""
    N, C = B * T, x.shape[-1]
    h = x.reshape(N, C)
    E, k = m["num_experts"], m["topk"]
    z = h @ p[pre + "mlp.router.weight"].T  # (N, E)
    # Top-k routing (Megatron's topk_routing_with_score_function).
    if m["score_function"] == "softmax":
        s = torch.softmax(z, dim=-1)
        sel = s if m["pre_softmax"] else z
    else:
        s = torch.sigmoid(z)
        sel = s + bias if bias is not None else s
    idx = (group_limited_topk(sel, k, m["num_groups"], m["group_topk"], m["group_score"]) if m["num_groups"] > 0
           else topk_indices(sel, k))
    if m["score_function"] == "softmax":
        probs = s.gather(1, idx) if m["pre_softmax"] else torch.softmax(z.gather(1, idx), dim=-1)
    else:
        probs = s.gather(1, idx)
        if k > 1:
            probs = probs / (probs.sum(-1, keepdim=True) + 1e-20)
    probs = probs * m["scaling"]
    routing_probs = torch.zeros(N, E, dtype=z.dtype).scatter(1, idx, probs)
    routed = torch.zeros(N, E, dtype=torch.bool).scatter(1, idx, True)
    # Expert capacity: ceil(N k / E * cf) tokens per expert; the rest are dropped.
    if m["capacity_factor"] > 0:
        cap = math.ceil(N * k / E * m["capacity_factor"])
        if cap < N:
            if m["drop_policy"] == "probs":
                keep = torch.zeros(N, E, dtype=torch.bool)
                keep.scatter_(0, routing_probs.detach().topk(cap, dim=0).indices, True)
            else:  # position: the first `cap` routed tokens of each expert
                keep = torch.cumsum(routed.long(), dim=0) <= cap
            routed = routed & keep
    weights = routing_probs * routed.double()
    out = torch.zeros(N, C, dtype=h.dtype)

    def expert_linear(v, name, e):
        """Expert e's projection, plus its own LoRA adapter (lora_A / lora_B stacked over the experts)."""
        y = v @ p[name + ".weight"][e].T
        if (name + ".lora_A.weight") in p:
            y = y + cfg["lora"]["scaling"] * (v @ p[name + ".lora_A.weight"][e].T) @ p[name + ".lora_B.weight"][e].T
        return y

    for e in range(E):
        gate, up = expert_linear(h, pre + "mlp.experts.linear_fc1", e).chunk(2, dim=-1)
        y = expert_linear(torch.nn.functional.silu(gate) * up, pre + "mlp.experts.linear_fc2", e)
        out = out + weights[:, e:e + 1] * y
    if m["shared_ffn_hidden_size"] > 0:  # on x (B,T,C): the LoRA dropout masks are per (row, token)
        g, u = linear(x, p, pre + "mlp.shared_experts.linear_fc1", cfg, dropout).chunk(2, dim=-1)
        out = out + linear(torch.nn.functional.silu(g) * u, p, pre + "mlp.shared_experts.linear_fc2", cfg,
                           dropout).reshape(N, C)
    # Auxiliary losses on the scores over all experts and their own top-k.
    aux = torch.zeros((), dtype=z.dtype)
    if m["aux_coeff"] > 0 and m["load_balancing"] in ("aux_loss", "seq_aux_loss"):
        if m["score_function"] == "softmax":
            sa = torch.softmax(z, dim=-1)
        else:
            sa = torch.sigmoid(z)
            sa = sa / (sa.sum(-1, keepdim=True) + 1e-20)
        counts = torch.zeros(N, E, dtype=z.dtype).scatter(1, topk_indices(sa.detach(), k), 1.0)
        G = B if m["load_balancing"] == "seq_aux_loss" else 1
        Tg = N // G
        for g in range(G):
            rows = slice(g * Tg, (g + 1) * Tg)
            aux = aux + m["aux_coeff"] * E / (k * Tg * Tg) * (sa[rows].sum(0) * counts[rows].sum(0)).sum() / G
    if m["z_coeff"] > 0:
        aux = aux + m["z_coeff"] * torch.logsumexp(z, dim=-1).pow(2).mean()
    return out.reshape(B, T, C), aux


def roll_left(t, shift, fill):
    """t (B,T) with row b, column i = t[b, i + shift]; `fill` past the end of the row."""
    out = torch.full_like(t, fill)
    out[:, :t.shape[1] - shift] = t[:, shift:]
    return out


M32 = (1 << 32) - 1
M64 = (1 << 64) - 1


def philox4x32(counter_lo, counter_hi, key):
    """Philox-4x32-10 (Salmon et al., SC'11; Random123's philox4x32 with its default 10 rounds) on
    numpy uint64 arrays of 64-bit counter halves and a 64-bit key: the four 32-bit output words."""
    c = [counter_lo & M32, counter_lo >> np.uint64(32), counter_hi & M32, counter_hi >> np.uint64(32)]
    k0, k1 = key & M32, key >> 32
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & np.uint64(M32),
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & np.uint64(M32)]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


# Random123's known-answer vector for philox4x32-10: counter 0, key 0.
assert [int(w[0]) for w in philox4x32(np.zeros(1, np.uint64), np.zeros(1, np.uint64), 0)] == \
    [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def lora_dropout_mask(name, shape, dropout):
    """PEFT's lora_dropout mask (B,T,F) of the input of adapter `name` (its lora_A weight name),
    as Primus keys it (parallel/lora.h, ops/dropout.h DropoutMask): element (b, t, c) is kept
    when word c % 4 of philox4x32(counter (t << 32 | c // 4, row_keys[b]), key) >> 8 is at least
    floor(p 2^24), key = fnv1a64(name) + 0x9E3779B97F4A7C15 (seed + 1) mod 2^64."""
    B, T, F = shape
    key = (fnv1a64(name) + 0x9E3779B97F4A7C15 * (dropout["seed"] + 1)) & M64
    t = np.arange(T, dtype=np.uint64)[None, :, None]
    c = np.arange(F, dtype=np.uint64)[None, None, :]
    rows = np.asarray(dropout["row_keys"], dtype=np.uint64)[:, None, None]
    lo = np.broadcast_to((t << np.uint64(32)) | (c >> np.uint64(2)), (B, T, F))
    hi = np.broadcast_to(rows, (B, T, F))
    words = np.stack(philox4x32(lo.copy(), hi.copy(), key), axis=-1)  # (B,T,F,4)
    word = np.take_along_axis(words, np.broadcast_to((c & np.uint64(3)).astype(np.int64)[..., None],
                                                     (B, T, F, 1)), axis=-1)[..., 0]
    threshold = math.floor(dropout["p"] * 16777216.0)
    return torch.from_numpy((word >> np.uint64(8)) >= threshold)


def linear(h, p, name, cfg, dropout=None):
    """h @ W^T, plus the LoRA path s (h A^T) B^T when the weight has adapters (Hu et al. 2021); in a
    training forward with lora_dropout p the adapter path reads dropout(h) = h * mask / (1 - p)
    (PEFT's LoraLayer: lora_B(lora_A(dropout(x))) * scaling; the base path reads h)."""
    y = h @ p[name + ".weight"].T
    if (name + ".lora_A.weight") in p:
        ha = h
        if dropout is not None:
            mask = lora_dropout_mask(name + ".lora_A.weight", h.shape, dropout)
            ha = h * mask.to(h.dtype) / (1 - dropout["p"])
        y = y + cfg["lora"]["scaling"] * (ha @ p[name + ".lora_A.weight"].T) @ p[name + ".lora_B.weight"].T
    return y


def llama_forward(p, cfg, tokens, buffers=None, labels=None, mask=None, positions=None, segments=None,
                  dropout=None):
    """Logits (B,T,V), the MoE auxiliary objective (0 for dense models) and, with labels and mask,
    the multi-token-prediction depths' (loss sum, loss tokens) for the weights p (dict name ->
    tensor), buffers (the expert biases) and tokens (B,T). dropout: LoRA dropout of a training
    forward ({"p", "seed", "row_keys"}), or None."""
    B, T = tokens.shape
    Hq, Hkv, D, F = cfg["num_attention_heads"], cfg["num_query_groups"], cfg["head_dim"], cfg["ffn_hidden_size"]
    eps = cfg["norm_epsilon"]
    freq, table_scale, mla_scale = mla_rope(cfg) if "mla" in cfg else (rope_inv_freq(cfg), 1.0, None)
    pos = torch.arange(T, dtype=torch.float64) if positions is None else positions.double()
    angles = pos[..., None] * freq  # (T, R/2), or (B, T, R/2) per token
    cos, sin = torch.cos(angles) * table_scale, torch.sin(angles) * table_scale
    emb = p["embedding.word_embeddings.weight"]
    out = emb if cfg["tied"] else p["output_layer.weight"]
    aux = torch.zeros((), dtype=torch.float64)

    def layer(x, pre, l):
        nonlocal aux
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        if "mla" in cfg:
            x = x + mla_attention(h, p, pre, cfg, cos, sin, mla_scale, dropout)
        else:
            qkv = linear(h, p, pre + "self_attention.linear_qkv", cfg, dropout)
            q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], dim=-1)
            q = apply_rope(q.reshape(B, T, Hq, D), cos, sin)
            k = apply_rope(k.reshape(B, T, Hkv, D), cos, sin)
            v = v.reshape(B, T, Hkv, D)
            a = attention(q, k, v, segments=segments).reshape(B, T, Hq * D)
            x = x + linear(a, p, pre + "self_attention.linear_proj", cfg, dropout)
        h = rms_norm(x, p[pre + "pre_mlp_layernorm.weight"], eps)
        moe = cfg.get("moe")
        if moe and moe["layers"][l]:
            bias = (buffers or {}).get(pre + "mlp.router.expert_bias")
            y, layer_aux = moe_mlp(h, p, pre, moe, B, T, bias, cfg, dropout)
            x, aux = x + y, aux + layer_aux
        else:
            g, u = linear(h, p, pre + "mlp.linear_fc1", cfg, dropout).chunk(2, dim=-1)
            x = x + linear(torch.nn.functional.silu(g) * u, p, pre + "mlp.linear_fc2", cfg, dropout)
        return x

    x = emb[tokens.long()]
    for l in range(cfg["num_layers"]):
        x = layer(x, f"decoder.layers.{l}.", l)
    logits = rms_norm(x, p["decoder.final_layernorm.weight"], eps) @ out.T
    # Multi-token prediction (DeepSeek-V3, section 2.2): depth k combines the previous depth's
    # hidden state at token i with the embedding of token i + k + 1 and predicts token i + k + 2.
    mtp = []
    if labels is not None:
        h_prev = x
        for k in range(cfg.get("mtp_num_layers", 0)):
            pre = f"mtp.layers.{k}."
            e = emb[roll_left(tokens, k + 1, 0).long()]
            u = torch.cat([rms_norm(e, p[pre + "enorm.weight"], eps), rms_norm(h_prev, p[pre + "hnorm.weight"], eps)],
                          -1) @ p[pre + "eh_proj.weight"].T
            h_prev = layer(u, pre + "transformer_layer.", cfg["num_layers"] + k)
            logits_k = rms_norm(h_prev, p[pre + "final_layernorm.weight"], eps) @ out.T
            mtp.append(masked_loss_sum(logits_k, roll_left(labels, k + 1, -1), roll_left(mask, k + 1, 0.0)))
    return logits, aux, mtp


def masked_loss_sum(logits, labels, mask):
    """sum over tokens of mask * (-log softmax(logits)[label]); label < 0 is ignored."""
    keep = (labels >= 0).double() * mask.double()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum(), keep.sum()


def rel_error(ours, ref):
    ours, ref = ours.double(), ref.double()
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


# ---- checks ---------------------------------------------------------------------------

def dpo_objective(logits, t, cfg):
    """Mean over the pairs of TRL's DPO loss (rows [0,P) chosen, [P,2P) rejected)."""
    d = cfg["dpo"]
    keep = (t["labels"] >= 0).double() * t["loss_mask"].double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, t["labels"].clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    seq = (logp * keep).sum(-1)  # (2P) summed completion log-probs
    P = seq.shape[0] // 2
    pc, pr = seq[:P], seq[P:]
    rc, rr = t["ref_chosen"].double(), t["ref_rejected"].double()
    beta, eps = d["beta"], d["label_smoothing"]
    if d["type"] == "ipo":  # log-probs averaged over each completion
        lc, lr = keep[:P].sum(-1), keep[P:].sum(-1)
        pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
    z = (pc - rc) - (pr - rr)
    F = torch.nn.functional
    if d["type"] == "sigmoid":
        losses = -F.logsigmoid(beta * z) * (1 - eps) - F.logsigmoid(-beta * z) * eps
    elif d["type"] == "robust":
        losses = (-F.logsigmoid(beta * z) * (1 - eps) + F.logsigmoid(-beta * z) * eps) / (1 - 2 * eps)
    elif d["type"] == "hinge":
        losses = torch.relu(1 - beta * z)
    else:
        losses = (z - 1 / (2 * beta)) ** 2
    return losses.mean()


def grpo_objective(logits, t, cfg):
    """TRL's GRPO loss: group-normalised advantages, clipped ratio, k3 KL, aggregated by loss_type."""
    g = cfg["grpo"]
    keep = (t["labels"] >= 0).double() * t["loss_mask"].double()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, t["labels"].clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    old = logp.detach() + t["old_shift"].double()
    ref = logp.detach() + t["ref_shift"].double()
    r = t["rewards"].double().view(-1, g["group"])
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)
    coef1 = torch.exp(logp - old)
    coef2 = torch.clamp(coef1, 1 - g["epsilon_low"], 1 + g["epsilon_high"])
    per_token = -torch.min(coef1 * adv, coef2 * adv)
    if g["beta"] != 0:
        per_token = per_token + g["beta"] * (torch.exp(ref - logp) - (ref - logp) - 1)
    if g["type"] == "grpo":
        return ((per_token * keep).sum(-1) / keep.sum(-1).clamp(min=1)).mean()
    if g["type"] == "dapo":
        return (per_token * keep).sum() / keep.sum().clamp(min=1)
    return (per_token * keep).sum() / (per_token.shape[0] * g["max_completion_length"])


def check_model(path):
    t, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    names = [k[len("param."):] for k in t if k.startswith("param.")]
    p = {n: t["param." + n].double().requires_grad_(True) for n in names}
    buffers = {k[len("buffer."):]: v.double() for k, v in t.items() if k.startswith("buffer.")}
    weights = {**buffers, **p}  # LoRA: the frozen base model is held as buffers
    dropout = None
    if "lora_row_keys" in t:  # the training forward drops (LoRA dropout); evaluation does not
        assert cfg["lora"]["dropout"] > 0
        dropout = {"p": cfg["lora"]["dropout"], "seed": cfg["lora"]["seed"],
                   "row_keys": [int(k) & M64 for k in t["lora_row_keys"].tolist()]}
    logits, aux, mtp = llama_forward(weights, cfg, t["tokens"], buffers, t["labels"], t["loss_mask"],
                                     t.get("positions"), t.get("segments"), dropout)
    loss_sum, count = masked_loss_sum(logits, t["labels"], t["loss_mask"])
    loss = (dpo_objective(logits, t, cfg) if "dpo" in cfg
            else grpo_objective(logits, t, cfg) if "grpo" in cfg else loss_sum / count)
    # Each MTP depth weighs mtp_loss_scaling_factor / depths, normalised by the main loss tokens.
    objective = loss + aux + sum(cfg["mtp_loss_scaling_factor"] / len(mtp) * s / count for s, _ in mtp)
    objective.backward()
    rows = [("loss", rel_error(t["loss"], loss.detach()))]
    if "logits" in t:
        # Our logits come from the evaluation path: without dropout.
        eval_logits = logits if dropout is None else llama_forward(weights, cfg, t["tokens"], buffers)[0]
        rows.append(("logits", rel_error(t["logits"], eval_logits.detach())))
        if dropout is not None:  # the training forward must differ, or the case would test nothing
            changed = rel_error(logits.detach(), eval_logits.detach())
            print(f"  {meta['case']}: LoRA dropout p {dropout['p']} changes the training logits by {changed:.2e}")
            if not changed > 1e-3:
                rows.append(("dropout had no effect", float("inf")))
    else:
        assert cfg["packed"], "only packed cases leave the logits out"
    if "moe" in cfg:
        rows.append(("aux", rel_error(t["aux"], aux.detach())))
    assert len(mtp) == sum(1 for k in t if k.startswith("mtp_loss."))
    rows += [(f"mtp_loss.{k}", rel_error(t[f"mtp_loss.{k}"], (s / c).detach())) for k, (s, c) in enumerate(mtp)]
    rows += [("grad." + n, rel_error(t["grad." + n], p[n].grad)) for n in names]
    assert len(rows) == 1 + ("logits" in t) + ("moe" in cfg) + len(mtp) + len(names)
    assert all(("grad." + n) in t for n in names)
    if "lora" in cfg:  # only the adapters train; every targeted weight has both
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
    if "moe" in cfg and cfg["moe"]["capacity_factor"] > 0 and float(t["dropped"]) == 0:
        print(f"  {meta['case']}: no token was dropped at capacity: the case would not see a dropping bug")
        rows.append(("dropped", float("inf")))
    worst = max(rows, key=lambda r: r[1])
    failed = [r for r in rows if not r[1] < TOL_MODEL]
    print(f"  {meta['case']}: loss {loss.item():.6f}, {len(rows)} tensors, worst {worst[0]} {worst[1]:.2e}"
          f" -> {'FAIL' if failed else 'ok'}")
    for name, err in failed:
        print(f"    {name}: error {err:.3e} >= {TOL_MODEL}")
    return not failed


def ranked(values):
    """Indices of each row in descending order, equal values by lower index (a stable sort).
    torch.topk leaves the order of ties open; Primus breaks them towards the lower index."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices


def deepseek_gate(z, bias, r):
    """DeepSeek's MoE gate written from HuggingFace's modeling code (float64): V2's greedy /
    group_limited_greedy (softmax scores; a group's score is its best expert's; top-k of the
    scores with the other groups masked; renormalised when norm_topk_prob) and V3's noaux_tc
    (sigmoid scores; selection on score + e_score_correction_bias; a group's score is the sum of
    its two best; weights the unbiased scores renormalised), times routed_scaling_factor.
    Primus's pre_softmax = not norm_topk_prob. Returns (weights, indices) (N,k) in the order of
    descending selection score, and the group scores (N,G) (None without groups)."""
    N, E = z.shape
    k, G, gk = r["topk"], r["num_groups"], r["group_topk"]
    scores = torch.sigmoid(z) if r["sigmoid"] else torch.softmax(z, dim=-1)
    choice = scores + bias if bias is not None else scores
    group_scores = None
    if G > 0:
        grouped = choice.view(N, G, E // G)
        if r["group_max"]:  # group_limited_greedy
            group_scores = grouped.max(dim=-1).values
        else:  # noaux_tc
            group_scores = torch.gather(grouped, 2, ranked(grouped)[..., :2]).sum(-1)
        gidx = ranked(group_scores)[:, :gk]
        gmask = torch.zeros(N, G, dtype=torch.bool).scatter(1, gidx, True)
        emask = gmask.unsqueeze(-1).expand(N, G, E // G).reshape(N, E)
        choice = choice.masked_fill(~emask, float("-inf"))  # HF fills 0.0: the same for scores > 0
    idx = ranked(choice)[:, :k]
    w = scores.gather(1, idx)
    if r["sigmoid"] or not r["pre_softmax"]:  # norm_topk_prob (V3 always; k = 1: w / w = 1 either way)
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * r["scaling"], idx, group_scores


def check_router(path):
    """The router top-k on tie-heavy logits (reference_llama_dump router) against deepseek_gate:
    the same experts in the same order, weights within 1e-6 relative. The order is decided by
    exact ties or by margins far above fp32 rounding (asserted), so fp32 and float64 agree."""
    t, meta = read_safetensors(path)
    cases = json.loads(meta["router"])
    ok = True
    for name, r in cases.items():
        z = t[f"logits.{name}"].double()
        bias = t[f"bias.{name}"].double() if r["bias"] else None
        w, idx, group_scores = deepseek_gate(z, bias, r)
        got_idx, got_w = t[f"indices.{name}"].long(), t[f"probs.{name}"].double()
        # Distinct selection values (and group scores) of a row are far apart: the ties are exact.
        sel = (torch.sigmoid(z) + (bias if bias is not None else 0)) if r["sigmoid"] else z
        for row in list(sel) + (list(group_scores) if group_scores is not None else []):
            u = torch.unique(row)
            assert len(u) < 2 or (u[1:] - u[:-1]).min() > 1e-4, f"{name}: near-tie in the inputs {row.tolist()}"
        same = torch.equal(got_idx, idx)
        err = rel_error(got_w, w)
        ties = sum(1 for row in sel if len(torch.unique(row)) < row.numel())
        print(f"  router {name}: {z.shape[0]} tokens ({ties} with tied scores), indices "
              f"{'equal' if same else 'DIFFER'}, weights {err:.2e}")
        if not same:
            bad = (got_idx != idx).any(-1).nonzero()[0].item()
            print(f"    token {bad}: ours {got_idx[bad].tolist()}, reference {idx[bad].tolist()}")
        ok &= same and err < 1e-6
    return ok


def megatron_lr(o, samples, gbs):
    """Warmup then cosine decay in samples, as Megatron's OptimizerParamScheduler."""
    warmup, decay = o["warmup_iters"] * gbs, o["train_iters"] * gbs
    if warmup > 0 and samples <= warmup:
        return o["lr"] * samples / warmup
    if samples > decay:
        return o["min_lr"]
    ratio = (samples - warmup) / (decay - warmup)
    return o["min_lr"] + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (o["lr"] - o["min_lr"])


def check_optim(path):
    t, meta = read_safetensors(path)
    cfg, o = json.loads(meta["config"]), json.loads(meta["optimizer"])
    names = [k[len("init."):] for k in t if k.startswith("init.")]
    p = {n: t["init." + n].double().requires_grad_(True) for n in names}
    decay = [p[n] for n in names if p[n].dim() > 1]
    no_decay = [p[n] for n in names if p[n].dim() == 1]  # norms (Megatron: no decay on 1-D)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    steps, micro = o["train_iters"], o["micro_batches"]
    gbs = cfg["batch"] * micro
    ok = True
    ref_losses, ref_lrs = [], []
    for s in range(steps):
        opt.zero_grad()
        batches = [(t[f"tokens.{s}.{m}"], t[f"labels.{s}.{m}"], t[f"loss_mask.{s}.{m}"]) for m in range(micro)]
        total = sum(float(b[2].sum()) for b in batches)
        loss_total = 0.0
        for tokens, labels, mask in batches:
            loss_sum, _ = masked_loss_sum(llama_forward(p, cfg, tokens)[0], labels, mask)
            (loss_sum / total).backward()
            loss_total += loss_sum.item()
        torch.nn.utils.clip_grad_norm_(list(p.values()), o["clip_grad"])
        lr = megatron_lr(o, s * gbs, gbs)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        ref_losses.append(loss_total / total)
        ref_lrs.append(lr)
    rows = [("lr", rel_error(t["lr"], torch.tensor(ref_lrs))), ("loss", rel_error(t["loss"], torch.tensor(ref_losses)))]
    rows += [("final." + n, rel_error(t["final." + n], p[n].detach())) for n in names]
    failed = [r for r in rows if not r[1] < TOL_OPTIM]
    worst = max(rows, key=lambda r: r[1])
    moved = max(rel_error(t["init." + n], p[n].detach()) for n in names)
    print(f"  optim: {steps} AdamW steps, loss {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f}, weights moved "
          f"{moved:.2e}, worst {worst[0]} {worst[1]:.2e} -> {'FAIL' if failed else 'ok'}")
    for name, err in failed:
        print(f"    {name}: error {err:.3e} >= {TOL_OPTIM}")
    if moved < 100 * TOL_OPTIM:
        print("    the weights barely moved: the check would not see an optimizer bug")
        ok = False
    return ok and not failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", required=True, help="path of the reference_llama_dump binary")
    ap.add_argument("--workdir", default="reference_llama_out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.workdir, exist_ok=True)
    cases = subprocess.run([a.dump, "list"], check=True, capture_output=True, text=True).stdout.split()
    assert cases, "the dump tool lists no cases"
    ok = True
    print(f"reference parity: {len(cases)} model cases + optimizer (float64 PyTorch reference)")
    for case in cases:
        out = os.path.join(a.workdir, case + ".safetensors")
        subprocess.run([a.dump, "model", case, out], check=True, stdout=subprocess.DEVNULL)
        ok &= check_model(out)
    out = os.path.join(a.workdir, "optim.safetensors")
    subprocess.run([a.dump, "optim", out], check=True, stdout=subprocess.DEVNULL)
    ok &= check_optim(out)
    out = os.path.join(a.workdir, "router.safetensors")
    subprocess.run([a.dump, "router", out], check=True, stdout=subprocess.DEVNULL)
    ok &= check_router(out)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
