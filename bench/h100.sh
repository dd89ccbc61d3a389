#!/usr/bin/env bash
# bench/h100.sh -- runs the benchmark on the GPU machine in one device call, from the repo root,
# with the kit carried in .gpu. Pack the kit first, here (ESM bundles lack __dirname, which
# kernels/tensorflow's op-library lookup uses; the define supplies it):
#   ESBUILD_FLAGS='--define:__dirname=import.meta.dirname --define:__filename=import.meta.filename' \
#     bash ../shared/gpu/pack-webgpu-kit.sh -o "$PWD/.gpu" bench/bench.ts
# then (device tool): bash bench/h100.sh [bench flags]    e.g. --deadline=400
# Writes $OUT/results.json, results.md, chart.svg, bench.log and env.txt (the kit has no PNG
# renderer: `npm run chart -- <results.json>` here draws chart.png).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvidia-smi -L
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
bash .gpu/run-webgpu.sh .gpu/bench.mjs --out="$OUT" "$@" 2>&1 | grep -v 'XDG_RUNTIME_DIR' | tee "$OUT/bench.log"
exit "${PIPESTATUS[0]}"
