#!/usr/bin/env python3
"""`primus convert` against an independent HuggingFace-layout Llama and Mixtral written in PyTorch.

The reference builds tiny random Llamas in HuggingFace's tensor names and layouts
(model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head; weights stored
(out_features, in_features)) and runs them the way transformers' modeling_llama does:
RMSNorm, rotate-half RoPE with cos/sin = cat(freqs, freqs) and Llama 3 frequency scaling
(`rope_type: llama3`), grouped-query attention by repeating each key/value head for
num_attention_heads / num_key_value_heads consecutive query heads, causal softmax
attention scaled by 1/sqrt(head_dim), the SwiGLU MLP, and a tied or untied lm_head.
Mixtral (MixtralForCausalLM) replaces every MLP with modeling_mixtral's sparse MoE block:
router probabilities = softmax over all experts of x @ gate^T, the top-k of them
renormalised to sum 1, output = sum over the chosen experts of weight * w2(silu(w1 x) * w3 x).
Its weights come in both of HF's layouts: per expert (model.layers.N.block_sparse_moe.gate,
block_sparse_moe.experts.E.{w1,w3,w2}: transformers 4.x and the published checkpoints) and
fused (model.layers.N.mlp.gate, mlp.experts.gate_up_proj (E, 2F, C) whose rows are
[gate | up] per expert, mlp.experts.down_proj (E, C, F): transformers 5); the reference reads
each layout by its own semantics. It writes each model as an HF directory (config.json + model.safetensors, or shards +
model.safetensors.index.json), runs `primus convert hf-to-primus`, loads the checkpoint
with our model (convert_logits_dump: CheckpointReader + config.json -> ModelConfig +
DecoderModel + load_tensors_into) and compares logits:

    error = max|ours - reference| / max|reference|  < 1e-5   (reference in float64)

It also checks, from the files alone: the Primus checkpoint's fused layouts (linear_qkv
rows = [q; k; v], linear_fc1 rows = [gate; up], the experts' linear_fc1 (E, 2F, C) = [w1_e;
w3_e] per expert and linear_fc2 (E, C, F) = w2_e) and tracker; and `primus convert
primus-to-hf` output (index format, config.json fields, every tensor bit-identical to the
original in fp32, equal to torch's bf16 rounding in bf16, sharding; Mixtral is written in
the per-expert layout whichever layout it was read from).

safetensors is read and written here from the format (8-byte little-endian header
length, JSON header, raw little-endian bytes), without the safetensors package.

Usage: check_hf_import.py --primus build/bin/primus --dump build/bin/convert_logits_dump
                          [--workdir DIR]
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch

TOL = 1e-5
NP_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "BF16": np.uint16,
             "F16": np.float16}


# ---- safetensors from the format ----------------------------------------------------

def to_bytes(t):
    """torch tensor -> (safetensors dtype, raw little-endian bytes)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return "BF16", t.view(torch.int16).numpy().tobytes()
    name = {torch.float32: "F32", torch.float16: "F16", torch.int32: "I32", torch.int64: "I64"}[t.dtype]
    return name, t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        dtype, raw = to_bytes(t)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """-> ({name: (dtype, shape, raw bytes)}, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[8 + n + b:8 + n + e])
    return out, meta


def to_torch(entry):
    dtype, shape, raw = entry
    arr = np.frombuffer(raw, dtype=NP_DTYPES[dtype]).reshape(shape).copy()
    if dtype == "BF16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


# ---- the HF-layout model ------------------------------------------------------------

def is_mixtral(cfg):
    return cfg.get("model_type") == "mixtral"


def hf_names(cfg, layout="per_expert"):
    """HF tensor names in order; Mixtral's experts per expert or fused (see the top)."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                  p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
                  p + "post_attention_layernorm.weight"]
        if not is_mixtral(cfg):
            names += [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
        elif layout == "fused":
            names += [p + "mlp.gate.weight", p + "mlp.experts.gate_up_proj", p + "mlp.experts.down_proj"]
        else:
            names.append(p + "block_sparse_moe.gate.weight")
            for e in range(cfg["num_local_experts"]):
                q = p + f"block_sparse_moe.experts.{e}."
                names += [q + "w1.weight", q + "w3.weight", q + "w2.weight"]
    names.append("model.norm.weight")
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    return names


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_theta(cfg):
    """transformers 4.x: top-level rope_theta; 5.x: rope_parameters.rope_theta."""
    return (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))


