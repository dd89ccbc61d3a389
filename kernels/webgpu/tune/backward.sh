#!/usr/bin/env bash
# One device call timing the backward passes (per pass, GPU timestamps via tf.time) for tile
# candidates: bash kernels/webgpu/tune/backward.sh KITDIR [PHASE...]. KITDIR holds the kit with
# fa_tune.mjs (this tree) and optionally fa_tune_old.mjs (the kernels before, for the "before" row).
K=$1; shift
out=${OUT:-/tmp}/backward.log
t() { local entry=$1; shift; echo "## $entry $*" | tee -a $out
      timeout ${TMO:-60} bash $K/run-webgpu.sh $K/$entry.mjs "$@" 2>&1 | grep '^RESULT' | cut -c1-${CUT:-1500} | tee -a $out; }
cfg() { echo "{\"rows\":$1,\"cols\":$2,\"rowsPerThread\":$3,\"colsPerThread\":$4,\"unroll\":1,\"depth\":${5:-16}}"; }
# both "ROWS COLS RPT CPT [DEPTH]" "ROWS COLS RPT CPT [DEPTH]": dq and dK/dV tiles.
both() { echo "{\"dq\":$(cfg $1),\"dkdv\":$(cfg $2)}"; }
for phase in "$@"; do case $phase in
  check) t fa_tune --mode=check ;;
  old)
    t fa_tune_old --mode=time --n=4096 --bwd=1
    t fa_tune_old --mode=time --n=4096 --bwd=1 --d=128
    t fa_tune_old --mode=time --n=4096 --bwd=1 --causal=1 ;;
  d64)
    t fa_tune --mode=time --n=4096 --bwd=1
    for c in "64 64 4 4 32|64 32 4 4 32" "128 64 8 4 8|32 64 4 4" "64 64 8 4|64 64 8 4" "64 64 4 8|64 64 4 8" \
             "64 128 4 8 8|128 32 8 4 8" "64 64 4 4 8|64 64 4 4 8"; do
      t fa_tune --mode=check --cases=3 --tiles="$(both "${c%|*}" "${c#*|}")"
      t fa_tune --mode=time --n=4096 --bwd=1 --tiles="$(both "${c%|*}" "${c#*|}")"
    done ;;
  d128)
    t fa_tune --mode=time --n=4096 --bwd=1 --d=128
    for c in "64 32 4 4|64 32 4 4" "128 64 8 4 8|32 64 4 4" "64 128 4 8 8|64 64 8 4 8" "64 64 4 8 8|64 64 4 8 8" \
             "32 64 4 4|32 32 4 4"; do
      t fa_tune --mode=check --cases=3 --tiles="$(both "${c%|*}" "${c#*|}")"
      t fa_tune --mode=time --n=4096 --bwd=1 --d=128 --tiles="$(both "${c%|*}" "${c#*|}")"
    done ;;
  more)
    t fa_tune --mode=time --n=4096 --bwd=1 --causal=1
    t fa_tune --mode=time --n=4096 --bwd=1 --d=32
    t fa_tune --mode=time --n=1024 --bwd=1 --d=128
    t fa_tune --mode=time --n=1024 --bwd=1 --d=64
    t fa_tune --mode=time --n=16384 --bwd=1 --d=128 --reps=2 --warmMs=0
    t fa_tune --mode=time --n=16384 --bwd=1 --d=64 --reps=2 --warmMs=0 ;;
  final)   # the device-chosen tiles across head dims and lengths, then dQ alternatives
    t fa_tune --mode=check
    for d in 32 64 128; do t fa_tune --mode=time --n=4096 --bwd=1 --d=$d; t fa_tune --mode=time --n=4096 --bwd=1 --d=$d --causal=1; done
    t fa_tune --mode=time --n=1024 --bwd=1 --d=64
    t fa_tune --mode=time --n=1024 --bwd=1 --d=128
    t fa_tune --mode=time --n=4096 --bwd=1 --d=256 --reps=3
    t fa_tune --mode=time --n=4096 --bwd=1 --subgroups=1
    t fa_tune --mode=time --n=16384 --bwd=1 --d=64 --reps=2 --warmMs=0
    t fa_tune --mode=time --n=16384 --bwd=1 --d=128 --reps=2 --warmMs=0
    for d in 64 128; do
      t fa_tune --mode=time --n=4096 --bwd=1 --d=$d --tiles='{"dq":{"rows":64,"cols":64,"rowsPerThread":4,"colsPerThread":4,"unroll":1,"depth":16,"accumulateDepth":8}}'
      t fa_tune --mode=time --n=4096 --bwd=1 --d=$d --tiles='{"dq":{"rows":128,"cols":64,"rowsPerThread":8,"colsPerThread":4,"unroll":1,"depth":8,"accumulateDepth":16}}'
    done ;;
esac; done
