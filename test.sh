#!/usr/bin/env bash
# Runs the whole test suite (unit, reference parity vs PyTorch / HF tokenizers,
# integration). Builds first if needed. Usage: ./test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")"
BUILD_DIR=${PRIMUS_BUILD_DIR:-build}
[[ -f "$BUILD_DIR/build.ninja" ]] || cmake -S . -B "$BUILD_DIR" -G Ninja ${PRIMUS_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
cd "$BUILD_DIR"
ctest --output-on-failure -j"$(nproc)" --timeout 900 "$@"
