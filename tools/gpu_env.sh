#!/usr/bin/env bash
# Sourced by tools/gpu_check.sh and tools/gpu_e2e.sh on the GPU machine: unpacks the bundle into
# $BUNDLE_DIR (default /tmp/primus_bundle) and sets B (binaries), PY (python peers) and the
# library path (CUDA's lib64; the bundled Open MPI only where the machine has no libmpi.so.40).
ROOT=${ROOT:-$(pwd)}
BUNDLE_DIR=${BUNDLE_DIR:-/tmp/primus_bundle}
bash "$ROOT/tools/gpu_unpack.sh" "$BUNDLE_DIR" || return 1
B=$BUNDLE_DIR/bin
PY=$BUNDLE_DIR/py
# The binaries' RUNPATH ($ORIGIN/../lib) covers only their direct dependencies; libraries the
# bundled ones need in turn (e.g. libicuuc -> libicudata) are found through LD_LIBRARY_PATH.
export LD_LIBRARY_PATH=$BUNDLE_DIR/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p 2>/dev/null | grep -q 'libmpi.so.40 '; then
  export LD_LIBRARY_PATH=$BUNDLE_DIR/lib/mpi_fallback:$LD_LIBRARY_PATH
fi
export PYTHONUNBUFFERED=1
# The binaries were built elsewhere: point them at this checkout's configs/.
export PRIMUS_CONFIGS_DIR=${PRIMUS_CONFIGS_DIR:-$ROOT/configs}
