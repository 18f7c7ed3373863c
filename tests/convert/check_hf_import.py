#!/usr/bin/env python3
"""`primus convert` against an independent HuggingFace-layout Llama written in PyTorch.

The reference builds tiny random Llamas in HuggingFace's tensor names and layouts
(model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head; weights stored
(out_features, in_features)) and runs them the way transformers' modeling_llama does:
RMSNorm, rotate-half RoPE with cos/sin = cat(freqs, freqs) and Llama 3 frequency scaling
(`rope_type: llama3`), grouped-query attention by repeating each key/value head for
num_attention_heads / num_key_value_heads consecutive query heads, causal softmax
attention scaled by 1/sqrt(head_dim), the SwiGLU MLP, and a tied or untied lm_head. It
writes each model as an HF directory (config.json + model.safetensors, or shards +
model.safetensors.index.json), runs `primus convert hf-to-primus`, loads the checkpoint
with our model (convert_logits_dump: CheckpointReader + config.json -> ModelConfig +
LlamaModel + load_tensors_into) and compares logits:

    error = max|ours - reference| / max|reference|  < 1e-5   (reference in float64)

It also checks, from the files alone: the Primus checkpoint's fused layouts (linear_qkv
rows = [q; k; v], linear_fc1 rows = [gate; up]) and tracker; and `primus convert
primus-to-hf` output (index format, config.json fields, every tensor bit-identical to the
original in fp32, equal to torch's bf16 rounding in bf16, sharding).

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

def hf_names(cfg):
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                  p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
                  p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                  p + "mlp.down_proj.weight"]
    names.append("model.norm.weight")
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    return names


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def random_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    C, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, G, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    shapes = {"q_proj": (H * D, C), "k_proj": (G * D, C), "v_proj": (G * D, C), "o_proj": (C, H * D),
              "gate_proj": (F, C), "up_proj": (F, C), "down_proj": (C, F)}
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


def rope_inv_freq(cfg):
    """As transformers computes it: fp32 base^(-2i/D), then the llama3 rescaling by
    wavelength (kept below L/high, divided by factor above L/low, interpolated between)."""
    D = head_dim(cfg)
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_scaling")
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


def hf_llama_logits(cfg, weights, tokens):
    """Logits (B,T,V) in float64 from HF-named weights (any float dtype)."""
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
    got, _ = read_safetensors(out_file)
    ours = to_torch(got["logits"])
    ref = hf_llama_logits(cfg, ref_weights, tokens)
    check(tuple(ours.shape) == tuple(ref.shape), f"{name}: logits shape {tuple(ours.shape)} != {tuple(ref.shape)}")
    err = rel_err(ours, ref)
    print(f"{name}: logits {tuple(ref.shape)} max rel err {err:.2e} (tolerance {TOL:.0e})")
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
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"decoder.layers.{i}.", f"model.layers.{i}."
        same(p + "self_attention.linear_qkv.weight",
             [q + "self_attn.q_proj.weight", q + "self_attn.k_proj.weight", q + "self_attn.v_proj.weight"])
        same(p + "self_attention.linear_proj.weight", [q + "self_attn.o_proj.weight"])
        same(p + "mlp.linear_fc1.weight", [q + "mlp.gate_proj.weight", q + "mlp.up_proj.weight"])
        same(p + "mlp.linear_fc2.weight", [q + "mlp.down_proj.weight"])
        same(p + "input_layernorm.weight", [q + "input_layernorm.weight"])
        same(p + "pre_mlp_layernorm.weight", [q + "post_attention_layernorm.weight"])
    same("decoder.final_layernorm.weight", ["model.norm.weight"])
    if not cfg["tie_word_embeddings"]:
        same("output_layer.weight", ["lm_head.weight"])
    expected = 3 + 6 * cfg["num_hidden_layers"] - (1 if cfg["tie_word_embeddings"] else 0)
    check(len(tensors) == expected, f"{name}: {len(tensors)} tensors in the checkpoint, want {expected}")
    with open(os.path.join(ckpt, "config.json")) as f:
        opts = json.load(f)["options"]
    want = {"num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
            "ffn_hidden_size": cfg["intermediate_size"], "num_attention_heads": cfg["num_attention_heads"],
            "num_query_groups": cfg["num_key_value_heads"], "kv_channels": head_dim(cfg),
            "vocab_size": cfg["vocab_size"], "make_vocab_size_divisible_by": 1,
            "untie_embeddings_and_output_weights": not cfg["tie_word_embeddings"],
            "normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope"}
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
              "vocab_size", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "max_position_embeddings"):
        check(out_cfg.get(k) == cfg[k], f"{name}: config.json {k} = {out_cfg.get(k)}, want {cfg[k]}")
    check(out_cfg.get("head_dim") == head_dim(cfg), f"{name}: head_dim {out_cfg.get('head_dim')}")
    check(out_cfg.get("architectures") == ["LlamaForCausalLM"] and out_cfg.get("model_type") == "llama",
          f"{name}: architectures/model_type {out_cfg.get('architectures')} {out_cfg.get('model_type')}")
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
