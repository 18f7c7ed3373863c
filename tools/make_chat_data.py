#!/usr/bin/env python3
"""Writes synthetic chat data for post-training: arithmetic (--task arith, the default) or
letter-string transformations (--task letters, the CI proof task of tests/posttrain/).

How the data is made (standard library only; the same flags and --seed give the same bytes):
--task arith:
  * The operand pairs (a, b) with MIN <= a, b <= MAX are shuffled by random.Random(seed);
    the first --heldout pairs are held out (each with one operator from --ops, drawn by the
    same RNG), and every training and DPO question uses the other pairs, with every operator
    of --ops: no operand pair of the held-out set appears in training (disjoint by
    construction). An answer is the exact integer result (a - b may be negative). When there
    are fewer training questions than --train, they are reused with other phrasings.
  * Each training question is written with one of several phrasings ("What is 23 + 58?",
    "Compute 23 + 58.", ...) chosen by the same RNG; the answer is the bare number.
--task letters (see --letter-ops, --min-len, --max-len):
  * Words are random strings of --min-len..--max-len letters from the first --alphabet
    lowercase letters, drawn by random.Random(seed) without repetition; the first --heldout
    words are held out, the training and DPO questions use the others (disjoint by
    construction). Each question applies one operation of --letter-ops to one word:
      reverse  "Reverse abc" -> "cba"      upper   "Uppercase abc" -> "ABC"
      copy     "Repeat abc"  -> "abc"      next    "Shift abc" -> "bcd" (z -> a)
      first    "First letter of abc" -> "a"   last  "Last letter of abc" -> "c"
    with one of a few phrasings per operation; the word always ends the question.
  * The DPO "rejected" answer is a near miss: the word unchanged (or reversed, for copy),
    one letter replaced, two neighbouring letters swapped, or a letter dropped; never the
    right answer.
  * --write-tokenizer DIR writes a character-level tokenizer for this data: a byte-level
    BPE tokenizer.json with the 256 byte tokens and no merges (one token per byte) plus
    <|endoftext|> (256), <|im_start|> (257), <|im_end|> (258), and a tokenizer_config.json
    with a ChatML chat_template and eos_token <|im_end|>. 259 ids: a tiny model's output
    layer costs nothing, unlike a 128k vocabulary's.

Files written to --out (JSONL, one record a line):
  sft_messages.jsonl           {"messages": [{"role": "user", ...}, {"role": "assistant", "content": "81"}]}
                               (a system turn is added to every --system-every'th record)
  sft_alpaca.jsonl             {"instruction": ..., "input": "", "output": "81"} (same questions)
  sft_prompt_completion.jsonl  {"prompt": "What is 23 + 58?", "completion": " 81"}
  heldout.jsonl                {"prompt": ..., "answer": "81", "a": 23, "b": 58, "op": "+"}
                               (letters: {"prompt": ..., "answer": "cba", "word": "abc", "op": "reverse"};
                               primus generate --chat --chat-file reads the prompts)
  dpo_pairs.jsonl              {"prompt": ..., "chosen": "81", "rejected": "<a wrong answer>"}
                               the wrong answer is the right one off by a small nonzero
                               amount, or the result of another operator, never equal to it
  grpo_prompts.jsonl           (with --grpo N) {"prompt": [{"role": "user", "content": ...}],
                               "answer": "81"}: N questions drawn from the training pairs, a
                               GRPO prompt set for the accuracy reward (docs/RL.md)
  manifest.json                the flags and the counts

Examples:
  python3 tools/make_chat_data.py --out output/chat_data --train 2000 --heldout 200
  python3 tools/make_chat_data.py --task letters --letter-ops reverse --out /tmp/rev \
      --write-tokenizer /tmp/rev/tokenizer
"""

import argparse
import json
import os
import random

