#!/usr/bin/env bash
# CI: compiles every CUDA and C++ source of the CUDA path (kernels, TensorFlow op library,
# Node loader, the test doubles of test/tensorflow_backend.test.ts) and fails on any error or
# warning. Machine code for sm_90 only, to stay near two minutes on two cores;
# `npm run build:cuda` builds sm_80 and sm_90 machine code plus PTX. Installs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build/cuda-ci"
start=$SECONDS
FA_CUDA_ARCHS="${FA_CUDA_ARCHS:-90}" OUT_DIR="$OUT" bash "$ROOT/scripts/build-cuda.sh"
bash "$ROOT/native/test/build-fakes.sh" "$OUT/fakes"
if command -v python3 >/dev/null; then
  python3 -m py_compile "$ROOT/kernels/cuda/harness/harness.py"
fi
echo "ci-compile-cuda: all CUDA and C++ sources compiled in $((SECONDS - start)) s"
