"""PyTorch reference for `primus bench attention`: scaled_dot_product_attention forward and
forward+backward with the flash and cuDNN backends, causal, GQA, bf16, on the same shapes and
the same FLOP formula (forward 4*B*H*T^2*D, halved when causal; backward 2.5x forward).
Tensors are made (B,T,H,D) and viewed as (B,H,T,D), as the PyTorch peer model does.
Prints one JSON object per (shape, backend)."""
import argparse, json
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {  # name: (seq, heads, kv_heads, head_dim)
    "llama3.2-1B": (2048, 32, 8, 64),
    "llama-tiny": (1024, 12, 4, 64),
    "llama3.2-3B": (2048, 24, 8, 128),
}


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    ev[0].record()
    for i in range(iters):
        fn()
        ev[i + 1].record()
    torch.cuda.synchronize()
    t = sorted(ev[i].elapsed_time(ev[i + 1]) for i in range(iters))
    return t[len(t) // 2]


def run(name, B, T, H, KV, D, backend, warmup, iters):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    mk = lambda h: (torch.rand(B, T, h, D, device=dev, generator=g, dtype=torch.bfloat16) * 2 - 1)
    q, k, v = mk(H).requires_grad_(), mk(KV).requires_grad_(), mk(KV).requires_grad_()
    dout = mk(H).transpose(1, 2)
    gqa = KV != H
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def fwd():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True, enable_gqa=gqa)

    def fwd_bwd():
        out = fwd()
        out.backward(dout)

    try:
        with torch.no_grad():
            f_ms = time_ms(fwd, warmup, iters)
        fb_ms = time_ms(fwd_bwd, warmup, iters)
    except Exception as e:  # a backend may refuse a shape (e.g. GQA on an older cuDNN)
        return dict(system="pytorch", shape=name, backend=backend, B=B, T=T, H=H, KV=KV, D=D, error=str(e)[:200])
    flops_f = 4.0 * B * H * T * T * D / 2
    flops_b = 2.5 * flops_f
    b_ms = max(fb_ms - f_ms, 1e-9)
    return dict(system="pytorch", torch=torch.__version__, shape=name, backend=backend, B=B, T=T, H=H, KV=KV, D=D,
                fwd_us=f_ms * 1e3, bwd_us=b_ms * 1e3, fwd_bwd_us=fb_ms * 1e3,
                fwd_tflops=flops_f / (f_ms * 1e9), bwd_tflops=flops_b / (b_ms * 1e9),
                fwd_bwd_tflops=(flops_f + flops_b) / (fb_ms * 1e9))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3.2-1B:8,llama-tiny:16", help="name:batch,...")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    for spec in a.shapes.split(","):
        name, B = spec.split(":")
        T, H, KV, D = SHAPES[name]
        for backend in ("flash", "cudnn"):
            print(json.dumps(run(name, int(B), T, H, KV, D, backend, a.warmup, a.iters)), flush=True)


if __name__ == "__main__":
    main()
