#!/usr/bin/env python3
"""HuggingFace parity of `primus convert` + `primus generate` (run where `transformers`,
`torch` and `safetensors` are installed; no network needed).

1. HF -> Primus: a small random transformers LlamaForCausalLM (GQA, Llama 3 "llama3" RoPE
   scaling, untied head, fp32) is saved with save_pretrained(safe_serialization=True) in
   several shards (model.safetensors.index.json), converted with
       primus convert hf-to-primus --hf-dir HF --output SAVE
   and decoded with
       primus generate --load SAVE --prompt-ids ... --temperature 0 --output-json --dump-logits
   Checks: the greedy token ids equal transformers' greedy generate(); the prompt logits
   match transformers' logits (max abs and max relative error, relative < 1e-4).
2. Primus -> HF: a checkpoint written the way training writes it (generate_test_checkpoint,
   or --primus-checkpoint DIR from a real `primus train` run) is converted with
       primus convert primus-to-hf --load SAVE --output HF --dtype fp32
   loaded by transformers' LlamaForCausalLM.from_pretrained, and its logits compared with
   `primus generate --dump-logits` of the same prompt (relative error < 1e-4), plus greedy ids.
3. Mixtral, both directions: a small random transformers MixtralForCausalLM (4 experts, top-2,
   GQA, untied) saved with save_pretrained in shards goes through round 1 (the summary's
   hf_layout says which of HF's two expert layouts save_pretrained wrote: "per-expert"
   block_sparse_moe.experts.N.w1/w2/w3, or transformers 5's "fused" mlp.experts.gate_up_proj /
   down_proj; hf-to-primus reads both); and a Primus MoE checkpoint (a few iterations of
   `primus train` on mock data with the tiny example, padded vocabulary, or
   --primus-moe-checkpoint DIR) goes through round 2 with MixtralForCausalLM.from_pretrained.

DeepSeek: tiny random DeepseekV3ForCausalLM (query latent, sigmoid routing in groups with a
random expert bias, a shared expert, YaRN) and DeepseekV2ForCausalLM (V2-Lite style, and V2's
group_limited_greedy routing in groups) go through round 1, then their Primus checkpoints
through round 2 with the same class.

Prints one JSON summary on stdout (keys hf_to_primus, primus_to_hf, hf_to_primus_mixtral,
primus_to_hf_mixtral, hf_to_primus_deepseek_v3, hf_to_primus_deepseek_v2(_grouped), each with "ok"); exits 0 when every check passes, 1 on a mismatch, 2 when
a command could not run or transformers raised (the summary says which and its output).

    python3 tools/hf_parity.py --primus build/bin/primus --workdir /tmp/hfp [--device cpu|cuda|both]
                               [--source-dir REPO]   # for the example `primus train` uses (default: ..)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

REL_TOL = 1e-4
# The convert command lines (the flags of `primus convert`); {..} are filled in.
HF_TO_PRIMUS = ["convert", "hf-to-primus", "--hf-dir", "{hf}", "--output", "{out}"]
PRIMUS_TO_HF = ["convert", "primus-to-hf", "--load", "{ckpt}", "--output", "{out}", "--dtype", "fp32"]


class CommandFailed(Exception):
    pass


def run(cmd, cwd=None, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if res.returncode != 0:
        raise CommandFailed(json.dumps({"command": cmd, "returncode": res.returncode,
                                        "output": (res.stdout + res.stderr)[-4000:]}))
    return res


def fill(template, **kw):
    return [t.format(**kw) for t in template]


def errors(ours, ref):
    """Max abs error and max abs error / max |ref| over the common columns."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff = np.abs(ours - ref).max()
    return float(diff), float(diff / max(np.abs(ref).max(), 1e-30))


def margins(logits_rows):
    """Top-1 minus top-2 logit of each row."""
    s = np.sort(np.asarray(logits_rows, dtype=np.float64), axis=-1)
    return s[..., -1] - s[..., -2]


