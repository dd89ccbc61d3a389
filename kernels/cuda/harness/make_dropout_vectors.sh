#!/usr/bin/env bash
# Writes dropout_vectors.json: keep decisions and raw hash bits of src/contract/dropout.ts (the
# TypeScript definition) for a spread of (seed, bh, i, j, rate), so that the harness can check
# its own reference hash, and through it the CUDA kernels, against the source of truth.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
TMP="$(mktemp -d)"
"$ROOT/node_modules/.bin/esbuild" "$ROOT/src/contract/dropout.ts" --format=cjs --outfile="$TMP/dropout.js" --log-level=warning
node -e '
const d = require(process.argv[1]);
const cases = [];
const seeds = [0, 1, 42, 0x9e3779b9, 0xffffffff, 123456789];
const rates = [0.1, 0.5, 0.9];
for (const seed of seeds) for (const bh of [0, 1, 7, 31]) for (const i of [0, 3, 100, 4095]) for (const j of [0, 1, 17, 2047]) {
  const rate = rates[(i + j + bh) % rates.length];
  cases.push({ seed, bh, i, j, rate, bits: d.dropoutBits(d.dropoutRowKey(seed, bh, i), j),
               threshold: d.dropoutThreshold(rate), keep: d.dropoutKeep(seed, bh, i, j, rate) });
}
process.stdout.write(JSON.stringify({ source: "src/contract/dropout.ts", cases }) + "\n");
' "$TMP/dropout.js" > "$(dirname "${BASH_SOURCE[0]}")/dropout_vectors.json"
rm -rf "$TMP"
echo "wrote dropout_vectors.json"
