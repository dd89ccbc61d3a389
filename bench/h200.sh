#!/usr/bin/env bash
# bench/h200.sh -- everything the GPU machine (an NVIDIA H200; no Node, no network there) measures,
# in one device call, from the repository root, with the kit made here by bench/pack-h200.sh:
#   1. the benchmark sweep: flash on tfjs's default WebGPU device and on the opt-in subgroups
#      device, the stock composite, and onnxruntime's WebGPU attention (f32, f16) as a peer;
#   2. the training example side by side (flash vs stock, examples/transformer/compare.ts);
#   3. the per-kernel profile of one training step (examples/transformer/profile_step.ts);
#   4. with --generation: the example's generation, key/value cache vs full recomputation
#      (examples/transformer/generate_bench.ts; writes generation.log and generation.json).
#
#   bash bench/pack-h200.sh                  # here; kit in .gpu/h200 (or: bash bench/pack-h200.sh DIR)
#   (device tool, carrying the kit) bash .gpu/h200/h200.sh [--quick] [--kit=DIR] [--no-bench]
#        [--no-training] [--generation] [--bench-seconds=S] [--training-seconds=S] [--generation-seconds=S]
#        [bench flags, e.g. --dims=32,256]
# Generation alone: bash .gpu/h200/h200.sh --no-bench --no-training --generation (3 files back).
# The kit carries this script too, so a checkout without it can run it from the kit.
# A call may last 600 s: the bench gets --bench-seconds (400; no case starts after 80 % of it, the
# rest is recorded as skipped), the training part --training-seconds (150). The full sweep (N 512 …
# 32768, d 32 … 256, 392 cases) needs more than one call: split it, e.g. --dims=32,64 --no-training,
# then --dims=128,256 --no-training, then --no-bench.
# --quick: the bench's subset (N 1024, 4096, 16384; d 64, 128), the side by side at 4096 and 16384.
# Writes 8 files to $OUT: env.txt, bench.log, results.json, results.md, chart.png, training.log,
# compare.json, profile.json. The H100 used the same steps (bench/h100.sh until 2026-12-02).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kit=$here; [[ -f $kit/run-webgpu.sh ]] || kit=.gpu/h200
quick=0 bench=1 training=1 generation=0 bench_s=400 training_s=150 generation_s=200
bench_flags=()
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --kit=*) kit=${arg#--kit=} ;;
    --no-bench) bench=0 ;;
    --no-training) training=0 ;;
    --generation) generation=1 ;;
    --generation-seconds=*) generation_s=${arg#*=} ;;
    --bench-seconds=*) bench_s=${arg#*=} ;;
    --training-seconds=*) training_s=${arg#*=} ;;
    *) bench_flags+=("$arg") ;;
  esac
done
[[ -f $kit/run-webgpu.sh ]] || { echo "no kit in $kit: run bash bench/pack-h200.sh here first" >&2; exit 2; }
filter() { grep -v 'XDG_RUNTIME_DIR\|Hi, looks like\|^=*$\|tfjs-node\|is already registered\|^$'; }

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvidia-smi -L
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
export BENCH_COMMIT=${BENCH_COMMIT:-$(cat "$kit/commit.txt" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)}

# The onnxruntime peer: its package folder travels xz'd beside the kit (esbuild cannot bundle its
# .node addon); NODE_PATH lets the bench's require find it.
if [[ -f $kit/onnxruntime-node.tar.xz ]]; then
  mkdir -p /tmp/ort-peer
  [[ -d /tmp/ort-peer/node_modules/onnxruntime-node ]] || tar -C /tmp/ort-peer -xJf "$kit/onnxruntime-node.tar.xz"
  export NODE_PATH=/tmp/ort-peer/node_modules${NODE_PATH:+:$NODE_PATH}
fi

# An idle CUDA context held open for the whole call: on this H200 the SM clock stayed at its 345 MHz
# idle under Dawn's Vulkan work (nvidia-smi: "Clocks Event Reasons: Idle"; 2026-12-02 12:46-12:59 UTC
# runs), while a CUDA context moves it to 1980 MHz at once. It launches no work (BENCHMARKS.md,
# WebGPU decode, "Clocks"). Where PyTorch is missing the run goes on without it (env.txt says so).
holder=
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  python3 -c "import torch, time; torch.zeros(1, device='cuda'); torch.cuda.synchronize(); time.sleep(3600)" &
  holder=$!
  sleep 8
  echo "clock holder: an idle CUDA context (pid $holder); SM clock now $(nvidia-smi --query-gpu=clocks.sm --format=csv,noheader)" >> "$OUT/env.txt"
else
  echo "clock holder: none (no PyTorch with CUDA)" >> "$OUT/env.txt"
fi

status=0
if [[ $bench == 1 ]]; then
  q=(); [[ $quick == 1 ]] && q=(--quick)
  timeout "$bench_s" bash "$kit/run-webgpu.sh" "$kit/bench.mjs" --out="$OUT" --deadline=$((bench_s * 4 / 5)) \
    "${q[@]}" "${bench_flags[@]}" 2>&1 | filter | tee "$OUT/bench.log"
  status=${PIPESTATUS[0]}
fi

if [[ $training == 1 ]]; then
  seqs=1024,2048,4096,8192,16384; [[ $quick == 1 ]] && seqs=4096,16384
  model=(--backend=webgpu --dim=256 --heads=4 --layers=2)
  {
    echo "## profile of one training step, seq 4096"
    timeout $((training_s / 2)) bash "$kit/run-webgpu.sh" "$kit/profile_step.mjs" "${model[@]}" --seq=4096 --steps=3 \
      --out="$OUT/profile.json"
    rm -f "$OUT/profile.md"   # its content is in this log; the tool returns at most 8 files
    echo "## side by side, seqs $seqs"
    timeout $((training_s / 2)) bash "$kit/run-webgpu.sh" "$kit/compare.mjs" "${model[@]}" --seqs=$seqs --steps=3 \
      --max-step-seconds=15 --out="$OUT/compare.json"
  } 2>&1 | filter | tee "$OUT/training.log"
fi
if [[ $generation == 1 ]]; then
  {
    echo "## generation: key/value cache vs full recomputation (greedy, same tokens checked)"
    timeout "$generation_s" bash "$kit/run-webgpu.sh" "$kit/generate_bench.mjs" --backend=webgpu --dim=256 --heads=4 \
      --layers=2 --contexts=256,1024,4096,16384 --tokens=64 --max-seconds=40 --out="$OUT/generation.json"
  } 2>&1 | filter | tee "$OUT/generation.log"
fi
[[ -n $holder ]] && kill "$holder"
ls -la "$OUT"
exit "$status"