def primus_generate(primus, save, prompt, n, workdir, tag, device):
    out_json = os.path.join(workdir, f"{tag}_{device}.json")
    npy = os.path.join(workdir, f"{tag}_{device}_logits.npy")
    cmd = [primus, "generate", "--load", save, "--prompt-ids", ",".join(map(str, prompt)),
           "--max-new-tokens", str(n), "--temperature", "0", "--device", device, "--quiet",
           "--output-json", out_json, "--dump-logits", npy]
    if device == "cuda":
        cmd += ["--dtype", "fp32"]
    run(cmd)
    with open(out_json) as f:
        ids = json.load(f)["generated_ids"][0]
    return ids, np.load(npy)[0]  # (T, padded V)


def hf_greedy(model, prompt, n, vocab_limit=None):
    """transformers' greedy generate(), EOS disabled so that it runs n tokens like primus
    (which has no stop ids without a tokenizer), and each step's logits. With vocab_limit
    below the model's rows (a Primus export keeps the padded rows, which primus never
    samples), the argmax runs over ids [0, vocab_limit) in a plain loop instead."""
    ids = torch.tensor([prompt], dtype=torch.long)
    if vocab_limit is not None and vocab_limit < model.config.vocab_size:
        gen, scores = [], []
        with torch.no_grad():
            for _ in range(n):
                last = model(ids).logits[0, -1, :vocab_limit].float()
                t = int(torch.argmax(last))
                gen.append(t)
                scores.append(last.numpy())
                ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        return gen, np.stack(scores)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        # An explicit all-ones mask: without one, generate() infers it from pad_token_id and
        # would hide every prompt token that happens to be id 0.
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True,
                             use_cache=True)
    gen = out.sequences[0, len(prompt):].tolist()
    scores = torch.stack(out.scores, dim=1)[0].float().numpy()  # (n, V) logits of each step
    return gen, scores


def primus_vocab_size(save):
    """vocab_size of a Primus checkpoint's config.json (the ids primus samples from)."""
    it_file = os.path.join(save, "latest_checkpointed_iteration.txt")
    iter_dir = save
    if os.path.exists(it_file):
        with open(it_file) as f:
            iter_dir = os.path.join(save, "iter_%07d" % int(f.read().strip()))
    with open(os.path.join(iter_dir, "config.json")) as f:
        return json.load(f)["options"]["vocab_size"]


def compare_tokens(ours, ref, step_margins):
    first = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    if first is None and len(ours) == len(ref):
        return {"equal": True, "ok": True}
    margin = float(step_margins[first]) if first is not None and first < len(step_margins) else None
    # A different argmax where the reference's top two logits are within fp32 noise of
    # each other is not a bug; anything else is.
    ambiguous = margin is not None and margin < 1e-4
    return {"equal": False, "first_mismatch": first, "ours": ours, "reference": ref,
            "reference_margin_at_mismatch": margin, "ambiguous_tie": ambiguous, "ok": ambiguous}


def hf_tensor_names(hf_dir):
    """The tensor names of an HF directory (index weight_map, else the safetensors header)."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(json.load(f)["weight_map"])
    with open(os.path.join(hf_dir, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return sorted(k for k in header if k != "__metadata__")


def moe_layout(names):
    """Which of HF's Mixtral expert layouts the names are in."""
    per = any(".block_sparse_moe." in n for n in names)
    fused = any(n.endswith(".mlp.experts.gate_up_proj") for n in names)
    return "mixed" if per and fused else "fused" if fused else "per-expert" if per else "none"


