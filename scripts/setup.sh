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
# npm ci fails on this registry (jest's optional non-linux binaries 404); npm install with the
# lockfile installs the same versions and leaves the lockfile unchanged.
npm install --no-audit --no-fund --loglevel=error
