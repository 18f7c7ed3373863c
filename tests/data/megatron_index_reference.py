#!/usr/bin/env python3
"""Megatron's GPT dataset indices, re-implemented from megatron/core/datasets/gpt_dataset.py
and helpers.cpp with numpy's RandomState, compared with the .npy index files Primus cached.

usage: megatron_index_reference.py PREFIX CACHE_DIR SEQ_LENGTH NUM_SAMPLES SEED FIRST LAST"""
import glob
import sys

import numpy as np


def fail(msg):
    print(f"megatron_index_reference: FAILED: {msg}")
    sys.exit(1)


def sequence_lengths(prefix):
    raw = open(prefix + ".idx", "rb").read()
    n_seq = int(np.frombuffer(raw, np.uint64, 1, 18)[0])
    return np.frombuffer(raw, np.int32, n_seq, 34)


def document_index(documents, num_epochs, rs, separate_final_epoch):
    if not separate_final_epoch or num_epochs == 1:
        idx = np.mgrid[0:num_epochs, 0:len(documents)][1]
        idx[:] = documents
        idx = idx.reshape(-1).astype(np.int32)
        rs.shuffle(idx)
        return idx
    first = document_index(documents, num_epochs - 1, rs, False)
    last = document_index(documents, 1, rs, False)
    return np.concatenate((first, last))


def sample_index(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, extra=1):
    num_samples = (num_epochs * tokens_per_epoch - extra) // seq_length
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    s, pos, off = 1, 0, 0
    while s <= num_samples:
        remaining = seq_length + extra
        while remaining != 0:
            doc_len = sizes[doc_idx[pos]] - off
            remaining -= doc_len
            if remaining <= 0:
                off += remaining + doc_len - extra
                remaining = 0
            else:
                if pos == len(doc_idx) - 1:
                    off = sizes[doc_idx[pos]] - extra
                    break
                pos += 1
                off = 0
        out[s] = (pos, off)
        s += 1
    return out


def shuffle_index(num_samples, total, rs):
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(0, num_samples, 1, dtype=dtype)
    rs.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, 1, dtype=dtype)
    rs.shuffle(last)
    return np.concatenate((first, last))


def main():
    prefix, cache = sys.argv[1], sys.argv[2]
    seq_length, num_samples, seed, first, last = map(int, sys.argv[3:8])
    sizes = sequence_lengths(prefix)
    documents = np.arange(first, last, dtype=np.int32)
    tokens_per_epoch = int(sizes[documents].astype(np.int64).sum())
    num_epochs, tokens = 1, tokens_per_epoch
    while tokens < num_samples * seq_length + 1:
        tokens += tokens_per_epoch
        num_epochs += 1
    separate = False
    if num_epochs > 1:
        sans_final = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        from_final = num_samples - sans_final
        per_epoch = (tokens_per_epoch - 1) // seq_length
        separate = from_final < int(0.80 * per_epoch)
    rs = np.random.RandomState(seed)
    doc_idx = document_index(documents, num_epochs, rs, separate)
    smp_idx = sample_index(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch)
    shf_idx = shuffle_index(sans_final if separate else smp_idx.shape[0] - 1, smp_idx.shape[0] - 1, rs)
    files = {k: glob.glob(f"{cache}/*-GPTDataset-train-{k}.npy") for k in ("document_index", "sample_index", "shuffle_index")}
    for k, v in files.items():
        if len(v) != 1:
            fail(f"expected one cached {k} in {cache}, found {v}")
    ours = {k: np.load(v[0]) for k, v in files.items()}
    for name, want in (("document_index", doc_idx), ("sample_index", smp_idx), ("shuffle_index", shf_idx)):
        got = ours[name]
        if got.shape != want.shape or not np.array_equal(got.astype(np.int64), want.astype(np.int64)):
            fail(f"{name}: Primus {got.shape} {got.reshape(-1)[:8].tolist()} vs Megatron {want.shape} "
                 f"{want.reshape(-1)[:8].tolist()}")
    print(f"megatron_index_reference: {num_epochs} epochs (separate final epoch: {separate}), "
          f"{smp_idx.shape[0] - 1} samples: document, sample and shuffle indices identical")


if __name__ == "__main__":
    main()
