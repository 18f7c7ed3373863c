#!/usr/bin/env python3
"""Independent reader of Megatron's indexed dataset (.bin/.idx), written from the format
with numpy only (no Primus code): checks the header, the sizes, the pointers, and that the
documents hold exactly the expected token ids.

usage: read_indexed_dataset.py PREFIX EXPECTED_IDS
  EXPECTED_IDS: one line per document, ids separated by spaces (a document of N sequences
  is compared with the concatenation of its sequences)."""
import sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


def fail(msg):
    print(f"read_indexed_dataset: FAILED: {msg}")
    sys.exit(1)


def read(prefix):
    raw = open(prefix + ".idx", "rb").read()
    if raw[:9] != b"MMIDIDX\x00\x00":
        fail(f"{prefix}.idx: bad magic {raw[:9]!r}")
    version = int(np.frombuffer(raw, np.uint64, 1, 9)[0])
    code = raw[17]
    n_seq = int(np.frombuffer(raw, np.uint64, 1, 18)[0])
    n_doc = int(np.frombuffer(raw, np.uint64, 1, 26)[0])
    if version != 1 or code not in DTYPES:
        fail(f"version {version}, dtype code {code}")
    off = 34
    lengths = np.frombuffer(raw, np.int32, n_seq, off)
    off += 4 * n_seq
    pointers = np.frombuffer(raw, np.int64, n_seq, off)
    off += 8 * n_seq
    docs = np.frombuffer(raw, np.int64, n_doc, off)
    off += 8 * n_doc
    if off != len(raw):
        fail(f"{prefix}.idx: {len(raw)} bytes, header says {off}")
    dtype = np.dtype(DTYPES[code])
    expect_ptr = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * dtype.itemsize)[:-1]]) if n_seq else []
    if n_seq and not np.array_equal(pointers, expect_ptr):
        fail("sequence pointers do not follow the lengths")
    tokens = np.fromfile(prefix + ".bin", dtype=dtype)
    if tokens.size != int(lengths.astype(np.int64).sum()):
        fail(f"{prefix}.bin holds {tokens.size} tokens, index says {lengths.sum()}")
    if docs[0] != 0 or docs[-1] != n_seq or np.any(np.diff(docs) < 0):
        fail("document indices are not 0 .. number of sequences, non-decreasing")
    return dtype, lengths, pointers, docs, tokens


def main():
    prefix, expected_path = sys.argv[1], sys.argv[2]
    dtype, lengths, pointers, docs, tokens = read(prefix)
    expected = [np.array(l.split(), dtype=np.int64) for l in open(expected_path).read().split("\n")[:-1]]
    if len(expected) != len(docs) - 1:
        fail(f"{len(docs) - 1} documents in {prefix}, expected {len(expected)}")
    n_tokens = 0
    for d, want in enumerate(expected):
        seqs = range(int(docs[d]), int(docs[d + 1]))
        got = np.concatenate([tokens[pointers[s] // dtype.itemsize:][: lengths[s]] for s in seqs]) if len(seqs) else np.array([], np.int64)
        if not np.array_equal(got.astype(np.int64), want):
            k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            fail(f"document {d} differs at token {k}: file {got[k:k + 8].tolist()} expected {want[k:k + 8].tolist()}")
        n_tokens += len(want)
    print(f"read_indexed_dataset: {prefix}: {len(expected)} documents, {n_tokens} tokens ({dtype.name}) as expected")


if __name__ == "__main__":
    main()
