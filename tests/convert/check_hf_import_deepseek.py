#!/usr/bin/env python3
"""`primus convert` for DeepSeek-V2/V3 (import checked by logits, export by a bit-exact round trip) against an independent HuggingFace-layout
DeepSeek written in PyTorch (float64), the way transformers' modeling_deepseek_v3 runs it:

- multi-head latent attention: q = q_b_proj(RMSNorm(q_a_proj(x))) (or q_proj(x)) split per head
  into [q_nope | q_pe]; kv_a_proj_with_mqa(x) = [c_kv | k_pe]; kv_b_proj(RMSNorm(c_kv)) per head
  = [k_nope | v]; one k_pe shared by the heads;
- RoPE on the rotary parts in DeepSeek's interleaved layout: the pairs (x0, x1), (x2, x3), ... are
  de-interleaved (view(d/2, 2).transpose) and then rotated with rotate_half; cos/sin from YaRN
  (rope_scaling type yarn: frequencies ramped between the beta_fast / beta_slow correction dims,
  tables times mscale(factor, mscale) / mscale(factor, mscale_all_dim)), softmax scale
  mscale(factor, mscale_all_dim)^2 / sqrt(qk_nope_head_dim + qk_rope_head_dim);
- the MoE after first_k_dense_replace dense layers: V3 (noaux_tc) sigmoid scores, selection by
  score + e_score_correction_bias within the best topk_group of n_group groups (a group's score:
  the sum of its two best biased scores), weights = the chosen unbiased scores normalised
  (norm_topk_prob) times routed_scaling_factor; V2-Lite (greedy) softmax over all experts, top-k,
  not renormalised; V2 (group_limited_greedy) the same within the best topk_group of n_group
  groups, a group scored by its best expert; plus n_shared_experts shared experts in one MLP of
  n_shared * moe_intermediate.

It writes tiny random models as HF directories (DeepSeek's published names: mlp.experts.E.
{gate,up,down}_proj, mlp.gate.weight / e_score_correction_bias; V3 with an MTP layer
model.layers.{L}.* = embed_tokens, enorm, hnorm, eh_proj, a decoder layer, shared_head.norm /
head), converts them with the built `primus`, and compares the logits of the Primus checkpoint
(convert_logits_dump) with its own, max |ours - reference| / max |reference| < 1e-5, and the
mean loss and each MTP layer's mean loss within 1e-5 relative. V2 with group_limited_greedy:
a group scored by its best expert.

Usage: check_hf_import_deepseek.py --primus build/bin/primus --dump build/bin/convert_logits_dump
"""
import argparse
import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_hf_import as base  # noqa: E402  (safetensors I/O, HF dir writer, run/check helpers)

