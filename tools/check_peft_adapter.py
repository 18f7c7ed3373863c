#!/usr/bin/env python3
"""LoRA export parity with HuggingFace PEFT (run where torch, transformers and peft are
installed; no network needed).

1. A tiny Llama (tests/train/tiny_mock-pretrain.yaml) trains 4 iterations on mock data and saves:
   the base model.
2. LoRA (peft: lora, rank 4, every target, lr high enough that B leaves zero) trains 6
   iterations from it (pretrained_checkpoint) and saves: base frozen + adapters.
3. primus convert primus-to-hf exports the base (fp32), and the LoRA checkpoint both merged
   (--output) and as a PEFT adapter (--peft-adapter).
4. primus generate --dump-logits gives Primus's logits of a prompt with the LoRA checkpoint
   (adapters merged at load).
5. transformers loads the base export, peft.PeftModel.from_pretrained puts the adapter on it;
   its logits must equal Primus's and the merged export's (relative error < 1e-4), and
   merge_and_unload() must give the merged export's weights.

Prints one JSON line; exit 0 when every check passes, 1 on a mismatch, 2 when a step could
not run.
    python3 tools/check_peft_adapter.py --primus build/bin/primus --workdir /tmp/peft_check
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(json.dumps({"ok": False, "failed": " ".join(cmd), "output": (r.stdout + r.stderr)[-3000:]}))
        sys.exit(2)
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primus", required=True)
    ap.add_argument("--workdir", default="/tmp/peft_check")
    ap.add_argument("--prepare-only", action="store_true", help="steps 1-4 only (no transformers/peft needed)")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    w = a.workdir
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    env = dict(os.environ, PRIMUS_TEST_WORKSPACE=os.path.join(w, "ws"), OPENBLAS_NUM_THREADS="4")
    exp = os.path.join(root, "tests/train/tiny_mock-pretrain.yaml")
    common = ["--set", "device=cpu", "--set", "eval_iters=0", "--set", "log_interval=2"]
    run([a.primus, "train", "--config", exp, "--set", "train_iters=4", "--set", f"save={w}/base"] + common, env)
    run([a.primus, "train", "--config", exp, "--set", "train_iters=6", "--set", f"save={w}/lora",
         "--set", f"pretrained_checkpoint={w}/base", "--set", "peft=lora", "--set", "lora_dim=4",
         "--set", "lora_alpha=8", "--set", "lr=0.05", "--set", "min_lr=0.05", "--set", "lr_warmup_iters=0"] + common, env)
    run([a.primus, "convert", "primus-to-hf", "--load", f"{w}/base", "--output", f"{w}/hf_base", "--dtype", "fp32"])
    out = run([a.primus, "convert", "primus-to-hf", "--load", f"{w}/lora", "--output", f"{w}/hf_merged",
               "--dtype", "fp32", "--peft-adapter", f"{w}/hf_adapter"])
    ids = [3, 17, 42, 5, 99, 128, 7, 64, 200, 11]
    run([a.primus, "generate", "--load", f"{w}/lora", "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", "1",
         "--dump-logits", f"{w}/primus_logits.npy", "--quiet", "--tokenizer-type", "NullTokenizer", "--vocab-size", "255"])
    if a.prepare_only:
        print(json.dumps({"ok": True, "prepared": w, "convert": out.strip().splitlines()[-2:]}))
        return 0
    try:
        import numpy as np
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"ok": False, "failed": f"import: {e}"}))
        return 2
    x = torch.tensor([ids])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(f"{w}/hf_base", torch_dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, f"{w}/hf_adapter")
        peft_logits = peft_model(x).logits[0].double()
        merged = AutoModelForCausalLM.from_pretrained(f"{w}/hf_merged", torch_dtype=torch.float32)
        merged_logits = merged(x).logits[0].double()
        ours = torch.from_numpy(np.load(f"{w}/primus_logits.npy")).double().reshape(peft_logits.shape[0], -1)
        ours = ours[:, :peft_logits.shape[1]]

        def rel(a_, b_):
            return float((a_ - b_).abs().max() / b_.abs().max().clamp(min=1e-30))
        unloaded = peft_model.merge_and_unload()
        w_rel = max(rel(p.double(), merged.state_dict()[n].double()) for n, p in unloaded.state_dict().items())
        base_only = AutoModelForCausalLM.from_pretrained(f"{w}/hf_base", torch_dtype=torch.float32)(x).logits[0].double()
    summary = {
        "peft_vs_primus": rel(peft_logits, ours),
        "peft_vs_merged_export": rel(peft_logits, merged_logits),
        "merge_and_unload_vs_merged_export_weights": w_rel,
        "adapter_changes_logits": rel(base_only, peft_logits),
    }
    ok = (summary["peft_vs_primus"] < 1e-4 and summary["peft_vs_merged_export"] < 1e-4 and w_rel < 1e-5
          and summary["adapter_changes_logits"] > 1e-3)
    summary["ok"] = ok
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