def random_weights(cfg, seed):
    """Random HF-named weights; Mixtral's in the per-expert layout (to_fused converts)."""
    g = torch.Generator().manual_seed(seed)
    C, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, G, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    shapes = {"q_proj": (H * D, C), "k_proj": (G * D, C), "v_proj": (G * D, C), "o_proj": (C, H * D),
              "gate_proj": (F, C), "up_proj": (F, C), "down_proj": (C, F),
              "w1": (F, C), "w3": (F, C), "w2": (C, F), "gate": (cfg.get("num_local_experts", 0), C)}
    w = {}
    for name in hf_names(cfg):
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            # Not all ones: a norm applied in the wrong place must show in the logits.
            w[name] = 1.0 + 0.2 * torch.randn(C, generator=g)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            w[name] = 0.5 * torch.randn(V, C, generator=g)
        else:
            kind = name.split(".")[-2]
            w[name] = torch.randn(*shapes[kind], generator=g) / math.sqrt(shapes[kind][1])
    return {k: v.float() for k, v in w.items()}


def to_fused(cfg, weights):
    """Per-expert Mixtral weights -> transformers 5's fused layout (the same values)."""
    out = {}
    for n, t in weights.items():
        if ".block_sparse_moe." not in n:
            out[n] = t
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        E = range(cfg["num_local_experts"])
        out[p + "mlp.gate.weight"] = weights[p + "block_sparse_moe.gate.weight"]
        out[p + "mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[p + f"block_sparse_moe.experts.{e}.w1.weight"],
                        weights[p + f"block_sparse_moe.experts.{e}.w3.weight"]], dim=0) for e in E])
        out[p + "mlp.experts.down_proj"] = torch.stack([weights[p + f"block_sparse_moe.experts.{e}.w2.weight"]
                                                        for e in E])
    return {n: out[n] for n in hf_names(cfg, "fused")}


