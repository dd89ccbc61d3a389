#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls): set up, typecheck, build,
# compile the CUDA sources where nvcc exists, and run every jest suite with WebGPU required
# (REQUIRE_WEBGPU=1: no adapter is a failure, so WebGPU tests can never be silently skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx tsc -p . --noEmit
npm run build --silent
if [ -f scripts/ci-compile-cuda.sh ]; then bash scripts/ci-compile-cuda.sh; fi
export VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-/usr/lib/chromium/vk_swiftshader_icd.json}
export REQUIRE_WEBGPU=${REQUIRE_WEBGPU:-1}
results=$(mktemp --suffix=.json)
set +e
npx jest --ci --json --outputFile="$results" "$@"
status=$?
set -e
# A plain closing line for CI (jest's own summary is not read); skipped tests fail the run.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);
  if (r.numPendingTests > 0) { console.error("test.sh: skipped tests are not allowed"); process.exit(1); }
' "$results" || status=1
exit $status
