#!/usr/bin/env bash
# The README's main example on a fresh machine: set up (apt + npm), then train the small
# decoder-only transformer with FlashMultiHeadAttention at sequence length 4096 (short default
# run; WebGPU through Dawn + SwiftShader when an adapter is found, else the CPU backend).
# Extra flags go to the example, e.g. `bash scripts/example.sh --steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-/usr/lib/chromium/vk_swiftshader_icd.json}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
npm run --silent train -- "$@"
