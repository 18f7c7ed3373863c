#!/usr/bin/env python3
"""Parameter counts of the DeepSeek zoo models: `primus train --dry-run` against the HF models
that transformers builds (DeepseekV2ForCausalLM / DeepseekV3ForCausalLM on the meta device: no
memory, no weights). Run on the GPU machine (it has transformers); prints one JSON line per model
and exits 1 on any mismatch.

The HF configs below are the fields of the public config.json files of deepseek-ai/DeepSeek-V2-Lite,
DeepSeek-V2 and DeepSeek-V3 that decide the parameter count. transformers does not build V3's
multi-token-prediction layer (num_nextn_predict_layers), so the V3 count is the main model's, as
Primus prints it (the MTP module is reported beside it).

Usage: hf_count_params.py --primus build/bin/primus [--source-dir REPO]
"""
import argparse
import json
import os
import re
import subprocess
import sys

COMMON = dict(hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
              moe_layer_freq=1, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
              attention_bias=False)
MODELS = {
    "deepseek_v2_lite": ("DeepseekV2", dict(COMMON, vocab_size=102400, hidden_size=2048, intermediate_size=10944,
                                            moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
                                            num_key_value_heads=16, n_shared_experts=2, n_routed_experts=64,
                                            num_experts_per_tok=6, first_k_dense_replace=1, q_lora_rank=None,
                                            n_group=1, topk_group=1)),
    "deepseek_v2": ("DeepseekV2", dict(COMMON, vocab_size=102400, hidden_size=5120, intermediate_size=12288,
                                       moe_intermediate_size=1536, num_hidden_layers=60, num_attention_heads=128,
                                       num_key_value_heads=128, n_shared_experts=2, n_routed_experts=160,
                                       num_experts_per_tok=6, first_k_dense_replace=1, q_lora_rank=1536, n_group=8,
                                       topk_group=3)),
    "deepseek_v3": ("DeepseekV3", dict(COMMON, vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                                       moe_intermediate_size=2048, num_hidden_layers=61, num_attention_heads=128,
                                       num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
                                       num_experts_per_tok=8, first_k_dense_replace=3, q_lora_rank=1536, n_group=8,
                                       topk_group=4)),
}


def hf_count(family, fields):
    import torch
    import transformers
    config = getattr(transformers, family + "Config")(**fields)
    with torch.device("meta"):
        model = getattr(transformers, family + "ForCausalLM")(config)
    return sum(p.numel() for p in model.parameters())


def primus_count(primus, source_dir, name):
    # Mock data: the count needs no data files, whose absence would fail the dry run's checks.
    out = subprocess.run([primus, "train", "--config", f"examples/megatron/{name}-pretrain.yaml", "--dry-run",
                          "--set", "mock_data=true"],
                         cwd=source_dir, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^\s*parameters\s+([\d,]+)", out, re.M)
    if not m:
        raise SystemExit(f"{name}: no 'parameters' line in primus --dry-run output")
    return int(m.group(1).replace(",", ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primus", required=True)
    ap.add_argument("--source-dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a = ap.parse_args()
    ok = True
    for name, (family, fields) in MODELS.items():
        hf, ours = hf_count(family, fields), primus_count(a.primus, a.source_dir, name)
        ok &= hf == ours
        print(json.dumps({"model": name, "transformers": hf, "primus": ours, "equal": hf == ours}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
