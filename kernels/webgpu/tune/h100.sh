#!/usr/bin/env bash
# One device call: correctness of the large-device tiles, then timings of tile candidates.
# Run from the repo root with the kit carried: bash kernels/webgpu/tune/h100.sh PHASE...
K=.gpu-kernels; R="bash $K/run-webgpu.sh $K/fa_tune.mjs"
out=${OUT:-/tmp}/tune.log
t() { echo "## $*" | tee -a $out; timeout ${TMO:-90} $R "$@" 2>&1 | grep '^RESULT' | cut -c1-${CUT:-400} | tee -a $out; }
cfg() { echo "{\"rows\":$1,\"cols\":$2,\"rowsPerThread\":$3,\"colsPerThread\":${4:-4},\"unroll\":${5:-2}}"; }
for phase in "$@"; do case $phase in
  check) t --mode=check ;;
  fwd)
    for c in "64 32 4 4" "64 32 8 4" "64 32 4 4 4"; do
      T="{\"forward\":$(cfg $c)}"
      t --mode=time --n=4096 --tiles="$T"
    done ;;
  causal) t --mode=time --n=4096 --causal=1 ;;
  bwd)
    for c in "64 16 4 2" "64 16 4 4" "32 32 4 2"; do
      T="{\"dq\":$(cfg $c),\"dkdv\":$(cfg $c)}"
      t --mode=time --n=4096 --bwd=1 --tiles="$T"
    done ;;
  mem)
    t --mode=time --n=8192 --bwd=1 --reps=3
    t --mode=time --n=8192 --reps=3 ;;
  subgroups)   # plain vs the opt-in subgroups device, alternating; correctness at 32 lanes first
    t --mode=check --subgroups=1
    for bwd in 0 1; do for sg in 0 1 0 1; do t --mode=time --n=4096 --bwd=$bwd --subgroups=$sg; done; done ;;
  big)
    t --mode=time --n=8192 --bwd=1 --reps=3
    t --mode=time --n=4096 --bwd=1 --causal=1
    t --mode=time --n=16384 --bwd=1 --reps=2 --warmMs=0
    TMO=200 t --mode=time --n=65536 --bwd=1 --reps=1 --warmMs=0 ;;
esac; done