TOL = 1e-5


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_tables(cfg, T):
    dim, base_theta = cfg["qk_rope_head_dim"], cfg["rope_theta"]
    inv = 1.0 / (base_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rs = cfg.get("rope_scaling")
    attention_factor, softmax_mult = 1.0, 1.0
    if rs and rs.get("type", rs.get("rope_type")) == "yarn":
        f, L = rs["factor"], rs["original_max_position_embeddings"]

        def corr(rot):
            return (dim * math.log(L / (rot * 2 * math.pi))) / (2 * math.log(base_theta))

        low, high = max(math.floor(corr(rs["beta_fast"])), 0), min(math.ceil(corr(rs["beta_slow"])), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extra = 1 - ramp
        inv = (inv / f) * (1 - extra) + inv * extra
        attention_factor = yarn_get_mscale(f, rs["mscale"]) / yarn_get_mscale(f, rs["mscale_all_dim"])
        if rs["mscale_all_dim"]:
            softmax_mult = yarn_get_mscale(f, rs["mscale_all_dim"]) ** 2
    t = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor, softmax_mult


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def rope_interleaved(x, cos, sin):
    """x (B, heads, T, d) in DeepSeek's interleaved pair layout."""
    b, h, s, d = x.shape
    x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return x * cos + rotate_half(x) * sin


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def mlp(W, p, x):
    return (torch.nn.functional.silu(x @ W[p + "gate_proj.weight"].T) * (x @ W[p + "up_proj.weight"].T)) @ \
        W[p + "down_proj.weight"].T


def moe(cfg, W, p, x, v2_group_score="max"):
    """v2_group_score "sum2" scores V2's groups by their top 2 instead: only to show that the
    grouped V2 case tells the two apart."""
    N, E, k = x.shape[0], cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    logits = x @ W[p + "gate.weight"].T
    if cfg["scoring_func"] == "sigmoid":
        scores = logits.sigmoid()
    else:
        scores = logits.softmax(-1)
    if cfg["topk_method"] == "noaux_tc":
        choice = scores + W[p + "gate.e_score_correction_bias"]
        g = cfg["n_group"]
        group_scores = choice.view(N, g, -1).topk(2, dim=-1)[0].sum(-1)
        gidx = group_scores.topk(cfg["topk_group"], dim=-1)[1]
        gmask = torch.zeros_like(group_scores).scatter_(1, gidx, 1)
        smask = gmask.unsqueeze(-1).expand(N, g, E // g).reshape(N, -1)
        idx = choice.masked_fill(smask == 0, 0.0).topk(k, dim=-1)[1]
        weights = scores.gather(1, idx)
    elif cfg["topk_method"] == "group_limited_greedy":  # V2: a group's score is its best expert's
        g = cfg["n_group"]
        grouped = scores.view(N, g, -1)
        group_scores = grouped.max(dim=-1).values if v2_group_score == "max" else grouped.topk(2, -1)[0].sum(-1)
        gidx = group_scores.topk(cfg["topk_group"], dim=-1)[1]
        gmask = torch.zeros_like(group_scores).scatter_(1, gidx, 1)
        smask = gmask.unsqueeze(-1).expand(N, g, E // g).reshape(N, -1)
        weights, idx = scores.masked_fill(smask == 0, 0.0).topk(k, dim=-1)
    else:  # greedy (n_group ignored)
        weights, idx = scores.topk(k, dim=-1)
    if cfg["norm_topk_prob"]:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    weights = weights * cfg["routed_scaling_factor"]
    out = torch.zeros_like(x)
    for e in range(E):
        w_e = (weights * (idx == e)).sum(-1, keepdim=True)
        out = out + w_e * mlp(W, f"{p}experts.{e}.", x)
    if cfg.get("n_shared_experts"):
        out = out + mlp(W, p + "shared_experts.", x)
    return out


def deepseek_logits(cfg, W, tokens, v2_group_score="max"):
    return deepseek_forward(cfg, W, tokens, None, v2_group_score)[0]


def deepseek_forward(cfg, W, tokens, labels=None, v2_group_score="max"):
    """Logits (B,T,V) and, with labels (B,T), the mean cross-entropy and per MTP layer its mean
    loss: MTP layer m = num_hidden_layers + k (DeepSeek-V3's layout: embed_tokens, enorm, hnorm,
    eh_proj, a decoder layer, shared_head.norm / head) at position i predicts token i + k + 2
    from its previous hidden state (the main model's last layer output for k = 0) and the
    embedding of token i + k + 1: h = layer(eh_proj([enorm(emb) | hnorm(h_prev)])), logits =
    shared_head.head(shared_head.norm(h)); positions past the end carry no loss."""
    W = {n: w.double() for n, w in W.items()}
    B, T = tokens.shape
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Dn, Dr, Dv, L = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    eps = cfg["rms_norm_eps"]
    cos, sin, mult = rope_tables(cfg, T)
    scale = mult / math.sqrt(Dn + Dr)
    x = W["model.embed_tokens.weight"][tokens.long()]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)

    def layer(x, l):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        if cfg.get("q_lora_rank"):
            q = rms(h @ W[a + "q_a_proj.weight"].T, W[a + "q_a_layernorm.weight"], eps) @ W[a + "q_b_proj.weight"].T
        else:
            q = h @ W[a + "q_proj.weight"].T
        q = q.view(B, T, H, Dn + Dr).transpose(1, 2)
        q_nope, q_pe = q[..., :Dn], q[..., Dn:]
        kv_a = h @ W[a + "kv_a_proj_with_mqa.weight"].T
        c_kv, k_pe = kv_a[..., :L], kv_a[..., L:]
        kv = (rms(c_kv, W[a + "kv_a_layernorm.weight"], eps) @ W[a + "kv_b_proj.weight"].T)
        kv = kv.view(B, T, H, Dn + Dv).transpose(1, 2)
        k_nope, v = kv[..., :Dn], kv[..., Dn:]
        k_pe = k_pe.view(B, 1, T, Dr)
        q_pe, k_pe = rope_interleaved(q_pe, cos, sin), rope_interleaved(k_pe, cos, sin)
        qs = torch.cat([q_nope, q_pe], -1)
        ks = torch.cat([k_nope, k_pe.expand(B, H, T, Dr)], -1)
        s = (qs @ ks.transpose(-1, -2)) * scale
        o = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + o.transpose(1, 2).reshape(B, T, H * Dv) @ W[a + "o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if l >= cfg["first_k_dense_replace"]:
            return x + moe(cfg, W, p + "mlp.", h.reshape(B * T, C), v2_group_score).view(B, T, C)
        return x + mlp(W, p + "mlp.", h)

    for l in range(cfg["num_hidden_layers"]):
        x = layer(x, l)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    logits = rms(x, W["model.norm.weight"], eps) @ head.T
    if labels is None:
        return logits, None, []

    def mean_ce(lg, lb):
        keep = lb >= 0
        return torch.nn.functional.cross_entropy(lg[keep], lb[keep].long()).item()

    loss, mtp, h = mean_ce(logits, labels), [], x
    for k in range(cfg.get("num_nextn_predict_layers", 0)):
        p, shift = f"model.layers.{cfg['num_hidden_layers'] + k}.", k + 1
        nxt = torch.zeros_like(tokens)
        nxt[:, :T - shift] = tokens[:, shift:]
        e = W[p + "embed_tokens.weight"][nxt.long()]
        u = torch.cat([rms(e, W[p + "enorm.weight"], eps), rms(h, W[p + "hnorm.weight"], eps)], -1) @ \
            W[p + "eh_proj.weight"].T
        h = layer(u, cfg["num_hidden_layers"] + k)
        lg = rms(h, W[p + "shared_head.norm.weight"], eps) @ W[p + "shared_head.head.weight"].T
        lb = torch.full_like(labels, -1)
        lb[:, :T - shift] = labels[:, shift:]
        mtp.append(mean_ce(lg, lb))
    return logits, loss, mtp


def random_weights(cfg, seed, mtp_layers=0):
    g = torch.Generator().manual_seed(seed)
    C, H, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    Dn, Dr, Dv, L, Lq = (cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"],
                         cfg.get("q_lora_rank"))
    F, Fe, E = cfg["intermediate_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]
    Fs = cfg["n_shared_experts"] * Fe
    W = {}

    def rnd(name, *shape, std=0.15):
        W[name] = torch.randn(*shape, generator=g) * std

    def norm(name, n):
        W[name] = 1.0 + 0.1 * torch.randn(n, generator=g)

    rnd("model.embed_tokens.weight", V, C, std=0.5)
    for l in range(cfg["num_hidden_layers"] + mtp_layers):
        p = f"model.layers.{l}."
        norm(p + "input_layernorm.weight", C)
        norm(p + "post_attention_layernorm.weight", C)
        a = p + "self_attn."
        if Lq:
            rnd(a + "q_a_proj.weight", Lq, C)
            norm(a + "q_a_layernorm.weight", Lq)
            rnd(a + "q_b_proj.weight", H * (Dn + Dr), Lq)
        else:
            rnd(a + "q_proj.weight", H * (Dn + Dr), C)
        rnd(a + "kv_a_proj_with_mqa.weight", L + Dr, C)
        norm(a + "kv_a_layernorm.weight", L)
        rnd(a + "kv_b_proj.weight", H * (Dn + Dv), L)
        rnd(a + "o_proj.weight", C, H * Dv)
        m = p + "mlp."
        if l < cfg["first_k_dense_replace"]:
            rnd(m + "gate_proj.weight", F, C)
            rnd(m + "up_proj.weight", F, C)
            rnd(m + "down_proj.weight", C, F)
            continue
        rnd(m + "gate.weight", E, C, std=0.5)
        if cfg["topk_method"] == "noaux_tc":
            rnd(m + "gate.e_score_correction_bias", E, std=0.1)
        for e in range(E):
            rnd(f"{m}experts.{e}.gate_proj.weight", Fe, C)
            rnd(f"{m}experts.{e}.up_proj.weight", Fe, C)
            rnd(f"{m}experts.{e}.down_proj.weight", C, Fe)
        if Fs:
            rnd(m + "shared_experts.gate_proj.weight", Fs, C)
            rnd(m + "shared_experts.up_proj.weight", Fs, C)
            rnd(m + "shared_experts.down_proj.weight", C, Fs)
        if l >= cfg["num_hidden_layers"]:  # V3's MTP layer extras
            for n in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
                norm(p + n, C)
            rnd(p + "eh_proj.weight", C, 2 * C)
    norm("model.norm.weight", C)
    if not cfg.get("tie_word_embeddings"):
        rnd("lm_head.weight", V, C, std=0.5)
    for l in range(cfg["num_hidden_layers"], cfg["num_hidden_layers"] + mtp_layers):
        # DeepSeek-V3 stores copies of the shared embedding and output head in each MTP layer.
        W[f"model.layers.{l}.embed_tokens.weight"] = W["model.embed_tokens.weight"].clone()
        W[f"model.layers.{l}.shared_head.head.weight"] = (W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings")
                                                         else W["lm_head.weight"]).clone()
    return W


def compare(args, name, hf_dir, save, cfg, W, tokens, labels, mtp_layers=0):
    """Import, then logits, the mean loss and each MTP layer's mean loss against the reference
    (MTP: the model must have imported mtp_layers of them)."""
    out = base.run([args.primus, "convert", "hf-to-primus", "--hf-dir", hf_dir, "--output", save])
    print(out, end="")
    stem = name.replace(" ", "_")
    tok_file = os.path.join(args.workdir, stem + ".tokens.safetensors")
    out_file = os.path.join(args.workdir, stem + ".logits.safetensors")
    base.write_safetensors(tok_file, {"tokens": tokens.to(torch.int32), "labels": labels.to(torch.int32)})
    base.run([args.dump, save, tok_file, out_file])
    got, meta = base.read_safetensors(out_file)
    ours = base.to_torch(got["logits"])
    ref, ref_loss, ref_mtp = deepseek_forward(cfg, W, tokens, labels)
    err = (ours.double() - ref).abs().max().item() / ref.abs().max().item()
    print(f"{name}: logits {tuple(ref.shape)} max rel err {err:.2e} (tolerance {TOL:.0e})")
    base.check(err < TOL, f"{name}: logits error {err:.3e} >= {TOL}")
    model = json.loads(meta["model"])
    base.check(model["mtp_num_layers"] == mtp_layers == len(ref_mtp),
               f"{name}: imported {model['mtp_num_layers']} MTP layers, want {mtp_layers} (reference {len(ref_mtp)})")
    losses = [("loss", base.to_torch(got["loss"]).item(), ref_loss)]
    losses += [(f"mtp_loss.{k}", base.to_torch(got[f"mtp_loss.{k}"]).item(), r) for k, r in enumerate(ref_mtp)
               if f"mtp_loss.{k}" in got]
    base.check(len(losses) == 1 + len(ref_mtp), f"{name}: the dump has {len(losses) - 1} MTP losses")
    for what, o, r in losses:
        e = abs(o - r) / abs(r)
        print(f"{name}: {what} {o:.6f} vs reference {r:.6f}, rel err {e:.2e}")
        base.check(e < TOL, f"{name}: {what} error {e:.3e} >= {TOL}")
    return out


def check_export(args, name, save, cfg, W, skip_prefix=None):
    """primus-to-hf (fp32) gives back every original tensor bit for bit (the rotary rows
    re-interleaved) and a config.json with the original's DeepSeek fields."""
    out_dir = os.path.join(args.workdir, "export_" + name.replace(" ", "_"))
    base.run([args.primus, "convert", "primus-to-hf", "--load", save, "--output", out_dir, "--dtype", "fp32",
              "--force"])
    got, _ = base.read_hf_dir(out_dir)
    want = {n: w for n, w in W.items() if not (skip_prefix and n.startswith(skip_prefix))}
    base.check(set(got) == set(want), f"{name} export: tensor names differ: missing "
               f"{sorted(set(want) - set(got))[:4]}, extra {sorted(set(got) - set(want))[:4]}")
    for n, w in want.items():
        if n in got:
            t = base.to_torch(got[n])
            base.check(t.dtype == torch.float32 and torch.equal(t, w.float()), f"{name} export: '{n}' differs")
    with open(os.path.join(out_dir, "config.json")) as f:
        c = json.load(f)
    for k in ("model_type", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
              "num_attention_heads", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
              "routed_scaling_factor", "first_k_dense_replace", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim", "topk_method", "scoring_func", "norm_topk_prob", "n_group",
              "topk_group", "vocab_size", "tie_word_embeddings"):
        base.check(c.get(k) == cfg.get(k), f"{name} export: config.json {k} = {c.get(k)}, want {cfg.get(k)}")
    base.check(c.get("num_nextn_predict_layers", 0) == cfg.get("num_nextn_predict_layers", 0),
               f"{name} export: num_nextn_predict_layers = {c.get('num_nextn_predict_layers')}, want "
               f"{cfg.get('num_nextn_predict_layers', 0)}")
    for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        base.check(c["rope_scaling"].get(k) == cfg["rope_scaling"][k],
                   f"{name} export: rope_scaling {k} = {c['rope_scaling'].get(k)}, want {cfg['rope_scaling'][k]}")
    print(f"{name}: primus-to-hf gives back {len(want)} tensors bit for bit")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primus", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", default="/tmp/primus_convert_deepseek")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    torch.set_num_threads(1)
    common = {"hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 53, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 4096, "kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
              "v_head_dim": 6, "rope_theta": 10000.0, "tie_word_embeddings": False, "moe_layer_freq": 1,
              "first_k_dense_replace": 1, "torch_dtype": "float32"}
    # V3-shaped: a query latent, sigmoid routing with the expert bias in 2 of 4 groups, a shared
    # expert, YaRN with mscale != mscale_all_dim (scaled tables), one MTP layer (a MoE layer).
    v3 = dict(common, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", num_hidden_layers=3,
              q_lora_rank=10, n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, n_group=4,
              topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
              routed_scaling_factor=2.5, num_nextn_predict_layers=1,
              rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 8,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8})
    W3 = random_weights(v3, 11, mtp_layers=1)
    hf3 = os.path.join(args.workdir, "hf_v3")
    base.write_hf_dir(hf3, v3, W3, shards=2)
    stream = torch.randint(0, v3["vocab_size"], (2, 25), generator=torch.Generator().manual_seed(3))
    tokens, labels = stream[:, :-1], stream[:, 1:]
    out = compare(args, "deepseek-v3 shaped", hf3, os.path.join(args.workdir, "primus_v3"), v3, W3, tokens, labels,
                  mtp_layers=1)
    base.check("imported 1 multi-token-prediction layer" in out, "the V3 import does not say it imported the MTP layer")
    check_export(args, "deepseek-v3 shaped", os.path.join(args.workdir, "primus_v3"), v3, W3)
    # The same config without the MTP weights (as transformers saves V3): imported without MTP.
    L3 = f"model.layers.{v3['num_hidden_layers']}."
    W3m = {n: w for n, w in W3.items() if not n.startswith(L3)}
    hf3m = os.path.join(args.workdir, "hf_v3_no_mtp")
    base.write_hf_dir(hf3m, v3, W3m, shards=1)
    out = compare(args, "deepseek-v3 without MTP weights", hf3m, os.path.join(args.workdir, "primus_v3m"),
                  dict(v3, num_nextn_predict_layers=0), W3m, tokens, labels, mtp_layers=0)
    base.check("imported with mtp_num_layers 0" in out, "the V3 import without MTP weights does not say so")
    # An MTP layer whose embedding copy differs from the model's is refused by name.
    W3x = dict(W3)
    W3x[L3 + "embed_tokens.weight"] = W3[L3 + "embed_tokens.weight"] + 1.0
    hf3x = os.path.join(args.workdir, "hf_v3_mtp_own_embedding")
    base.write_hf_dir(hf3x, v3, W3x, shards=1)
    r = base.subprocess.run([args.primus, "convert", "hf-to-primus", "--hf-dir", hf3x, "--output",
                             os.path.join(args.workdir, "primus_bad_mtp")], capture_output=True, text=True)
    base.check(r.returncode != 0 and L3 + "embed_tokens.weight" in r.stderr,
               f"an MTP embedding that differs from the model's was not refused by name: rc {r.returncode}, "
               f"{r.stderr[-300:]}")
    # V2-Lite-shaped: queries projected directly, softmax over all experts without renormalising,
    # two shared experts, YaRN with mscale == mscale_all_dim.
    v2 = dict(common, architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", num_hidden_layers=2,
              q_lora_rank=None, n_routed_experts=6, num_experts_per_tok=3, n_shared_experts=2, n_group=1,
              topk_group=1, topk_method="greedy", scoring_func="softmax", norm_topk_prob=False,
              routed_scaling_factor=1.0,
              rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 8,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})
    W2 = random_weights(v2, 12)
    hf2 = os.path.join(args.workdir, "hf_v2")
    base.write_hf_dir(hf2, v2, W2, shards=1)
    compare(args, "deepseek-v2-lite shaped", hf2, os.path.join(args.workdir, "primus_v2"), v2, W2, tokens, labels)
    check_export(args, "deepseek-v2-lite shaped", os.path.join(args.workdir, "primus_v2"), v2, W2)
    # V2-shaped with group_limited_greedy: top-3 within the best 2 of 4 groups, a group scored by
    # its best expert (3 is no multiple of 2: only that score allows it), scaled by 16 like V2.
    v2g = dict(v2, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
               topk_method="group_limited_greedy", routed_scaling_factor=16.0)
    W2g = random_weights(v2g, 13)
    ref_max, ref_sum2 = deepseek_logits(v2g, W2g, tokens), deepseek_logits(v2g, W2g, tokens, "sum2")
    ungrouped = deepseek_logits(dict(v2g, topk_method="greedy"), W2g, tokens)
    for other, what in ((ref_sum2, "groups scored by their top 2"), (ungrouped, "no groups")):
        d = (other - ref_max).abs().max().item() / ref_max.abs().max().item()
        base.check(d > 100 * TOL, f"the grouped V2 case does not tell its routing from {what} ({d:.1e})")
    hf2g = os.path.join(args.workdir, "hf_v2_groups")
    base.write_hf_dir(hf2g, v2g, W2g, shards=1)
    compare(args, "deepseek-v2 grouped", hf2g, os.path.join(args.workdir, "primus_v2_groups"), v2g, W2g, tokens,
            labels)
    check_export(args, "deepseek-v2 grouped", os.path.join(args.workdir, "primus_v2_groups"), v2g, W2g)
    with open(os.path.join(args.workdir, "primus_v2_groups", "iter_0000000", "config.json")) as f:
        opts = json.load(f)["options"]
    base.check(opts.get("moe_router_group_score") == "max", "the V2 grouped import writes moe_router_group_score "
               f"{opts.get('moe_router_group_score')}, want max")
    # group_limited_greedy whose topk_group groups cannot hold num_experts_per_tok is refused by name.
    bad = dict(v2, n_group=3, topk_group=1, topk_method="group_limited_greedy")
    hfb = os.path.join(args.workdir, "hf_v2_bad_groups")
    base.write_hf_dir(hfb, bad, W2, shards=1)
    r = base.subprocess.run([args.primus, "convert", "hf-to-primus", "--hf-dir", hfb, "--output",
                             os.path.join(args.workdir, "primus_bad")], capture_output=True, text=True)
    base.check(r.returncode != 0 and "group_limited_greedy" in r.stderr and "topk_group" in r.stderr,
               f"group_limited_greedy with 1 of 3 groups for top-3 was not refused by name: rc {r.returncode}, "
               f"{r.stderr[-300:]}")
    print("FAIL" if base.FAILURES else "PASS")
    return 1 if base.FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
