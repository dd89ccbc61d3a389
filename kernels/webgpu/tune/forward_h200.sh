#!/usr/bin/env bash
# kernels/webgpu/tune/forward_h200.sh -- issue 11's forward measurement on the GPU machine (H200), in
# one device call, with a kit packed here:
#   bash /work/shared/gpu/pack-webgpu-kit.sh -o KIT bench/bench.ts kernels/webgpu/tune/forward_sweep.ts \
#        bench/pass_profile.ts   (with pack-h200.sh's ESBUILD_FLAGS), then cp bench/h200.sh
#        and this script into KIT;  there:  bash KIT/forward_h200.sh [--budget=540]
# 1. the tiled against the staged forward, one process per (device path, head dim, variant), so no
#    geometry is timed after another's idle gap or in another's clock state (forward_sweep.ts);
# 2. GPU time per program of forward + backward, both variants and device paths (pass_profile.ts),
#    including the d = 128 causal N = 1024 case that read 6.88 ms against 2.41 full;
# 3. the bench (composite and flash, tfjs's default device) in whatever time is left.
# Writes to $OUT: env.txt, sweep.txt, profile.txt, bench.log, results.json, results.md.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
kit=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
budget=540
for a in "$@"; do case $a in --budget=*) budget=${a#*=} ;; esac; done
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
run() { bash "$kit/run-webgpu.sh" "$@" 2>&1 | grep -v 'XDG_RUNTIME_DIR\|^$'; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nvidia-smi -L; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

tiled() {   # the forward's tiled choice on the H200 (48 KiB) per head dim
  case $1 in
    32|64) echo '{"rows":64,"cols":32,"rowsPerThread":4,"colsPerThread":4,"unroll":4}' ;;
    128) echo '{"rows":32,"cols":16,"rowsPerThread":2,"colsPerThread":2,"unroll":2}' ;;
    256) echo '{"rows":32,"cols":8,"rowsPerThread":2,"colsPerThread":2,"unroll":2,"sharedKV":true}' ;;
  esac
}
staged='{"rows":64,"cols":64,"rowsPerThread":4,"colsPerThread":4,"unroll":1,"depth":16,"staged":true}'
for sg in 0 1; do
  for d in 32 64 128 256; do
    for variant in tiled staged; do
      t=$([[ $variant == tiled ]] && tiled $d || echo "$staged")
      # The tiled d = 256 tile takes ~150 ms at N = 4096: N = 16384 would take a minute alone.
      ns=1024,4096,16384; [[ $variant == tiled && $d == 256 ]] && ns=1024,4096
      echo "# sweep subgroups=$sg d=$d $variant ($(left) s left)"
      timeout 40 bash "$kit/run-webgpu.sh" "$kit/forward_sweep.mjs" --subgroups=$sg --n=$ns --reps=10 --warmMs=500 \
        --grid="[{\"d\":$d,\"tiles\":[$t]}]" 2>&1 | grep RESULT | sed "s/^RESULT /RESULT {\"variant\":\"$variant\",/;s/,{/,/" 
    done
  done
done | tee "$OUT/sweep.txt"

{
  for fwd in tiled staged; do
    echo "# profile forward=$fwd ($(left) s left)"
    timeout 60 bash "$kit/run-webgpu.sh" "$kit/pass_profile.mjs" --subgroups=both --forward=$fwd --d=64,128 --n=1024,4096 \
      --causal=both --reps=7 --warmMs=600 2>&1 | grep 'RESULT\|rror'
  done
} | tee "$OUT/profile.txt"

s=$(left); [[ $s -gt 330 ]] && s=330
echo "# bench: $s s"
OUT=/tmp/bench-out bash "$kit/h200.sh" --kit="$kit" --no-training --bench-seconds=$s --impls=composite,flash \
  --forward=tiled --dims=32,64,128,256 --seqs=1024,4096,16384 > "$OUT/bench.log" 2>&1
cp /tmp/bench-out/results.json /tmp/bench-out/results.md "$OUT/" 2>/dev/null
tail -5 "$OUT/bench.log"
echo "# done after $((SECONDS - start)) s"
ls -la "$OUT"
