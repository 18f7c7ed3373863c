#!/usr/bin/env python3
"""The user's path end to end: HF model -> `primus convert hf-to-primus` -> `primus train`
with `load:` + `finetune: true` -> `primus convert primus-to-hf`.

A tiny random Llama (HF layout, written by check_hf_import.py's helpers) is imported, the
training loop fine-tunes it for one iteration at learning rate 0 (so AdamW leaves every
weight as it was), and the loop's checkpoint is exported back in fp32. Every exported
tensor must equal the original bit for bit: this fails if the loop ignored `load`
(random init), mapped a tensor to the wrong parameter, or if either conversion changed
a value. A second fine-tune at a real learning rate must change the weights (the loop
did train the loaded model).

Usage: check_finetune_from_hf.py --primus build/bin/primus --source-dir REPO [--workdir DIR]
"""
import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf_import import random_weights, read_hf_dir, to_bytes, write_hf_dir  # noqa: E402

CFG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
       "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 61, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
       "rope_theta": 500000.0, "tie_word_embeddings": False,
       "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}}

# The experiment: the tiny example with the imported model's architecture (the keys
# `primus convert hf-to-primus` prints), mock data and no tokenizer file.
MODEL_KEYS = ["num_layers=2", "hidden_size=64", "ffn_hidden_size=80", "num_attention_heads=4",
              "group_query_attention=true", "num_query_groups=2", "kv_channels=16", "vocab_size=61",
              "make_vocab_size_divisible_by=1", "max_position_embeddings=256", "norm_epsilon=1e-5",
              "rotary_base=500000", "use_rope_scaling=true", "rope_scaling_factor=8", "rope_low_freq_factor=1",
              "rope_high_freq_factor=4", "original_max_position_embeddings=64",
              "untie_embeddings_and_output_weights=true"]


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print(r.stdout)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primus", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--workdir", default="/tmp/primus_finetune_from_hf")
    args = ap.parse_args()
    wd = os.path.abspath(args.workdir)
    args.primus = os.path.abspath(args.primus)
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    example = os.path.join(args.source_dir, "examples/megatron/llama_tiny-pretrain.yaml")

    weights = random_weights(CFG, 11)
    write_hf_dir(os.path.join(wd, "hf"), CFG, weights, shards=2)
    run([args.primus, "convert", "hf-to-primus", "--hf-dir", "hf", "--output", "imported"], wd)

    def finetune(name, lr):
        sets = MODEL_KEYS + [
            "load=" + os.path.join(wd, "imported"), "finetune=true", "save=" + os.path.join(wd, name),
            "train_iters=1", "mock_data=true", "tokenizer_model=null", "global_batch_size=2", "micro_batch_size=2",
            "seq_length=32", f"lr={lr}", f"min_lr={lr}", "lr_warmup_iters=0", "eval_interval=1000", "eval_iters=0",
            "tensorboard_dir=" + os.path.join(wd, name + "_tb")]
        out = run([args.primus, "train", "--config", example] + [x for s in sets for x in ("--set", s)], wd)
        if "finetune: loaded the weights" not in out:
            print(out)
            raise SystemExit("the training loop did not report loading the imported weights")
        run([args.primus, "convert", "primus-to-hf", "--load", name, "--output", name + "_hf", "--dtype", "fp32"], wd)
        tensors, _ = read_hf_dir(os.path.join(wd, name + "_hf"))
        return tensors

    failures = 0
    same = finetune("lr0", 0.0)
    for n, w in weights.items():
        if n not in same or same[n][2] != to_bytes(w)[1]:
            print(f"FAIL: {n} changed through import -> fine-tune at lr 0 -> export")
            failures += 1
    trained = finetune("lr1e-2", 1e-2)
    changed = sum(trained[n][2] != to_bytes(w)[1] for n, w in weights.items())
    print(f"lr 0: {len(weights) - failures}/{len(weights)} tensors bit-identical; lr 1e-2: {changed} tensors changed")
    if changed < len(weights) // 2:
        print("FAIL: a fine-tune at lr 1e-2 left most weights unchanged")
        failures += 1
    shutil.rmtree(wd, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
