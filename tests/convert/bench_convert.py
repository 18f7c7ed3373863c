#!/usr/bin/env python3
"""Times `primus convert` on a full-size model shape with random weights; prints JSON.

Writes an HF directory shaped like a real model (default: Llama 3.2 1B — 16 layers,
hidden 2048, 32/8 heads, ffn 8192, vocab 128256, tied; 1.24B parameters, 2.47 GB in
bf16) in `--shards` safetensors files, then runs and times
    primus convert hf-to-primus   (as stored, bf16)
    primus convert primus-to-hf   (bf16, 5GB shards)
    primus convert hf-to-primus --dtype fp32
and reports wall seconds, GB/s of weights and the peak resident memory of each run
(from /usr/bin/time when present). Not a test: numbers go to docs/CHECKPOINTS.md.

Usage: bench_convert.py --primus build/bin/primus [--workdir /tmp/primus_convert_bench]
                        [--layers 16 --hidden 2048 --ffn 8192 --heads 32 --kv-heads 8 --vocab 128256]
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import time

import numpy as np


def write_safetensors(path, tensors):
    """tensors: [(name, shape)] -> random bf16 values ~N(0, 0.02), written from the format."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in tensors:
            x = (rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02).view(np.uint32)
            f.write((x >> 16).astype(np.uint16).tobytes())


def make_hf_dir(path, a):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    C, F, H, G, V = a.hidden, a.ffn, a.heads, a.kv_heads, a.vocab
    D = C // H
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C, "intermediate_size": F,
           "num_hidden_layers": a.layers, "num_attention_heads": H, "num_key_value_heads": G, "vocab_size": V,
           "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    tensors = [("model.embed_tokens.weight", (V, C))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (C,)), (p + "self_attn.q_proj.weight", (H * D, C)),
                    (p + "self_attn.k_proj.weight", (G * D, C)), (p + "self_attn.v_proj.weight", (G * D, C)),
                    (p + "self_attn.o_proj.weight", (C, H * D)), (p + "post_attention_layernorm.weight", (C,)),
                    (p + "mlp.gate_proj.weight", (F, C)), (p + "mlp.up_proj.weight", (F, C)),
                    (p + "mlp.down_proj.weight", (C, F))]
    tensors.append(("model.norm.weight", (C,)))
    total = sum(int(np.prod(s)) * 2 for _, s in tensors)
    if a.shards == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), tensors)
        return total
    per = (len(tensors) + a.shards - 1) // a.shards
    weight_map = {}
    for s in range(a.shards):
        file = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
        part = tensors[s * per:(s + 1) * per]
        write_safetensors(os.path.join(path, file), part)
        weight_map.update({n: file for n, _ in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


def timed(cmd):
    use_time = os.path.exists("/usr/bin/time")
    full = (["/usr/bin/time", "-v"] if use_time else []) + cmd
    t0 = time.time()
    r = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return wall, (int(m.group(1)) / 1e6 if m else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primus", required=True)
    ap.add_argument("--workdir", default="/tmp/primus_convert_bench")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", default="hf_to_primus_bf16,primus_to_hf_bf16,hf_to_primus_fp32",
                    help="comma-separated subset (primus_to_hf needs hf_to_primus_bf16 first)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    hf, save, back, save32 = (os.path.join(a.workdir, d) for d in ("hf", "primus", "hf_back", "primus_fp32"))
    total = make_hf_dir(hf, a)
    for d in (save, back, save32):
        shutil.rmtree(d, ignore_errors=True)
    runs = {
        "hf_to_primus_bf16": [a.primus, "convert", "hf-to-primus", "--hf-dir", hf, "--output", save],
        "primus_to_hf_bf16": [a.primus, "convert", "primus-to-hf", "--load", save, "--output", back],
        "hf_to_primus_fp32": [a.primus, "convert", "hf-to-primus", "--hf-dir", hf, "--output", save32,
                              "--dtype", "fp32"],
    }
    for name, cmd in runs.items():
        if name not in a.runs.split(","):
            continue
        wall, rss = timed(cmd)
        print(json.dumps({"bench": "convert", "run": name, "weights_gb_bf16": round(total / 1e9, 3),
                          "params": total // 2, "seconds": round(wall, 2), "gb_per_s": round(total / 1e9 / wall, 3),
                          "peak_rss_gb": rss and round(rss, 2), "cpus": os.cpu_count()}))
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