def rope_inv_freq(cfg):
    """As transformers computes it: fp32 base^(-2i/D), then the llama3 rescaling by
    wavelength (kept below L/high, divided by factor above L/low, interpolated between)."""
    D = head_dim(cfg)
    inv = 1.0 / (rope_theta(cfg) ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if rs and rs.get("rope_type") == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        L = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > L / low, inv / factor, inv)
        smooth = (L / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < L / high) * ~(wavelen > L / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


ROUTER_GAPS = []  # the smallest top-k margin of each MoE reference forward


def mixtral_moe(cfg, W, p, x):
    """modeling_mixtral's sparse MoE block of layer prefix `p` on x (B,T,C), float64: router
    probabilities softmax(x @ gate^T) over all E experts, the top-k renormalised to sum 1,
    out = sum_j weight_j * w2_j(silu(w1_j x) * w3_j x). Reads the per-expert layout
    (block_sparse_moe.*) or the fused one (mlp.gate, mlp.experts.gate_up_proj whose output is
    chunked [gate | up], mlp.experts.down_proj), whichever `W` holds. Every token runs
    through every expert and the unchosen ones get weight 0: the same sum as HF's dispatch."""
    E, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    fused = p + "mlp.experts.gate_up_proj" in W
    router = W[p + "mlp.gate.weight"] if fused else W[p + "block_sparse_moe.gate.weight"]
    probs = torch.softmax(x @ router.T, dim=-1)  # (B,T,E)
    top, idx = torch.topk(probs, k, dim=-1)
    if k < E:  # how close the k-th and (k+1)-th experts come (an fp32 flip needs ~1e-7)
        ranked = torch.sort(probs, dim=-1, descending=True).values
        ROUTER_GAPS.append((ranked[..., k - 1] - ranked[..., k]).min().item())
    top = top / top.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(E):
        if fused:
            gate, up = (x @ W[p + "mlp.experts.gate_up_proj"][e].T).chunk(2, dim=-1)
            down = W[p + "mlp.experts.down_proj"][e]
        else:
            q = p + f"block_sparse_moe.experts.{e}."
            gate, up, down = x @ W[q + "w1.weight"].T, x @ W[q + "w3.weight"].T, W[q + "w2.weight"]
        weight = (top * (idx == e)).sum(dim=-1, keepdim=True)  # (B,T,1), 0 where e is not chosen
        out = out + weight * ((torch.nn.functional.silu(gate) * up) @ down.T)
    return out


def hf_llama_logits(cfg, weights, tokens):
    """Logits (B,T,V) in float64 from HF-named weights (any float dtype); Llama's dense MLP or
    Mixtral's MoE block."""
    W = {k: v.double() for k, v in weights.items()}
    B, T = tokens.shape
    H, G, D, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg), cfg["rms_norm_eps"]
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), rope_inv_freq(cfg).double())
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), diagonal=1)
    h = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, W[p + "input_layernorm.weight"], eps)
        q = (x @ W[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).view(B, T, G, D).transpose(1, 2)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).view(B, T, G, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // G, dim=1)  # HF repeat_kv: query head j reads kv head j // (H/G)
        v = v.repeat_interleave(H // G, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + causal, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        h = h + o @ W[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        if is_mixtral(cfg):
            h = h + mixtral_moe(cfg, W, p, x)
            continue
        gate = x @ W[p + "mlp.gate_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * (x @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return h @ head.T


# ---- HF directories ------------------------------------------------------------------

def write_hf_dir(path, cfg, weights, shards, extra=None):
    """config.json + weights, as one model.safetensors (shards == 1) or `shards` files
    model-0000i-of-0000N.safetensors with model.safetensors.index.json."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors = dict(weights)
    tensors.update(extra or {})
    names = list(tensors)
    if shards == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
        return
    weight_map, total = {}, 0
    per = (len(names) + shards - 1) // shards
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        write_safetensors(os.path.join(path, file), part, {"format": "pt"})
        for n, t in part.items():
            weight_map[n] = file
            total += t.numel() * t.element_size()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def read_hf_dir(path):
    """-> ({name: (dtype, shape, raw)}, files read), checking the index format when sharded."""
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        tensors, meta = read_safetensors(os.path.join(path, "model.safetensors"))
        check(meta.get("format") == "pt", f"{path}/model.safetensors: __metadata__ format is {meta}, want pt")
        return tensors, ["model.safetensors"]
    with open(index) as f:
        idx = json.load(f)
    check(set(idx) == {"metadata", "weight_map"}, f"{index}: keys {sorted(idx)}")
    files = sorted(set(idx["weight_map"].values()))
    out, total = {}, 0
    for file in files:
        tensors, meta = read_safetensors(os.path.join(path, file))
        check(meta.get("format") == "pt", f"{file}: __metadata__ {meta}")
        for name, e in tensors.items():
            check(idx["weight_map"].get(name) == file, f"{index}: '{name}' is in {file} but mapped to "
                  f"{idx['weight_map'].get(name)}")
            out[name] = e
            total += len(e[2])
    check(set(out) == set(idx["weight_map"]), f"{index}: weight_map and shard contents differ")
    check(idx["metadata"]["total_size"] == total, f"{index}: total_size {idx['metadata']['total_size']} != {total}")
    return out, files


# ---- checks --------------------------------------------------------------------------

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("FAIL:", msg)


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print(r.stdout)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def rel_err(ours, ref):
    return (ours.double() - ref).abs().max().item() / ref.abs().max().item()


def compare_logits(args, name, save_dir, cfg, ref_weights, tokens, expect_match=True):
    stem = "".join(c if c.isalnum() else "_" for c in name)
    tok_file = os.path.join(args.workdir, stem + ".tokens.safetensors")
    out_file = os.path.join(args.workdir, stem + ".logits.safetensors")
    write_safetensors(tok_file, {"tokens": tokens.to(torch.int32)})
    run([args.dump, save_dir, tok_file, out_file])
    got, meta = read_safetensors(out_file)
    ours = to_torch(got["logits"])
    if is_mixtral(cfg):  # the model that was built is the MoE one
        m = json.loads(meta["model"])
        want = {"num_experts": cfg["num_local_experts"], "moe_router_topk": cfg["num_experts_per_tok"],
                "moe_ffn_hidden_size": cfg["intermediate_size"], "moe_layers": cfg["num_hidden_layers"]}
        for k, v in want.items():
            check(m.get(k) == v, f"{name}: the loaded model has {k} = {m.get(k)}, want {v}")
    ROUTER_GAPS.clear()
    ref = hf_llama_logits(cfg, ref_weights, tokens)
    check(tuple(ours.shape) == tuple(ref.shape), f"{name}: logits shape {tuple(ours.shape)} != {tuple(ref.shape)}")
    err = rel_err(ours, ref)
    gap = f", smallest top-k router margin {min(ROUTER_GAPS):.1e}" if ROUTER_GAPS else ""
    print(f"{name}: logits {tuple(ref.shape)} max rel err {err:.2e} (tolerance {TOL:.0e}){gap}")
    if expect_match:
        check(err < TOL, f"{name}: logits error {err:.3e} >= {TOL}")
    return err


def check_primus_layout(name, save_dir, cfg, weights, dtype):
    """The checkpoint files themselves: tracker, fused layouts, config.json model keys."""
    with open(os.path.join(save_dir, "latest_checkpointed_iteration.txt")) as f:
        it = int(f.read().strip())
    ckpt = os.path.join(save_dir, f"iter_{it:07d}")
    tensors, _ = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    cast = (lambda t: t.to(torch.bfloat16)) if dtype == "BF16" else (lambda t: t)
    def same(primus_name, parts):
        got = tensors[primus_name]
        check(got[0] == dtype, f"{name}: {primus_name} is {got[0]}, want {dtype}")
        want = cast(torch.cat([weights[p] for p in parts], dim=0))
        check(to_bytes(want)[1] == got[2], f"{name}: {primus_name} != concat of {parts}")
    same("embedding.word_embeddings.weight", ["model.embed_tokens.weight"])
    fused = any(n.endswith(".mlp.experts.gate_up_proj") for n in weights)
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
        same(p + "self_attention.linear_qkv.weight",
             [q + "self_attn.q_proj.weight", q + "self_attn.k_proj.weight", q + "self_attn.v_proj.weight"])
        same(p + "self_attention.linear_proj.weight", [q + "self_attn.o_proj.weight"])
        if not is_mixtral(cfg):
            same(p + "mlp.linear_fc1.weight", [q + "mlp.gate_proj.weight", q + "mlp.up_proj.weight"])
            same(p + "mlp.linear_fc2.weight", [q + "mlp.down_proj.weight"])
        elif fused:  # transformers 5's tensors are Primus's, byte for byte
            same(p + "mlp.router.weight", [q + "mlp.gate.weight"])
            same(p + "mlp.experts.linear_fc1.weight", [q + "mlp.experts.gate_up_proj"])
            same(p + "mlp.experts.linear_fc2.weight", [q + "mlp.experts.down_proj"])
        else:  # (E, 2F, C) = [w1_0; w3_0; w1_1; w3_1; ...] and (E, C, F) = [w2_0; w2_1; ...]
            E = range(cfg["num_local_experts"])
            x = q + "block_sparse_moe."
            same(p + "mlp.router.weight", [x + "gate.weight"])
            same(p + "mlp.experts.linear_fc1.weight",
                 [x + f"experts.{e}.{w}.weight" for e in E for w in ("w1", "w3")])
            same(p + "mlp.experts.linear_fc2.weight", [x + f"experts.{e}.w2.weight" for e in E])
        same(p + "input_layernorm.weight", [q + "input_layernorm.weight"])
        same(p + "pre_mlp_layernorm.weight", [q + "post_attention_layernorm.weight"])
    same("decoder.final_layernorm.weight", ["model.norm.weight"])
    if not cfg["tie_word_embeddings"]:
        same("output_layer.weight", ["lm_head.weight"])
    per_layer = 7 if is_mixtral(cfg) else 6  # norms, qkv, proj + fc1, fc2 (+ router)
    expected = 3 + per_layer * cfg["num_hidden_layers"] - (1 if cfg["tie_word_embeddings"] else 0)
    check(len(tensors) == expected, f"{name}: {len(tensors)} tensors in the checkpoint, want {expected}")
    with open(os.path.join(ckpt, "config.json")) as f:
        opts = json.load(f)["options"]
    want = {"num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
            "ffn_hidden_size": cfg["intermediate_size"], "num_attention_heads": cfg["num_attention_heads"],
            "num_query_groups": cfg["num_key_value_heads"], "kv_channels": head_dim(cfg),
            "vocab_size": cfg["vocab_size"], "make_vocab_size_divisible_by": 1,
            "untie_embeddings_and_output_weights": not cfg["tie_word_embeddings"],
            "normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope"}
    if is_mixtral(cfg):
        want.update({"num_experts": cfg["num_local_experts"], "moe_router_topk": cfg["num_experts_per_tok"],
                     "moe_ffn_hidden_size": cfg["intermediate_size"], "moe_layer_freq": "1",
                     "moe_router_score_function": "softmax", "moe_router_pre_softmax": False,
                     "moe_router_load_balancing_type": "aux_loss",
                     "moe_aux_loss_coeff": cfg.get("router_aux_loss_coef", 0.001)})
    for k, v in want.items():
        check(opts.get(k) == v, f"{name}: config.json options[{k}] = {opts.get(k)}, want {v}")
    with open(os.path.join(ckpt, "meta.json")) as f:
        meta = json.load(f)
    check(meta["iteration"] == it, f"{name}: meta.json iteration {meta['iteration']} != tracker {it}")


def check_export(name, hf_out, cfg, weights, dtype, min_files):
    tensors, files = read_hf_dir(hf_out)
    print(f"{name}: exported {len(tensors)} tensors in {len(files)} file(s)")
    check(len(files) >= min_files, f"{name}: {len(files)} weight files, want >= {min_files}")
    check(set(tensors) == set(weights), f"{name}: exported names differ: extra {sorted(set(tensors) - set(weights))}, "
          f"missing {sorted(set(weights) - set(tensors))}")
    cast = (lambda t: t.to(torch.bfloat16)) if dtype == "BF16" else (lambda t: t)
    for n, w in weights.items():
        if n not in tensors:
            continue
        got = tensors[n]
        check(got[0] == dtype and list(got[1]) == list(w.shape), f"{name}: {n} is {got[0]}{got[1]}, want "
              f"{dtype}{list(w.shape)}")
        check(to_bytes(cast(w))[1] == got[2], f"{name}: {n} is not bit-identical to the original"
              + (" after torch's bf16 rounding" if dtype == "BF16" else ""))
    with open(os.path.join(hf_out, "config.json")) as f:
        out_cfg = json.load(f)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"):
        check(out_cfg.get(k) == cfg[k], f"{name}: config.json {k} = {out_cfg.get(k)}, want {cfg[k]}")
    check(out_cfg.get("rope_theta") == rope_theta(cfg), f"{name}: rope_theta {out_cfg.get('rope_theta')}")
    check(out_cfg.get("head_dim") == head_dim(cfg), f"{name}: head_dim {out_cfg.get('head_dim')}")
    arch, mtype = ("MixtralForCausalLM", "mixtral") if is_mixtral(cfg) else ("LlamaForCausalLM", "llama")
    check(out_cfg.get("architectures") == [arch] and out_cfg.get("model_type") == mtype,
          f"{name}: architectures/model_type {out_cfg.get('architectures')} {out_cfg.get('model_type')}")
    if is_mixtral(cfg):
        want = {"num_local_experts": cfg["num_local_experts"], "num_experts_per_tok": cfg["num_experts_per_tok"],
                "router_aux_loss_coef": cfg.get("router_aux_loss_coef", 0.001), "output_router_logits": False,
                "router_jitter_noise": 0.0, "sliding_window": None}
        for k, v in want.items():
            check(k in out_cfg and out_cfg[k] == v, f"{name}: config.json {k} = {out_cfg.get(k, '(absent)')}, want {v}")
    check(out_cfg.get("torch_dtype") == {"F32": "float32", "BF16": "bfloat16"}[dtype],
          f"{name}: torch_dtype {out_cfg.get('torch_dtype')}")
    rs_in, rs_out = cfg.get("rope_scaling"), out_cfg.get("rope_scaling")
    if rs_in:
        for k, v in rs_in.items():
            check(rs_out and rs_out.get(k) == v, f"{name}: rope_scaling[{k}] = {rs_out and rs_out.get(k)}, want {v}")
    else:
        check(rs_out is None, f"{name}: rope_scaling {rs_out}, want null")
    for k in ("bos_token_id", "eos_token_id"):
        check(out_cfg.get(k) == cfg.get(k), f"{name}: {k} = {out_cfg.get(k)}, want {cfg.get(k)} (from the import)")
    check(os.path.exists(os.path.join(hf_out, "generation_config.json")), f"{name}: no generation_config.json")
    # And the exported model computes what the original does.
    exported = {n: to_torch(e) for n, e in tensors.items()}
    tokens = torch.randint(0, cfg["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(5))
    err = rel_err(hf_llama_logits(cfg, exported, tokens), hf_llama_logits(cfg, {n: cast(w) for n, w in weights.items()}, tokens))
    check(err == 0, f"{name}: logits of the exported weights differ from the original ({err})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primus", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", default="/tmp/primus_convert_check")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    torch.manual_seed(0)

    def convert_in(hf_dir, save, *extra):
        return run([args.primus, "convert", "hf-to-primus", "--hf-dir", hf_dir, "--output", save, *extra])

    # A: GQA, untied, Llama 3.1 RoPE scaling with frequencies in all three bands (head_dim
    # 16, theta 5e5, original context 64: wavelengths 6.3 kept, 32 interpolated, >64
    # divided), an odd vocabulary, fp32, three shards.
    cfg_a = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
             "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 61, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64},
             "torch_dtype": "float32"}
    w_a = random_weights(cfg_a, 1)
    hf_a = os.path.join(args.workdir, "hf_a")
    write_hf_dir(hf_a, cfg_a, w_a, shards=3)
    tokens_a = torch.randint(0, cfg_a["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(2))
    save_a = os.path.join(args.workdir, "primus_a")
    print(convert_in(hf_a, save_a), end="")
    check_primus_layout("A fp32 sharded", save_a, cfg_a, w_a, "F32")
    compare_logits(args, "A fp32 sharded", save_a, cfg_a, w_a, tokens_a)

    # A in bf16 (--dtype bf16): the reference uses torch's bf16 rounding of the same weights.
    save_a16 = os.path.join(args.workdir, "primus_a_bf16")
    convert_in(hf_a, save_a16, "--dtype", "bf16", "--iteration", "7")
    check_primus_layout("A bf16", save_a16, cfg_a, w_a, "BF16")
    w_a16 = {n: w.to(torch.bfloat16) for n, w in w_a.items()}
    compare_logits(args, "A bf16", save_a16, cfg_a, w_a16, tokens_a)

    # B: multi-head, tied embeddings, head_dim 12 with hidden 24 (H*D != C), plain RoPE,
    # eps 1e-6, stored in bf16 as one file, with a stale rotary_emb.inv_freq tensor.
    cfg_b = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
             "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 3, "num_attention_heads": 3,
             "num_key_value_heads": 3, "head_dim": 12, "vocab_size": 37, "max_position_embeddings": 128,
             "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True, "rope_scaling": None,
             "bos_token_id": 0, "eos_token_id": 36, "torch_dtype": "bfloat16"}
    w_b = {n: w.to(torch.bfloat16) for n, w in random_weights(cfg_b, 3).items()}
    hf_b = os.path.join(args.workdir, "hf_b")
    write_hf_dir(hf_b, cfg_b, w_b, shards=1,
                 extra={"model.layers.0.self_attn.rotary_emb.inv_freq": rope_inv_freq(cfg_b)})
    save_b = os.path.join(args.workdir, "primus_b")
    out = convert_in(hf_b, save_b)
    check("rotary_emb.inv_freq" in out, "B: the ignored inv_freq tensor is not reported")
    check_primus_layout("B bf16 tied", save_b, cfg_b, w_b, "BF16")
    tokens_b = torch.randint(0, cfg_b["vocab_size"], (3, 17), generator=torch.Generator().manual_seed(4))
    compare_logits(args, "B bf16 tied", save_b, cfg_b, w_b, tokens_b)

    # Export back: A in fp32 with small shards (bit-identical), A in bf16 (default dtype),
    # B in bf16 (bit-identical, tied: no lm_head).
    hf_back_a = os.path.join(args.workdir, "hf_back_a")
    run([args.primus, "convert", "primus-to-hf", "--load", save_a, "--output", hf_back_a, "--dtype", "fp32",
         "--max-shard-size", "40KB"])
    check_export("A -> HF fp32", hf_back_a, cfg_a, w_a, "F32", min_files=3)
    hf_back_a16 = os.path.join(args.workdir, "hf_back_a16")
    run([args.primus, "convert", "primus-to-hf", "--load", save_a, "--output", hf_back_a16])
    check_export("A -> HF bf16", hf_back_a16, cfg_a, w_a, "BF16", min_files=1)
    hf_back_b = os.path.join(args.workdir, "hf_back_b")
    run([args.primus, "convert", "primus-to-hf", "--load", save_b, "--output", hf_back_b])
    check_export("B -> HF bf16", hf_back_b, cfg_b, w_b, "BF16", min_files=1)

    # M: Mixtral in transformers 4.x's per-expert layout: 4 experts, top-2, GQA, untied, hidden
    # 48 with expert inner size 40, rope_theta 1e6, fp32, two shards.
    cfg_m = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
             "hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 53, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
             "rope_theta": 1e6, "tie_word_embeddings": False, "num_local_experts": 4, "num_experts_per_tok": 2,
             "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0, "output_router_logits": False,
             "sliding_window": None, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
             "torch_dtype": "float32"}
    w_m = random_weights(cfg_m, 11)
    hf_m = os.path.join(args.workdir, "hf_mixtral")
    write_hf_dir(hf_m, cfg_m, w_m, shards=2)
    save_m = os.path.join(args.workdir, "primus_mixtral")
    out = convert_in(hf_m, save_m)
    print(out, end="")
    check("per-expert layout" in out, "M: the per-expert MoE layout is not reported")
    check_primus_layout("M mixtral per-expert fp32", save_m, cfg_m, w_m, "F32")
    tokens_m = torch.randint(0, cfg_m["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(12))
    compare_logits(args, "M mixtral per-expert fp32", save_m, cfg_m, w_m, tokens_m)
    # The same weights in transformers 5's fused layout: the reference reads them its own way.
    w_mf = to_fused(cfg_m, w_m)
    ref_err = rel_err(hf_llama_logits(cfg_m, w_mf, tokens_m).float(), hf_llama_logits(cfg_m, w_m, tokens_m))
    check(ref_err < 1e-7, f"M: the reference's fused and per-expert paths differ ({ref_err:.2e})")
    hf_mf = os.path.join(args.workdir, "hf_mixtral_fused")
    write_hf_dir(hf_mf, cfg_m, w_mf, shards=1)
    save_mf = os.path.join(args.workdir, "primus_mixtral_fused")
    out = convert_in(hf_mf, save_mf)
    check("fused layout" in out, "M fused: the fused MoE layout is not reported")
    check_primus_layout("M mixtral fused fp32", save_mf, cfg_m, w_mf, "F32")
    compare_logits(args, "M mixtral fused fp32", save_mf, cfg_m, w_mf, tokens_m)

    # N: Mixtral as transformers 5 writes config.json (rope_parameters, no top-level
    # rope_theta) in the fused layout: 5 experts, top-3, tied embeddings, head_dim 12 with
    # hidden 32 (H*D != C), multi-head, three layers, fp32.
    cfg_n = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
             "hidden_size": 32, "intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 3,
             "num_key_value_heads": 3, "head_dim": 12, "vocab_size": 41, "max_position_embeddings": 128,
             "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
             "tie_word_embeddings": True, "num_local_experts": 5, "num_experts_per_tok": 3,
             "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "output_router_logits": True,
             "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "dtype": "float32"}
    w_n = random_weights(cfg_n, 13)
    w_nf = to_fused(cfg_n, w_n)
    hf_n = os.path.join(args.workdir, "hf_mixtral_n")
    write_hf_dir(hf_n, cfg_n, w_nf, shards=2)
    save_n = os.path.join(args.workdir, "primus_mixtral_n")
    convert_in(hf_n, save_n)
    check_primus_layout("N mixtral fused tied", save_n, cfg_n, w_nf, "F32")
    tokens_n = torch.randint(0, cfg_n["vocab_size"], (3, 15), generator=torch.Generator().manual_seed(14))
    compare_logits(args, "N mixtral fused tied", save_n, cfg_n, w_nf, tokens_n)

    # Export back: per expert whichever layout was read, bit for bit in fp32.
    for tag, save, cfg, w in (("M", save_m, cfg_m, w_m), ("M fused", save_mf, cfg_m, w_m), ("N", save_n, cfg_n, w_n)):
        hf_back = os.path.join(args.workdir, "hf_back_" + tag.replace(" ", "_"))
        run([args.primus, "convert", "primus-to-hf", "--load", save, "--output", hf_back, "--dtype", "fp32",
             "--max-shard-size", "60KB"])
        check_export(f"{tag} -> HF fp32", hf_back, cfg, w, "F32", min_files=2)
    hf_back_m16 = os.path.join(args.workdir, "hf_back_m16")
    run([args.primus, "convert", "primus-to-hf", "--load", save_m, "--output", hf_back_m16])
    check_export("M -> HF bf16", hf_back_m16, cfg_m, w_m, "BF16", min_files=1)

    # Control: the MoE comparison can fail — w1 and w3 swapped in every expert of layer 0.
    w_mbad = dict(w_m)
    for e in range(cfg_m["num_local_experts"]):
        q = f"model.layers.0.block_sparse_moe.experts.{e}."
        w_mbad[q + "w1.weight"], w_mbad[q + "w3.weight"] = w_m[q + "w3.weight"], w_m[q + "w1.weight"]
    hf_mbad = os.path.join(args.workdir, "hf_mixtral_bad")
    write_hf_dir(hf_mbad, cfg_m, w_mbad, shards=1)
    save_mbad = os.path.join(args.workdir, "primus_mixtral_bad")
    convert_in(hf_mbad, save_mbad)
    err = compare_logits(args, "control (experts' w1/w3 swapped vs the unswapped reference)", save_mbad, cfg_m, w_m,
                         tokens_m, expect_match=False)
    check(err > 1e-2, f"control: a w1/w3 swap went unnoticed (error {err:.2e})")

    # Control: the logits comparison can fail — swap k and v of layer 0 in a copy of A.
    w_bad = dict(w_a)
    k, v = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    w_bad[k], w_bad[v] = w_a[v], w_a[k]
    hf_bad = os.path.join(args.workdir, "hf_bad")
    write_hf_dir(hf_bad, cfg_a, w_bad, shards=1)
    save_bad = os.path.join(args.workdir, "primus_bad")
    convert_in(hf_bad, save_bad)
    err = compare_logits(args, "control (k/v swapped vs the unswapped reference)", save_bad, cfg_a, w_a, tokens_a,
                         expect_match=False)
    check(err > 1e-2, f"control: a k/v swap went unnoticed (error {err:.2e})")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all conversion checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