def hf_round(a, device_list, model, hf_name, save_name, tag):
    """save_pretrained in shards -> primus convert hf-to-primus -> primus generate, compared
    with the transformers model's logits and greedy ids."""
    hf_dir = os.path.join(a.workdir, hf_name)
    save = os.path.join(a.workdir, save_name)
    for d in (hf_dir, save):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(hf_dir, safe_serialization=True, max_shard_size="100KB")
    run([a.primus] + fill(HF_TO_PRIMUS, hf=hf_dir, out=save))

    V = model.config.vocab_size
    rng = np.random.RandomState(a.seed)
    prompt = rng.randint(3, V, size=a.prompt_len).tolist()
    with torch.no_grad():
        ref_logits = model(torch.tensor([prompt])).logits[0].float().numpy()  # (T, V)
    ref_ids, step_scores = hf_greedy(model, prompt, a.new_tokens)
    result = {"hf_dir": hf_dir, "checkpoint": save, "prompt_len": len(prompt), "new_tokens": a.new_tokens,
              "shards": sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))}
    ok = True
    for device in device_list:
        ids, logits = primus_generate(a.primus, save, prompt, a.new_tokens, a.workdir, tag, device)
        abs_err, rel_err = errors(logits[:, :V], ref_logits)
        tokens = compare_tokens(ids, ref_ids, margins(step_scores))
        dev_ok = tokens["ok"] and rel_err < REL_TOL and logits.shape[0] == len(prompt)
        result[device] = {"tokens": tokens, "logits_max_abs_err": abs_err, "logits_rel_err": rel_err,
                          "dumped_shape": list(logits.shape), "ok": dev_ok}
        ok &= dev_ok
    result["ok"] = ok
    return result


def hf_to_primus(a, device_list):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                      initializer_range=0.15, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    return hf_round(a, device_list, model, "hf_model", "primus_from_hf", "hf_to_primus")


def hf_to_primus_mixtral(a, device_list):
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(a.seed)
    cfg = MixtralConfig(vocab_size=300, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                        rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False, num_local_experts=4,
                        num_experts_per_tok=2, router_aux_loss_coef=0.02, router_jitter_noise=0.0,
                        sliding_window=None, initializer_range=0.15, bos_token_id=1, eos_token_id=2,
                        torch_dtype="float32", attn_implementation="eager")
    model = MixtralForCausalLM(cfg).float().eval()
    result = hf_round(a, device_list, model, "hf_mixtral", "primus_from_hf_mixtral", "hf_to_primus_mixtral")
    # Which expert layout transformers' save_pretrained wrote (both convert).
    result["hf_layout"] = moe_layout(hf_tensor_names(result["hf_dir"]))
    result["transformers"] = transformers.__version__
    return result


def hf_to_primus_deepseek(a, device_list, v3, grouped=False):
    """A tiny random DeepseekV3ForCausalLM (query latent, sigmoid routing in groups with a random
    expert bias, a shared expert, YaRN) or DeepseekV2ForCausalLM (V2-Lite style: q_proj, softmax
    routing without renormalising, two shared experts) through hf-to-primus and primus generate."""
    import transformers

    torch.manual_seed(a.seed)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
                  kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, rope_theta=10000.0,
                  tie_word_embeddings=False, first_k_dense_replace=1, initializer_range=0.15, bos_token_id=1,
                  eos_token_id=2, torch_dtype="float32", attn_implementation="eager",
                  rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 40.0,
                                "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
                                "mscale": 1.0 if v3 else 0.707, "mscale_all_dim": 0.8 if v3 else 0.707})
    if v3:
        cfg = transformers.DeepseekV3Config(num_hidden_layers=3, q_lora_rank=24, n_routed_experts=16,
                                            num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2,
                                            norm_topk_prob=True, routed_scaling_factor=2.5, **common)
        model = transformers.DeepseekV3ForCausalLM(cfg).float().eval()
    elif grouped:  # V2's group_limited_greedy: 8 experts in 4 groups, the best 2 groups by their best expert
        cfg = transformers.DeepseekV2Config(num_hidden_layers=2, q_lora_rank=None, n_routed_experts=8,
                                            num_experts_per_tok=3, n_shared_experts=2, n_group=4, topk_group=2,
                                            topk_method="group_limited_greedy", norm_topk_prob=False,
                                            routed_scaling_factor=16.0, **common)
        model = transformers.DeepseekV2ForCausalLM(cfg).float().eval()
    else:
        cfg = transformers.DeepseekV2Config(num_hidden_layers=2, q_lora_rank=None, n_routed_experts=8,
                                            num_experts_per_tok=3, n_shared_experts=2, n_group=1, topk_group=1,
                                            topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
                                            **common)
        model = transformers.DeepseekV2ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # the expert bias starts at zero: make it matter
        for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0.0, 0.05)
    tag = "hf_to_primus_deepseek_v3" if v3 else "hf_to_primus_deepseek_v2_grouped" if grouped else "hf_to_primus_deepseek_v2"
    result = hf_round(a, device_list, model, "hf_" + tag, "primus_" + tag, tag)
    result["transformers"] = transformers.__version__
    # ... and back: primus-to-hf, loaded by the same transformers class.
    result["export"] = export_round(a, device_list, tag, result["checkpoint"], type(model))
    result["ok"] = result["ok"] and result["export"]["ok"]
    return result


