#!/usr/bin/env python3
"""Greedy generation of `primus generate` vs an independent PyTorch Llama.

The reference is the Llama of tests/reference/check_llama.py (written from the papers:
RMSNorm, rotate-half RoPE with Llama 3.1 scaling, GQA, SwiGLU), run in float64 with its
own generation loop: at every step the WHOLE sequence so far goes through the model (no
KV cache) and the next token is the argmax of the last row over the tokenizer's ids
[0, vocab_size). The weights are read from the checkpoint's model.safetensors and the
architecture from its config.json, both parsed here from their formats.

For each tiny checkpoint (GQA untied; Llama 3.1 rope scaling tied; MQA partial rotary):
  * `primus generate --prompt-ids A --prompt-ids B` (one batch, prompts of different
    lengths, greedy) must give exactly the reference's token ids;
  * `--dump-logits` of a prompt must match the reference logits: max|ours - ref| / max|ref|
    < 1e-5 (our fp32 error);
  * every reference step must have a clear winner (top-1 minus top-2 logit > 1e-4), else
    the comparison could not tell fp32 rounding from a bug and the test fails saying so.

Usage: check_generate.py --primus build/bin/primus --make-checkpoint build/bin/generate_test_checkpoint
                         [--workdir DIR] [--new-tokens 12]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from check_llama import llama_forward, read_safetensors, rel_error  # noqa: E402

TOL_LOGITS = 1e-5
MIN_MARGIN = 1e-4
SEEDS = {"tiny_gqa": 101, "tiny_rope_scaling_tied": 7, "tiny_mqa_partial_rotary": 3}


def reference_config(options):
    """check_llama's config dict from config.json's options (Megatron key names)."""
    heads = options["num_attention_heads"]
    groups = options["num_query_groups"] if options.get("group_query_attention") and options.get("num_query_groups") else heads
    return {
        "num_layers": options["num_layers"],
        "num_attention_heads": heads,
        "num_query_groups": groups,
        "head_dim": options.get("kv_channels") or options["hidden_size"] // heads,
        "ffn_hidden_size": options["ffn_hidden_size"],
        "norm_epsilon": options["norm_epsilon"],
        "rotary_base": options["rotary_base"],
        "rotary_percent": options["rotary_percent"],
        "use_rope_scaling": options["use_rope_scaling"],
        "rope_scaling_factor": options["rope_scaling_factor"],
        "rope_low_freq_factor": options["rope_low_freq_factor"],
        "rope_high_freq_factor": options["rope_high_freq_factor"],
        "original_max_position_embeddings": options["original_max_position_embeddings"],
        "tied": not options["untie_embeddings_and_output_weights"],
    }


def reference_greedy(p, cfg, prompt, n, vocab):
    """n greedy tokens, recomputing the full sequence each step; returns ids and the smallest margin."""
    seq = list(prompt)
    out, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(n):
            last = llama_forward(p, cfg, torch.tensor([seq], dtype=torch.int64))[0][0, -1, :vocab]
            top2 = torch.topk(last, 2).values
            margin = min(margin, (top2[0] - top2[1]).item())
            t = int(torch.argmax(last).item())
            out.append(t)
            seq.append(t)
    return out, margin


def run_primus(primus, save, prompts, n, extra=()):
    cmd = [primus, "generate", "--load", save, "--max-new-tokens", str(n), "--quiet"]
    for pr in prompts:
        cmd += ["--prompt-ids", ",".join(str(t) for t in pr)]
    cmd += list(extra)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")


def check_case(a, case):
    save = os.path.join(a.workdir, case)
    subprocess.run(["rm", "-rf", save], check=True)
    subprocess.run([a.make_checkpoint, case, save, str(SEEDS[case])], check=True)
    iter_dir = os.path.join(save, "iter_0000007")
    t, _ = read_safetensors(os.path.join(iter_dir, "model.safetensors"))
    p = {name: x.double() for name, x in t.items()}
    with open(os.path.join(iter_dir, "config.json")) as f:
        options = json.load(f)["options"]
    cfg = reference_config(options)
    vocab = options["vocab_size"]
    rng = np.random.RandomState(SEEDS[case])
    prompts = [rng.randint(0, vocab, size=n).tolist() for n in (7, 3)]

    out_json = os.path.join(a.workdir, case + ".json")
    run_primus(a.primus, save, prompts, a.new_tokens, ["--output-json", out_json])
    with open(out_json) as f:
        ours = json.load(f)["generated_ids"]
    ok = True
    worst_margin = float("inf")
    for i, prompt in enumerate(prompts):
        ref, margin = reference_greedy(p, cfg, prompt, a.new_tokens, vocab)
        worst_margin = min(worst_margin, margin)
        if ours[i] != ref:
            print(f"    prompt {i}: primus {ours[i]}\n              ref    {ref}")
            ok = False
    if worst_margin <= MIN_MARGIN:
        print(f"    a reference step has top-1/top-2 margin {worst_margin:.2e} <= {MIN_MARGIN}: the greedy "
              f"comparison is ambiguous; change the case's seed")
        ok = False

    npy = os.path.join(a.workdir, case + "_logits.npy")
    run_primus(a.primus, save, [prompts[0]], 1, ["--dump-logits", npy])
    got = torch.from_numpy(np.load(npy))
    with torch.no_grad():
        want = llama_forward(p, cfg, torch.tensor([prompts[0]], dtype=torch.int64))[0]
    shape_ok = tuple(got.shape) == tuple(want.shape)
    err = rel_error(got, want) if shape_ok else float("inf")
    if not shape_ok:
        print(f"    dumped logits shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    ok &= shape_ok and err < TOL_LOGITS
    print(f"  {case}: 2 prompts x {a.new_tokens} greedy tokens {'equal' if ok else 'DIFFER'}, smallest margin "
          f"{worst_margin:.2e}, prompt logits error {err:.2e} -> {'ok' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primus", required=True)
    ap.add_argument("--make-checkpoint", required=True, help="path of the generate_test_checkpoint tool")
    ap.add_argument("--workdir", default="generate_reference_out")
    ap.add_argument("--new-tokens", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.workdir, exist_ok=True)
    cases = subprocess.run([a.make_checkpoint, "list"], check=True, capture_output=True, text=True).stdout.split()
    assert cases, "generate_test_checkpoint lists no cases"
    print(f"greedy generation vs float64 PyTorch reference: {len(cases)} checkpoints")
    ok = all([check_case(a, c) for c in cases])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
