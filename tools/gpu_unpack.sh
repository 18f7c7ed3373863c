#!/usr/bin/env bash
# Unpacks gpu_bundle/primus_gpu.tar.xz (made by tools/gpu_bundle.sh) into DIR (default
# /tmp/primus_bundle) on the GPU machine; does nothing when DIR is already current.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-/tmp/primus_bundle}
ARCHIVE=$ROOT/gpu_bundle/primus_gpu.tar.xz
[[ -f "$ARCHIVE" ]] || { echo "no $ARCHIVE: run tools/gpu_bundle.sh and carry gpu_bundle" >&2; exit 1; }
if [[ -f "$DIR/.stamp" && "$DIR/.stamp" -nt "$ARCHIVE" ]]; then exit 0; fi
rm -rf "$DIR" && mkdir -p "$DIR"
if command -v xz >/dev/null; then
  xz -dc "$ARCHIVE" | tar -C "$DIR" -xf -
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$ARCHIVE" "$DIR"
fi
touch "$DIR/.stamp"
