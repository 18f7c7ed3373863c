#!/usr/bin/env python3
"""PyTorch CPU side of bench_cpu_llama: the same Llama (same shapes, fp32) trained the
way one writes it in eager PyTorch 1.13 on CPU (no SDPA there: attention as matmuls
with a causal mask), with torch.optim.AdamW and clip_grad_norm_. Prints one JSON line.

  python3 bench/cpu_llama_torch.py --layers 6 --hidden 256 --heads 8 --kv-heads 4 \
      --ffn 768 --vocab 32000 --seq 256 --batch 4 --steps 3 --threads 2
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):  # x (B,H,T,D), rotate-half RoPE
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, ffn):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.proj = nn.Linear(heads * self.hd, d, bias=False)
        self.fc1 = nn.Linear(d, 2 * ffn, bias=False)
        self.fc2 = nn.Linear(ffn, d, bias=False)
        self.ffn = ffn

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], -1)
        q = rotate(q.view(B, T, self.h, self.hd).transpose(1, 2), cos, sin)
        k = rotate(k.view(B, T, self.kv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        g = self.h // self.kv
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.proj(a)
        gate, up = self.fc1(self.n2(x)).split([self.ffn, self.ffn], -1)
        return x + self.fc2(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, L, d, heads, kv_heads, ffn, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, ffn) for _ in range(L))
        self.norm = RMSNorm(d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.hd = d // heads

    def forward(self, tokens, labels):
        T = tokens.shape[1]
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.arange(T).float()[:, None] * inv[None, :]
        cos, sin = ang.cos(), ang.sin()
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.emb(tokens)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = self.out(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("layers", 6), ("hidden", 256), ("heads", 8), ("kv-heads", 4), ("ffn", 768), ("vocab", 32000),
                 ("seq", 256), ("batch", 4), ("steps", 3), ("warmup", 1), ("threads", 2)]:
        ap.add_argument("--" + k, type=int, default=v)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Llama(a.layers, a.hidden, a.heads, a.kv_heads, a.ffn, a.vocab)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)

    def step():
        tokens = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        labels = torch.roll(tokens, -1, 1)
        t0 = time.perf_counter()
        loss = m(tokens, labels)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), t1 - t0, time.perf_counter() - t1

    for _ in range(a.warmup):
        step()
    fb = op = 0.0
    best = float("inf")
    t = time.perf_counter()
    for _ in range(a.steps):
        loss, dfb, dop = step()
        fb += dfb
        op += dop
        best = min(best, dfb + dop)
    dt = (time.perf_counter() - t) / a.steps
    print(json.dumps({"system": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in m.parameters()), "step_ms": round(dt * 1e3, 1),
                      "fwd_bwd_ms": round(fb / a.steps * 1e3, 1), "optimizer_ms": round(op / a.steps * 1e3, 1),
                      "tokens_per_s": round(a.batch * a.seq / dt, 1), "best_step_ms": round(best * 1e3, 1),
                      "best_tokens_per_s": round(a.batch * a.seq / best, 1), "loss": round(loss, 4)}))


if __name__ == "__main__":
    main()