PHRASINGS = [
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "Please calculate {a} {op} {b}.",
    "What do you get from {a} {op} {b}?",
]
SYSTEM = "You are a calculator. Answer with the number only."
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def wrong_answer(rng, a, op, b):
    """A plausible answer that is not the right one."""
    right = OPS[op](a, b)
    if rng.random() < 0.3:
        others = [o for o in OPS if o != op and OPS[o](a, b) != right]
        if others:
            return OPS[rng.choice(others)](a, b)
    delta = rng.choice([-10, -2, -1, 1, 2, 10])
    return right + delta


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---- --task letters ---------------------------------------------------------------------

LETTER_PHRASINGS = {
    "reverse": ["Reverse {w}", "Write backwards: {w}", "Reverse the letters of {w}"],
    "upper": ["Uppercase {w}", "Capitalize {w}", "Write in capitals: {w}"],
    "copy": ["Repeat {w}", "Copy {w}", "Say {w}"],
    "next": ["Shift {w}", "Next letters of {w}", "Advance each letter: {w}"],
    "first": ["First letter of {w}", "Initial of {w}"],
    "last": ["Last letter of {w}", "Final letter of {w}"],
}
# Every question ends with its word: the answer's letters sit at fixed distances from it.
assert all(q.endswith("{w}") for qs in LETTER_PHRASINGS.values() for q in qs)


def letter_answer(op, w):
    if op == "reverse":
        return w[::-1]
    if op == "upper":
        return w.upper()
    if op == "copy":
        return w
    if op == "next":
        return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in w)
    if op == "first":
        return w[0]
    if op == "last":
        return w[-1]
    raise ValueError(op)


def letter_wrong(rng, op, w, alphabet):
    """A near miss for the answer of (op, w): never the right answer."""
    right = letter_answer(op, w)
    for _ in range(100):
        kind = rng.randrange(4)
        if kind == 0:  # the operation skipped (or, for copy, the word reversed)
            cand = w[::-1] if op == "copy" else w
            if op == "upper":
                cand = w
        elif kind == 1:  # one letter replaced
            i = rng.randrange(len(right))
            c = rng.choice(alphabet)
            c = c.upper() if right[i].isupper() else c
            cand = right[:i] + c + right[i + 1:]
        elif kind == 2 and len(right) >= 2:  # two neighbours swapped
            i = rng.randrange(len(right) - 1)
            cand = right[:i] + right[i + 1] + right[i] + right[i + 2:]
        elif len(right) >= 2:  # a letter dropped
            i = rng.randrange(len(right))
            cand = right[:i] + right[i + 1:]
        else:
            continue
        if cand != right and cand:
            return cand
    raise RuntimeError(f"no wrong answer for {op} {w}")


