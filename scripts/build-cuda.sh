#!/usr/bin/env bash
# Builds the CUDA FlashAttention kernels and everything that serves them, into build/cuda/:
#   libflash_attention_cuda.so    the kernels behind the C ABI (kernels/cuda/flash_attention.h),
#                                 for the standalone harness (kernels/cuda/harness/)
#   flash_attention_op.so         the TensorFlow op library (native/tf_op/), kernels linked in
#   flash_attention_loader.node   the Node addon that loads the op library into tfjs-node-gpu's
#                                 libtensorflow (native/loader/)
# Usage: scripts/build-cuda.sh [--kernels-only]
# Environment: CUDA_HOME (default /usr/local/cuda), FA_CUDA_ARCHS (default "80 90": machine code
# for each, plus PTX of the last for newer GPUs), JOBS (default: number of cores), OUT_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${NVCC:-$CUDA_HOME/bin/nvcc}"
ARCHS="${FA_CUDA_ARCHS:-80 90}"
JOBS="${JOBS:-$(nproc)}"
OUT="${OUT_DIR:-$ROOT/build/cuda}"
KERNELS_ONLY=0
[[ "${1:-}" == "--kernels-only" ]] && KERNELS_ONLY=1

if [[ ! -x "$NVCC" ]]; then
  echo "build-cuda: nvcc not found at $NVCC (set CUDA_HOME); the CUDA kernels are optional" >&2
  exit 1
fi

GENCODE=()
last=""
for a in $ARCHS; do GENCODE+=("-gencode=arch=compute_$a,code=sm_$a"); last="$a"; done
GENCODE+=("-gencode=arch=compute_$last,code=compute_$last")

NVFLAGS=(-std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -fvisibility=hidden --expt-relaxed-constexpr
         -Werror all-warnings "${GENCODE[@]}")
mkdir -p "$OUT/obj"

# Each .cu compiles on its own core: they are the slow part (templates x architectures).
SOURCES=(api stage_bf16 forward_simt forward_tc backward_simt backward_tc decode_splitkv)
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} \
  "$NVCC" "${NVFLAGS[@]}" -c "$ROOT/kernels/cuda/{}.cu" -o "$OUT/obj/{}.o"
OBJS=()
for s in "${SOURCES[@]}"; do OBJS+=("$OUT/obj/$s.o"); done

# The C ABI is exported from both libraries; everything else stays hidden.
"$NVCC" "${GENCODE[@]}" -shared -o "$OUT/libflash_attention_cuda.so" "${OBJS[@]}" -cudart static
echo "build-cuda: $OUT/libflash_attention_cuda.so"
[[ $KERNELS_ONLY == 1 ]] && exit 0

# TensorFlow op library: declares the few stable C API functions it uses (no TensorFlow headers
# or library are needed to build it); they resolve against libtensorflow when TF_LoadLibrary
# opens it, so undefined symbols are allowed here.
"$NVCC" -std=c++17 -O2 -Xcompiler -fPIC -Xcompiler -fvisibility=hidden -Xcompiler -Wall,-Wextra,-Werror \
  -I"$ROOT/kernels/cuda" -c "$ROOT/native/tf_op/flash_attention_op.cc" -o "$OUT/obj/flash_attention_op.o"
"$NVCC" "${GENCODE[@]}" -shared -o "$OUT/flash_attention_op.so" "$OUT/obj/flash_attention_op.o" "${OBJS[@]}" \
  -cudart static
echo "build-cuda: $OUT/flash_attention_op.so"

# Node addon (N-API, no node-gyp: node's own headers, symbols resolved from the node binary).
NODE_BIN="$(command -v node || true)"
if [[ -z "$NODE_BIN" ]]; then echo "build-cuda: node not found, loader not built" >&2; exit 1; fi
NODE_INC="$(dirname "$(readlink -f "$NODE_BIN")")/../include/node"
"${CXX:-g++}" -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
  -DNAPI_VERSION=8 -I"$NODE_INC" "$ROOT/native/loader/loader.cc" -o "$OUT/flash_attention_loader.node" -ldl
echo "build-cuda: $OUT/flash_attention_loader.node"
