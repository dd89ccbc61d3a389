#!/usr/bin/env bash
# The training example on the GPU machine (no Node there): the side-by-side comparison, then a
# short training run at 4096 on WebGPU. Run from the repository root with the kit in .gpu/train:
#   ESBUILD_FLAGS='--define:__dirname=import.meta.dirname --define:__filename=import.meta.filename' \
#     bash ../shared/gpu/pack-webgpu-kit.sh -o .gpu/train examples/transformer/compare.ts examples/transformer/train.ts
#   (device tool, carrying .gpu/train) bash examples/transformer/h100.sh
# Results go to $OUT (7 files: the tool returns at most 8).
set -uo pipefail
out=${OUT:-runs/h100}
kit=.gpu/train
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
timeout "${COMPARE_SECONDS:-110}" bash "$kit/run-webgpu.sh" "$kit/compare.mjs" --backend=webgpu --dim=256 --heads=4 \
  --layers=2 --seqs="${SEQS:-1024,2048,4096,8192,16384,32768}" --steps="${STEPS:-3}" --max-step-seconds=15 \
  --out="$out/compare.json" 2>&1 | grep -v 'Hi, looks like\|^=*$\|tfjs-node\|^$' | tee "$out/compare.log"
timeout "${TRAIN_SECONDS:-45}" bash "$kit/run-webgpu.sh" "$kit/train.mjs" --backend=webgpu --seq=4096 --steps=120 \
  --layers=2 --dim=128 --heads=4 --save-every=40 --sample=200 --out="$out/train" 2>&1 \
  | grep -v 'Hi, looks like\|^=*$\|tfjs-node\|^$' | tee "$out/train.log"
rm -f "$out/train/checkpoint/weights.bin"   # keep the returned files few and small
