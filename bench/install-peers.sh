#!/usr/bin/env bash
# bench/install-peers.sh -- installs the benchmark's optional peer, onnxruntime-node 1.30 (its
# linux-x64 binary holds the WebGPU execution provider with its own Dawn), into bench/peers/,
# outside the project's dependencies: CI never installs it, `npm run bench` uses it when present.
# --ignore-scripts: its install script only fetches CUDA extras. Other platforms' binaries are
# deleted (linux-x64 is what runs here and on the GPU machine).
#   bash bench/install-peers.sh            # then: npm run bench
#   bash bench/install-peers.sh --pack DIR # also writes DIR/onnxruntime-node.tar.xz for the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.30.0
dir=bench/peers
if [[ ! -f $dir/node_modules/onnxruntime-node/package.json ]] ||
   ! grep -q "\"version\": \"$version\"" "$dir/node_modules/onnxruntime-node/package.json"; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --ignore-scripts --no-save --no-package-lock --no-audit --no-fund \
    "onnxruntime-node@$version"
fi
bin=$dir/node_modules/onnxruntime-node/bin/napi-v6
for platform in "$bin"/*/*; do
  [[ $platform == */linux/x64 ]] || rm -rf "$platform"
done
echo "onnxruntime-node $version in $dir/node_modules ($(du -sh "$dir/node_modules" | cut -f1))"
if [[ ${1:-} == --pack ]]; then
  out=${2:?--pack needs a folder}
  mkdir -p "$out"
  packed=$out/onnxruntime-node.tar.xz
  # Compressed again only when the installed package is newer (xz of 47 MB takes minutes here).
  if [[ ! -s $packed || $dir/node_modules/onnxruntime-node/package.json -nt $packed ]]; then
    tar -C "$dir" -cf - node_modules | xz -T0 -6 > "$packed.tmp" && mv "$packed.tmp" "$packed"
  fi
  echo "packed: $packed ($(du -h "$packed" | cut -f1))"
fi
