#!/usr/bin/env bash
# libFuzzer targets of fuzz/ (fuzz/README.md):
#   tools/fuzz.sh build            configure + build build-fuzz/ with clang (ASan + UBSan + coverage)
#   tools/fuzz.sh seeds            seed corpora from the project's own files into build-fuzz/corpus/
#   tools/fuzz.sh run SECONDS      every target for SECONDS each on its corpus; crashes land in
#                                  build-fuzz/crashes/<target>/ and fail the run
# ./test.sh runs `run 10` (ctest fuzz.short_runs; skipped when build-fuzz/ was not built).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
TARGETS="fuzz_experiment_yaml fuzz_safetensors fuzz_indexed_dataset fuzz_hf_config fuzz_tokenizer_json"

seeds() {
  local c=$BUILD/corpus
  mkdir -p "$c"/{fuzz_experiment_yaml,fuzz_safetensors,fuzz_indexed_dataset,fuzz_hf_config,fuzz_tokenizer_json}
  cp "$ROOT"/examples/megatron/*.yaml "$c/fuzz_experiment_yaml/"
  cp "$ROOT"/tests/data/tokenizer_spm_style_*.json "$c/fuzz_tokenizer_json/"
  python3 - "$c" <<'PY'
import json, struct, sys, os
c = sys.argv[1]
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
    if [[ ! -x "$BUILD/bin/fuzz_safetensors" ]]; then
      echo "the fuzz targets are not built ($BUILD/bin): run tools/fuzz.sh build (needs clang); skipped"
      exit 77
    fi
    export PRIMUS_CONFIGS_DIR=$ROOT/configs ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    rc=0
    for t in $TARGETS; do
      mkdir -p "$BUILD/crashes/$t" "$BUILD/corpus/$t"
      log=$BUILD/crashes/$t.log
      if "$BUILD/bin/$t" "$BUILD/corpus/$t" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096 -timeout=20 \
           -artifact_prefix="$BUILD/crashes/$t/" -print_final_stats=1 >"$log" 2>&1; then
        echo "$t: ok, $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${secs} s, corpus $(ls "$BUILD/corpus/$t" | wc -l)"
      else
        echo "$t: FINDING (log $log)"; grep -m5 -E "ERROR|SUMMARY|runtime error|terminate" "$log" || true
        rc=1
      fi
    done
    exit $rc
    ;;
  *) echo "usage: tools/fuzz.sh build | seeds | run SECONDS" >&2; exit 2 ;;
esac
