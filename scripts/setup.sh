#!/usr/bin/env bash
# Sets up a fresh Debian machine for tests and examples: apt (SwiftShader's Vulkan driver comes
# with chromium; Dawn needs the system libvulkan1) and npm packages. Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { [ -f /usr/lib/chromium/vk_swiftshader_icd.json ] && ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; }; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium libvulkan1 >/dev/null
  else
    echo "setup: please install the Debian packages 'chromium' and 'libvulkan1' (needs root)" >&2
    exit 1
  fi
fi
# npm packages exactly as package-lock.json says (npm ci fails when package.json and the lock
# disagree, which keeps the lock in sync). Skipped when node_modules was installed from this very
# lock (a stamp holds its hash): npm ci starts by deleting node_modules, so it is not quick.
stamp=node_modules/.tfjs-flash-attention-setup
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
fi