def letters_main(p, args):
    ops = [o.strip() for o in args.letter_ops.split(",") if o.strip()]
    for o in ops:
        if o not in LETTER_PHRASINGS:
            p.error(f"--letter-ops: '{o}' is not one of {', '.join(LETTER_PHRASINGS)}")
    if not 1 <= args.alphabet <= 26:
        p.error(f"--alphabet {args.alphabet}: expected 1..26 letters")
    if not 1 <= args.min_len <= args.max_len:
        p.error(f"--min-len {args.min_len} / --max-len {args.max_len}: expected 1 <= min <= max")
    alphabet = "abcdefghijklmnopqrstuvwxyz"[: args.alphabet]
    possible = sum(args.alphabet ** n for n in range(args.min_len, args.max_len + 1))
    need = args.heldout + min(args.train, 50000)
    if possible < args.heldout + 1:
        p.error(f"only {possible} distinct words: fewer than --heldout {args.heldout} + 1")
    rng = random.Random(args.seed)
    seen, words = set(), []
    while len(words) < min(need, possible):
        n = rng.randint(args.min_len, args.max_len)
        w = "".join(rng.choice(alphabet) for _ in range(n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    heldout_words, train_words = words[: args.heldout], words[args.heldout:]

    def question(op, w):
        return rng.choice(LETTER_PHRASINGS[op]).format(w=w)

    train = [(rng.choice(ops), train_words[i % len(train_words)]) for i in range(args.train)]
    prompts = [question(o, w) for (o, w) in train]
    answers = [letter_answer(o, w) for (o, w) in train]
    heldout = [(ops[i % len(ops)], w) for i, w in enumerate(heldout_words)]

    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "sft_messages.jsonl"),
                [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                 for q, a in zip(prompts, answers)])
    write_jsonl(os.path.join(args.out, "sft_alpaca.jsonl"),
                [{"instruction": q, "input": "", "output": a} for q, a in zip(prompts, answers)])
    write_jsonl(os.path.join(args.out, "sft_prompt_completion.jsonl"),
                [{"prompt": q, "completion": " " + a} for q, a in zip(prompts, answers)])
    write_jsonl(os.path.join(args.out, "heldout.jsonl"),
                [{"prompt": question(o, w), "answer": letter_answer(o, w), "word": w, "op": o} for (o, w) in heldout])
    pairs = []
    for _ in range(args.dpo):
        o, w = rng.choice(ops), rng.choice(train_words)
        pairs.append({"prompt": question(o, w), "chosen": letter_answer(o, w),
                      "rejected": letter_wrong(rng, o, w, alphabet)})
    write_jsonl(os.path.join(args.out, "dpo_pairs.jsonl"), pairs)
    grpo = []
    for _ in range(args.grpo):
        o, w = rng.choice(ops), rng.choice(train_words)
        grpo.append({"prompt": [{"role": "user", "content": question(o, w)}], "answer": letter_answer(o, w)})
    if grpo:
        write_jsonl(os.path.join(args.out, "grpo_prompts.jsonl"), grpo)
    manifest = {"task": "letters", "seed": args.seed, "letter_ops": ",".join(ops), "alphabet": args.alphabet,
                "min_len": args.min_len, "max_len": args.max_len, "train": args.train, "heldout": len(heldout),
                "dpo": len(pairs), "grpo": len(grpo), "distinct_train_words": len(set(w for _, w in train))}
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {args.train} SFT examples x 3 shapes ({','.join(ops)} on "
          f"{manifest['distinct_train_words']} words), {len(heldout)} held-out, {len(pairs)} DPO pairs")


