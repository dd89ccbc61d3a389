#!/usr/bin/env bash
# bench/pack-h200.sh [DIR] -- here: builds the kit bench/h200.sh runs on the GPU machine (default
# DIR .gpu/h200): Node and Dawn once (../shared/gpu/pack-webgpu-kit.sh), bundles of the bench and
# of the training example's comparison and profile, onnxruntime-node xz'd (bench/install-peers.sh),
# h200.sh itself and the commit. About 50 MiB: under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/h200}
pack=${PACK_WEBGPU_KIT:-}
for p in ../shared/gpu/pack-webgpu-kit.sh /work/shared/gpu/pack-webgpu-kit.sh; do
  [[ -z $pack && -f $p ]] && pack=$p
done
[[ -n $pack ]] || { echo "pack-webgpu-kit.sh not found: set PACK_WEBGPU_KIT" >&2; exit 1; }
# ESM bundles lack __dirname, which kernels/tensorflow's op-library lookup uses.
ESBUILD_FLAGS='--define:__dirname=import.meta.dirname --define:__filename=import.meta.filename' \
  bash "$pack" -o "$out" bench/bench.ts examples/transformer/compare.ts examples/transformer/profile_step.ts \
  examples/transformer/generate_bench.ts
bash bench/install-peers.sh --pack "$out"
cp bench/h200.sh "$out/h200.sh"
git rev-parse --short HEAD > "$out/commit.txt"
git diff --quiet HEAD -- bench examples src kernels || echo "$(cat "$out/commit.txt")+uncommitted" > "$out/commit.txt"
du -sh "$out"