def export_round(a, device_list, name, save, model_cls):
    """primus convert primus-to-hf -> model_cls.from_pretrained, compared with primus generate."""
    hf_dir = os.path.join(a.workdir, "hf_from_" + name)
    shutil.rmtree(hf_dir, ignore_errors=True)
    run([a.primus] + fill(PRIMUS_TO_HF, ckpt=save, out=hf_dir))
    model = model_cls.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    V = model.config.vocab_size
    rng = np.random.RandomState(a.seed + 1)
    prompt = rng.randint(0, V, size=min(a.prompt_len, model.config.max_position_embeddings // 2)).tolist()
    with torch.no_grad():
        ref_logits = model(torch.tensor([prompt])).logits[0].float().numpy()
    ref_ids, step_scores = hf_greedy(model, prompt, a.new_tokens, primus_vocab_size(save))
    r = {"checkpoint": save, "hf_dir": hf_dir, "tie_word_embeddings": bool(model.config.tie_word_embeddings),
         "rope_scaling": getattr(model.config, "rope_scaling", None)}
    case_ok = True
    for device in device_list:
        ids, logits = primus_generate(a.primus, save, prompt, a.new_tokens, a.workdir, "primus_to_hf_" + name,
                                      device)
        abs_err, rel_err = errors(logits[:, :V], ref_logits)
        tokens = compare_tokens(ids, ref_ids, margins(step_scores))
        dev_ok = tokens["ok"] and rel_err < REL_TOL
        r[device] = {"tokens": tokens, "logits_max_abs_err": abs_err, "logits_rel_err": rel_err, "ok": dev_ok}
        case_ok &= dev_ok
    r["ok"] = case_ok
    return r


def primus_to_hf(a, device_list):
    from transformers import LlamaForCausalLM

    cases = []
    if a.primus_checkpoint:
        cases.append(("given", a.primus_checkpoint))
    else:
        maker = a.make_checkpoint or os.path.join(os.path.dirname(os.path.abspath(a.primus)),
                                                  "generate_test_checkpoint")
        if not os.path.exists(maker):
            raise CommandFailed(json.dumps({"error": f"{maker} not found: build the target "
                                            "generate_test_checkpoint or pass --primus-checkpoint DIR"}))
        for case in ("tiny_gqa", "tiny_rope_scaling_tied"):  # untied GQA; tied + Llama 3.1 rope scaling
            save = os.path.join(a.workdir, "primus_" + case)
            shutil.rmtree(save, ignore_errors=True)
            run([maker, case, save, str(a.seed)])
            cases.append((case, save))
    out = {}
    ok = True
    for name, save in cases:
        out[name] = export_round(a, device_list, name, save, LlamaForCausalLM)
        ok &= out[name]["ok"]
    out["ok"] = ok
    return out


# A tiny MoE model trained for a few iterations by `primus train` on mock data (the tiny
# example's run settings): 4 experts of inner size 48, top-2, GQA, untied, vocabulary 300
# padded to 384 rows by make_vocab_size_divisible_by 128 (the export drops the padding).
MOE_TRAIN_SETS = ["num_layers=2", "hidden_size=64", "ffn_hidden_size=96", "num_attention_heads=8",
                  "group_query_attention=true", "num_query_groups=2", "vocab_size=300",
                  "make_vocab_size_divisible_by=128", "max_position_embeddings=256", "rotary_base=1000000",
                  "untie_embeddings_and_output_weights=true", "init_method_std=0.15", "num_experts=4",
                  "moe_router_topk=2", "moe_ffn_hidden_size=48", "moe_aux_loss_coeff=0.01", "mock_data=true",
                  "tokenizer_model=null", "train_iters=2", "save_interval=2", "global_batch_size=2",
                  "micro_batch_size=2", "seq_length=32", "lr=1e-3", "min_lr=1e-3", "lr_warmup_iters=0",
                  "eval_interval=1000", "eval_iters=0", "bf16=false", "fp16=false"]


def primus_to_hf_mixtral(a, device_list):
    from transformers import MixtralForCausalLM

    if a.primus_moe_checkpoint:
        name, save = "given_moe", a.primus_moe_checkpoint
    else:
        name, save = "trained_moe", os.path.join(a.workdir, "primus_trained_moe")
        shutil.rmtree(save, ignore_errors=True)
        example = os.path.join(a.source_dir, "examples/megatron/llama_tiny-pretrain.yaml")
        sets = MOE_TRAIN_SETS + ["save=" + save, "tensorboard_dir=" + os.path.join(a.workdir, "moe_tb")]
        # The repository's configs/ (a primus binary outside the build tree does not find it).
        env = dict(os.environ)
        env.setdefault("PRIMUS_CONFIGS_DIR", os.path.join(a.source_dir, "configs"))
        run([a.primus, "train", "--config", example] + [x for s in sets for x in ("--set", s)], cwd=a.workdir,
            env=env)
    out = {name: export_round(a, device_list, name, save, MixtralForCausalLM)}
    with open(os.path.join(out[name]["hf_dir"], "config.json")) as f:
        out[name]["architectures"] = json.load(f).get("architectures")
    out["ok"] = out[name]["ok"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--primus", required=True, help="path of the primus binary")
    ap.add_argument("--workdir", default="/tmp/hfp")
    ap.add_argument("--device", choices=["cpu", "cuda", "both"], default="cpu")
    ap.add_argument("--make-checkpoint", help="generate_test_checkpoint (default: next to --primus)")
    ap.add_argument("--primus-checkpoint", help="a Primus save dir to export instead of the generated tiny ones")
    ap.add_argument("--primus-moe-checkpoint",
                    help="a Primus MoE save dir (Mixtral-expressible) to export instead of training a tiny one")
    ap.add_argument("--source-dir", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the repository (for examples/megatron/llama_tiny-pretrain.yaml)")
    ap.add_argument("--prompt-len", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        print(json.dumps({"ok": False, "error": f"transformers is not importable here ({e}): run this on a "
                                                "machine with torch + transformers + safetensors"}, indent=2))
        return 2
    os.makedirs(a.workdir, exist_ok=True)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    devices = ["cpu", "cuda"] if a.device == "both" else [a.device]
    summary = {"tolerance_rel": REL_TOL, "devices": devices}
    code = 0
    a.primus, a.workdir = os.path.abspath(a.primus), os.path.abspath(a.workdir)
    for key, fn in (("hf_to_primus", hf_to_primus), ("primus_to_hf", primus_to_hf),
                    ("hf_to_primus_mixtral", hf_to_primus_mixtral), ("primus_to_hf_mixtral", primus_to_hf_mixtral),
                    ("hf_to_primus_deepseek_v3", lambda a, d: hf_to_primus_deepseek(a, d, True)),
                    ("hf_to_primus_deepseek_v2", lambda a, d: hf_to_primus_deepseek(a, d, False)),
                    ("hf_to_primus_deepseek_v2_grouped", lambda a, d: hf_to_primus_deepseek(a, d, False, True))):
        try:
            summary[key] = fn(a, devices)
            if not summary[key]["ok"]:
                code = max(code, 1)
        except CommandFailed as e:
            summary[key] = {"ok": False, "command_failed": json.loads(str(e))}
            code = 2
        except Exception as e:  # transformers or torch refused: say so and go on with the next round
            summary[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            code = 2
    summary["ok"] = code == 0
    print(json.dumps(summary, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