# ---- --write-tokenizer ---------------------------------------------------------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes (the ByteLevel alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def write_tokenizer(directory):
    """A byte-level BPE tokenizer.json with no merges (one token per byte) + ChatML tokens."""
    os.makedirs(directory, exist_ok=True)
    b2u = byte_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {b2u[b]: b for b in range(256)}, "merges": []},
    }
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
        f.write("\n")
    config = {
        "comment": "written by tools/make_chat_data.py --write-tokenizer: one token per byte + ChatML",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 1024,
        "added_tokens_decoder": {str(256 + i): {"content": s, "special": True} for i, s in enumerate(specials)},
        "chat_template": CHATML_TEMPLATE,
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {directory}: tokenizer.json (259 ids: 256 bytes + 3 ChatML tokens), tokenizer_config.json")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output directory (created)")
    p.add_argument("--task", choices=["arith", "letters"], default="arith", help="what the questions ask (default arith)")
    p.add_argument("--train", type=int, default=2000, help="training examples per SFT file")
    p.add_argument("--heldout", type=int, default=200, help="held-out questions")
    p.add_argument("--dpo", type=int, default=1000, help="preference pairs")
    p.add_argument("--grpo", type=int, default=0, help="GRPO prompts (grpo_prompts.jsonl), from the training questions")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--min", type=int, default=0, help="smallest operand")
    p.add_argument("--max", type=int, default=99, help="largest operand")
    p.add_argument("--ops", default="+", help="operators to use, from '+-*' (default '+')")
    p.add_argument("--system-every", type=int, default=0,
                   help="add a system turn to every Nth messages record (0: never)")
    p.add_argument("--letter-ops", default="reverse",
                   help="letters: comma-separated operations from " + ",".join(LETTER_PHRASINGS) + " (default reverse)")
    p.add_argument("--alphabet", type=int, default=26, help="letters: words use the first N lowercase letters")
    p.add_argument("--min-len", type=int, default=3, help="letters: shortest word (default 3)")
    p.add_argument("--max-len", type=int, default=5, help="letters: longest word (default 5)")
    p.add_argument("--write-tokenizer", metavar="DIR",
                   help="also write a character-level ChatML tokenizer (tokenizer.json + tokenizer_config.json) to DIR")
    args = p.parse_args()
    if args.write_tokenizer:
        write_tokenizer(args.write_tokenizer)
    if not args.out:
        if args.write_tokenizer:
            return
        p.error("--out is required")
    if args.task == "letters":
        letters_main(p, args)
        return

    ops = list(dict.fromkeys(args.ops))
    for o in ops:
        if o not in OPS:
            p.error(f"--ops: '{o}' is not one of + - *")
    if args.max < args.min:
        p.error(f"--max {args.max} is below --min {args.min}")
    operands = [(a, b) for a in range(args.min, args.max + 1) for b in range(args.min, args.max + 1)]
    if args.heldout >= len(operands):
        p.error(f"--heldout {args.heldout} leaves no training operand pairs out of {len(operands)}")
    rng = random.Random(args.seed)
    rng.shuffle(operands)
    heldout = [(a, rng.choice(ops), b) for (a, b) in operands[: args.heldout]]
    pool = [(a, o, b) for (a, b) in operands[args.heldout:] for o in ops]
    rng.shuffle(pool)

    def phrase(q):
        a, o, b = q
        return rng.choice(PHRASINGS).format(a=a, op=o, b=b)

    train = [pool[i % len(pool)] for i in range(args.train)]
    prompts = [phrase(q) for q in train]
    answers = [str(OPS[o](a, b)) for (a, o, b) in train]

    os.makedirs(args.out, exist_ok=True)
    messages = []
    for i, (q, ans) in enumerate(zip(prompts, answers)):
        turns = [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        if args.system_every > 0 and i % args.system_every == 0:
            turns.insert(0, {"role": "system", "content": SYSTEM})
        messages.append({"messages": turns})
    write_jsonl(os.path.join(args.out, "sft_messages.jsonl"), messages)
    write_jsonl(os.path.join(args.out, "sft_alpaca.jsonl"),
                [{"instruction": q, "input": "", "output": ans} for q, ans in zip(prompts, answers)])
    write_jsonl(os.path.join(args.out, "sft_prompt_completion.jsonl"),
                [{"prompt": q, "completion": " " + ans} for q, ans in zip(prompts, answers)])
    write_jsonl(os.path.join(args.out, "heldout.jsonl"),
                [{"prompt": phrase(q), "answer": str(OPS[q[1]](q[0], q[2])), "a": q[0], "b": q[2], "op": q[1]}
                 for q in heldout])
    pairs = []
    for i in range(args.dpo):
        q = pool[rng.randrange(len(pool))]
        a, o, b = q
        pairs.append({"prompt": phrase(q), "chosen": str(OPS[o](a, b)), "rejected": str(wrong_answer(rng, a, o, b))})
    write_jsonl(os.path.join(args.out, "dpo_pairs.jsonl"), pairs)
    grpo = []
    for i in range(args.grpo):
        a, o, b = pool[rng.randrange(len(pool))]
        grpo.append({"prompt": [{"role": "user", "content": phrase((a, o, b))}], "answer": str(OPS[o](a, b))})
    if grpo:
        write_jsonl(os.path.join(args.out, "grpo_prompts.jsonl"), grpo)
    manifest = {"seed": args.seed, "min": args.min, "max": args.max, "ops": "".join(ops), "train": args.train,
                "heldout": len(heldout), "dpo": len(pairs), "grpo": len(grpo), "system_every": args.system_every,
                "distinct_train_questions": len(set(train))}
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {args.train} SFT examples x 3 shapes, {len(heldout)} held-out, {len(pairs)} DPO pairs")


if __name__ == "__main__":
    main()
