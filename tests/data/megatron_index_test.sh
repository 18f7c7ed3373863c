#!/usr/bin/env bash
# Preprocesses a small synthetic JSONL (NullTokenizer), builds GPT indices with Primus in a
# few regimes (one epoch, many epochs with and without a separate last epoch, a split
# range), and checks each against megatron_index_reference.py (numpy RandomState).
# usage: megatron_index_test.sh PRIMUS_BINARY GPT_INDEX_DUMP_BINARY
set -euo pipefail
primus=$1; dump=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp/in.jsonl" <<'PY'
import json, random, sys
r = random.Random(7)
with open(sys.argv[1], "w") as f:
    for d in range(300):
        f.write(json.dumps({"text": " ".join(str(r.randrange(1, 999)) for _ in range(r.randrange(1, 60)))}) + "\n")
PY
"$primus" preprocess --input "$tmp/in.jsonl" --output-prefix "$tmp/syn" --tokenizer-type NullTokenizer \
  --vocab-size 1000 --append-eod --quiet >/dev/null
prefix=$tmp/syn_text_document
#      seq  samples seed first last
for args in "32 50 1234 0 300" "32 560 3 0 300" "16 3000 1234 0 300" "16 2200 7 0 300" "64 400 99 20 250" "8 10 5 290 300"; do
  set -- $args
  cache=$tmp/cache_$1_$2_$3
  "$dump" "$prefix" "$cache" "$@" >/dev/null
  /usr/bin/python3 "$here/megatron_index_reference.py" "$prefix" "$cache" "$@"
done
