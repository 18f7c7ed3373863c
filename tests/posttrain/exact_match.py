#!/usr/bin/env python3
"""Exact-match accuracy of `primus generate --chat --chat-file HELDOUT --output-json OUT`.

Usage: exact_match.py OUT.json HELDOUT.jsonl [--show N]
Prints the accuracy (a fraction in [0, 1]) on the first line, then N sample completions.
A completion matches when its text, stripped of surrounding white space, equals the record's
"answer". The records of HELDOUT.jsonl and the completions of OUT.json are in the same order.
"""
import argparse
import json


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_json")
    p.add_argument("heldout_jsonl")
    p.add_argument("--show", type=int, default=0, help="print this many (prompt, answer, completion) lines")
    args = p.parse_args()
    with open(args.out_json, encoding="utf-8") as f:
        out = json.load(f)
    with open(args.heldout_jsonl, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    texts = out["texts"]
    if len(texts) != len(records):
        raise SystemExit(f"{args.out_json} has {len(texts)} completions for {len(records)} records")
    hits = sum(t.strip() == r["answer"] for t, r in zip(texts, records))
    print(f"{hits / len(records):.4f}")
    for t, r in list(zip(texts, records))[: args.show]:
        mark = "ok " if t.strip() == r["answer"] else "BAD"
        print(f"  {mark} {r['prompt']!r} -> {t!r} (answer {r['answer']!r})")


if __name__ == "__main__":
    main()
