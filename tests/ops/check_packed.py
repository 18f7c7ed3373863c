#!/usr/bin/env python3
"""Reference check of the packed-sequence ops (issue 15) against PyTorch basic ops.

Document-masked attention, written from the definition: for each batch row an explicit
(T, T) mask M[t, s] = (segments[t] == segments[s]) and (s <= t when causal), scores
q k^T * scale with -inf outside M, softmax, P v; lse = logsumexp of the masked scores;
grouped-query heads by repeating each kv head over its Hq/Hkv query heads. Gradients of
sum(out * dout) by torch autograd.

RoPE with explicit position ids (Su et al. 2021, rotate-half form): inv_freq[i] =
base^(-2i/R), angle = position * inv_freq, the first R dims rotated as
x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1]; dims >= R pass through.
The backward is the gradient of sum(y * dy).

Everything runs in float64, so each comparison measures our fp32 error alone:
    error = max|ours - reference| / max|reference|   < 1e-5 per tensor.

Usage: check_packed.py --dump build/bin/packed_ops_dump [--workdir DIR]
"""
import argparse
import json
import os
import struct
import subprocess
import sys

import numpy as np
import torch

TOL = 1e-5
DTYPES = {"F32": np.float32, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=DTYPES[info["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out, meta


def attention(q, k, v, segments, scale, causal):
    """q (B,T,Hq,D), k (B,T,Hkv,D), v (B,T,Hkv,Dv), segments (B,T) -> out (B,T,Hq,Dv), lse (B,Hq,T)."""
    B, T, Hq, _ = q.shape
    group = Hq // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    outs, lses = [], []
    for b in range(B):
        s = segments[b]
        mask = s[:, None] == s[None, :]
        if causal:
            mask = mask & torch.tril(torch.ones(T, T)).bool()
        scores = torch.einsum("thd,shd->hts", q[b], k[b]) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        lses.append(torch.logsumexp(scores, dim=-1))
        outs.append(torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v[b]))
    return torch.stack(outs), torch.stack(lses)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rope(x, positions, R, base):
    """x (B,T,H,D), positions (B,T): rotate the first R dims by position * inv_freq."""
    inv_freq = base ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)
    angle = positions.to(torch.float64)[..., None] * inv_freq  # (B,T,R/2)
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1)[:, :, None, :]
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1)[:, :, None, :]
    xr = x[..., :R]
    return torch.cat([xr * cos + rotate_half(xr) * sin, x[..., R:]], dim=-1)


def rel_err(ours, ref):
    ours, ref = ours.to(torch.float64), ref.to(torch.float64)
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", default="reference_packed_ops")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "packed_ops.safetensors")
    subprocess.run([args.dump, path], check=True)
    t, meta = read_safetensors(path)
    failures = []

    def check(what, ours, ref):
        err = rel_err(ours, ref)
        ok = err < TOL
        print(f"{'ok  ' if ok else 'FAIL'} {what:28s} rel err {err:.2e}")
        if not ok:
            failures.append(what)

    for c in json.loads(meta["cases"]):
        p = c["name"] + "."
        q, k, v, dout = (t[p + n].to(torch.float64).requires_grad_() for n in ("q", "k", "v", "dout"))
        out, lse = attention(q, k, v, t[p + "segments"], c["scale"], c["causal"])
        (out * dout.detach()).sum().backward()
        check(p + "out", t[p + "out"], out.detach())
        check(p + "lse", t[p + "lse"], lse.detach())
        check(p + "dq", t[p + "dq"], q.grad)
        check(p + "dk", t[p + "dk"], k.grad)
        check(p + "dv", t[p + "dv"], v.grad)

    r = json.loads(meta["rope"])
    x = t["rope.x"].to(torch.float64).requires_grad_()
    y = rope(x, t["rope.positions"], r["R"], r["base"])
    (y * t["rope.dy"].to(torch.float64)).sum().backward()
    check("rope.y", t["rope.y"], y.detach())
    check("rope.dx", t["rope.dx"], x.grad)

    if failures:
        print(f"{len(failures)} comparisons failed: {', '.join(failures)}")
        return 1
    print("all packed-op comparisons within", TOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
