#!/usr/bin/env bash
# Builds, into $1, the test doubles of test/tensorflow_backend.test.ts: a fake libtensorflow.so.2,
# a fake tfjs binding addon linked against it, the op library compiled with a host compiler
# against CUDA's runtime (kernels absent), and the real loader addon. Needs g++ and CUDA's
# headers and static runtime (CUDA_HOME, default /usr/local/cuda); no GPU.
set -euo pipefail
OUT="$1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
CXX="${CXX:-g++}"
NODE_INC="$(dirname "$(readlink -f "$(command -v node)")")/../include/node"
FLAGS=(-std=c++17 -O1 -fPIC -shared -Wall -Wextra -Werror)
mkdir -p "$OUT"
"$CXX" "${FLAGS[@]}" -fvisibility=hidden -Wl,-soname,libtensorflow.so.2 \
  "$ROOT/native/test/fake_libtensorflow.cc" -o "$OUT/libtensorflow.so.2" -ldl
"$CXX" "${FLAGS[@]}" -DNAPI_VERSION=8 -I"$NODE_INC" "$ROOT/native/test/fake_tfjs_binding.cc" \
  -o "$OUT/fake_tfjs_binding.node" "$OUT/libtensorflow.so.2" -Wl,-rpath,'$ORIGIN'
"$CXX" "${FLAGS[@]}" -fvisibility=hidden -I"$ROOT/kernels/cuda" -I"$CUDA_HOME/include" \
  "$ROOT/native/tf_op/flash_attention_op.cc" "$ROOT/native/test/fa_kernels_absent.cc" \
  -o "$OUT/flash_attention_op.so" "$CUDA_HOME/lib64/libcudart_static.a" -lpthread -ldl -lrt
"$CXX" "${FLAGS[@]}" -fvisibility=hidden -DNAPI_VERSION=8 -I"$NODE_INC" "$ROOT/native/loader/loader.cc" \
  -o "$OUT/flash_attention_loader.node" -ldl
